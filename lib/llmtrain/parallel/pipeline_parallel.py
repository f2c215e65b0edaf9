"""Pipeline parallelism (流水线并行) by hand: consecutive layers on each rank, micro-batches
flowing through them, on counted point-to-point messages.

"将连续的层分配到不同卡，依次经过每卡串行计算，需要与梯度累积联合使用" (the slides). The model is
cut into p·v stages of consecutive decoder layers (``stage_layers``: the layers split as
evenly as ``cost.layout.shard_range`` splits rows, earlier stages taking one more; the
embedding goes with the first stage, the final RMSNorm, lm_head and loss with the last). Rank
r holds stages r, r + p, … (v > 1 only when interleaved). The global batch is cut into m
micro-batches (the gradient accumulation of notebook 02), and a schedule of ``pp_schedule``
says in which order
each rank runs their forwards and backwards; between stages only one activation (b·s·h
elements) goes forward and one gradient of the same size back, per micro-batch.

    pipe = pipeline(model, group, schedule="1f1b", microbatches=8)
    loss = pipe.step(input_ids, labels)   # the batch's mean loss on the last stage, else None
    opt = torch.optim.SGD(pipe.parameters(), lr=0.1); opt.step()
    pipe.events                           # what this rank ran, when (``pp_schedule.Event``)

Messages go through ``comm`` (counted, tags "pp-forward", "pp-backward", "pp-tied"): each
operation posts its receive together with the previous operation's sends in one
``batch_isend_irecv``, waits only for what it receives, and leaves the sends in flight (so a
rank never waits for a neighbour to take a message: the simulator's semantics). A model with
tied embeddings keeps a copy of the matrix on the last stage; after the backwards the first and
the last stage exchange their gradient contributions to it (Megatron-LM's embedding group).
The loss of micro-batch i is its summed token loss over the whole batch's token count, so the
micro-batch losses add up to the one-process mean exactly, whatever the split.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import check
from ..model.llama import Llama, causal_lm_loss
from . import comm
from .launch import run_moved_command, require_process_group, same_on_every_rank
from ..cost.layout import cut_segments, stage_layers  # re-exported: the layers of each stage
from ..cost.pp_schedule import SCHEDULES, Event, Op, check_schedule, schedule, stage_of

__all__ = ["SCHEDULES", "Stage", "Pipeline", "pipeline", "stage_layers", "split", "lm_loss",
           "cut_segments", "check_batch", "FORWARD", "BACKWARD", "TIED"]

FORWARD, BACKWARD, TIED, INIT = "pp-forward", "pp-backward", "pp-tied", "pp-init"


class Stage(nn.Module):
    """Consecutive decoder layers of a ``Llama`` (copies of its modules, same weights): the
    token embedding before them on the first stage, the final norm and lm_head after them on
    the last. ``forward`` maps token ids (first stage) or hidden states (B, T, H) to hidden
    states, or to logits on the last stage. Parameter names are the full model's
    (``full_name``). Recomputation set by ``llmtrain.recompute.apply`` carries over: selective
    inside each layer, and each full-recompute segment cut at the stage's edges."""

    def __init__(self, model: Llama, layers: range, first: bool, last: bool):
        super().__init__()
        body = model.model
        self.first, self.last, self.layer_ids = first, last, layers
        self.embed_tokens = copy.deepcopy(body.embed_tokens) if first else None
        self.layers = nn.ModuleDict({str(i): copy.deepcopy(body.layers[i]) for i in layers})
        self.rotary_emb = copy.deepcopy(body.rotary_emb)
        self.norm = copy.deepcopy(body.norm) if last else None
        self.lm_head = copy.deepcopy(model.lm_head) if last else None  # tied: a copy of the matrix
        self.tied, self.hidden_size = model.shape.tie_embeddings, model.shape.hidden_size
        self.recompute_segments = cut_segments(body.recompute_segments, layers)
        if first and last and self.tied:  # one stage holds both ends: keep them one tensor
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            x = self.embed_tokens(x)
        cos, sin = self.rotary_emb(x.shape[1], x.dtype)
        segments = {g.start: g for g in self.recompute_segments}
        i = self.layer_ids.start
        while i < self.layer_ids.stop:
            if i in segments:  # keep only the segment's input; run it again in backward
                x = checkpoint(self._run, x, cos, sin, segments[i], use_reentrant=False)
                i = segments[i].stop
            else:
                x = self.layers[str(i)](x, cos, sin)
                i += 1
        return self.lm_head(self.norm(x)) if self.last else x

    def recompute(self, strategy: str = "none", k: int | None = None,
                  num_layers: int | None = None) -> "Stage":
        """Set this stage to recompute as ``llmtrain.recompute.apply`` sets the whole model
        (of ``num_layers`` layers; default: this stage's last layer + 1): the whole model's
        segments cut at the stage's edges; "selective" recomputes each attention core."""
        from ..model import recompute as _recompute

        total = self.layer_ids.stop if num_layers is None else num_layers
        self.recompute_segments = cut_segments(_recompute.segments(total, strategy, k),
                                               self.layer_ids)
        for layer in self.layers.values():
            layer.self_attn.recompute_core = strategy == "selective"
        return self

    def _run(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             ids: range) -> torch.Tensor:
        for i in ids:
            x = self.layers[str(i)](x, cos, sin)
        return x

    @staticmethod
    def full_name(name: str) -> str:
        """The single model's name of a stage parameter: "layers.3.mlp…" is
        "model.layers.3.mlp…"."""
        return name if name.startswith("lm_head.") else "model." + name


def check_batch(input_ids: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The labels of a batch (B, T) of token ids (None: the ids themselves), both checked."""
    labels = input_ids if labels is None else labels
    check.tensor("input_ids", input_ids, dim=2)
    check.tensor("labels", labels, dim=2)
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(labels.shape)}")
    return labels


def split(model: Llama, stages: int) -> list[Stage]:
    """All ``stages`` stages of ``model`` (one process; ``pipeline`` keeps only its own)."""
    check.module("model", model, Llama, "a llmtrain.model.llama.Llama")
    ranges = stage_layers(model.shape.num_layers, stages)
    return [Stage(model, r, i == 0, i == stages - 1) for i, r in enumerate(ranges)]


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, tokens: int | torch.Tensor) -> torch.Tensor:
    """Σ next-token cross entropy of this micro-batch / ``tokens`` (the labelled tokens of the
    whole batch): the micro-batches' losses add up to ``Llama``'s mean loss of the batch."""
    return causal_lm_loss(logits, labels, reduction="sum") / tokens


def _own_grad(w: nn.Parameter) -> torch.Tensor | None:
    return w.grad


class Pipeline:
    """This rank's stages of a pipeline and the schedule that runs them (made by ``pipeline``)."""

    def __init__(self, stages: list[Stage], group, schedule_name: str, microbatches: int,
                 virtual: int = 1, fixed_costs: tuple[float, float] | None = None, *,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] = lm_loss,
                 tied_grad: Callable[[nn.Parameter], torch.Tensor | None] | None = None,
                 on_start: Callable[[], None] | None = None,
                 on_op: Callable[[Event], None] | None = None):
        """``loss_fn(logits, labels, tokens)``: the last stage's loss of one micro-batch, Σ loss
        / tokens (tensor parallelism passes the vocab-parallel cross entropy); ``tied_grad(w)``:
        where the tied matrix's gradient lives (default ``w.grad``; ZeRO 2-3 keep only a shard,
        ``ZeroOptimizer.grad_shard``); ``on_start()`` runs before a step's first operation,
        ``on_op(event)`` after each (to sample memory, say)."""
        check.function("loss_fn", loss_fn)
        for name, fn in (("tied_grad", tied_grad), ("on_start", on_start), ("on_op", on_op)):
            check.optional(check.function, name, fn)
        self.stages, self.group, self.schedule = stages, group, schedule_name
        self.microbatches, self.virtual, self.fixed_costs = microbatches, virtual, fixed_costs
        self.p, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.num_stages = self.p * virtual
        ranks = dist.get_process_group_ranks(group) if group is not None else list(range(self.p))
        self.prev, self.next = ranks[(self.rank - 1) % self.p], ranks[(self.rank + 1) % self.p]
        self.first_rank, self.last_rank = ranks[0], ranks[-1]
        self.ops: list[Op] = schedule(schedule_name, self.p, microbatches, self.rank, virtual)
        self.events: list[Event] = []
        self.peak_in_flight = 0  # most (micro-batch, stage) activations held during the last step
        self.on_start, self.on_op, self.loss_fn = on_start, on_op, loss_fn
        self.tied_grad = _own_grad if tied_grad is None else tied_grad
        self.dtype = next(stages[0].parameters()).dtype

    def parameters(self):
        """This rank's parameters (every stage it holds), for an optimizer."""
        for s in self.stages:
            yield from s.parameters()

    def named_parameters(self):
        """(full model name, parameter) of this rank's stages; a tied lm_head copy on the last
        stage is named "lm_head.weight"."""
        for s in self.stages:
            for name, p in s.named_parameters():
                yield Stage.full_name(name), p

    # --- one step --------------------------------------------------------------------------

    def step(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, *,
             tokens: float | None = None) -> torch.Tensor | None:
        """Forward and backward of the whole batch, micro-batch by micro-batch, in the order of
        the schedule; gradients accumulate in the parameters' ``.grad``. Every rank passes the
        same ``input_ids`` and ``labels`` (B, T; default: the ids, next-token prediction as
        ``Llama(ids, labels=ids)``; -100 marks a token without loss); returns the batch's mean
        loss on the rank holding the last stage, None on the others. ``tokens``: what the
        summed token loss is divided by (default: the batch's labelled tokens; data
        parallelism passes the global batch's count over dp)."""
        labels = check_batch(input_ids, labels)
        m = self.microbatches
        if input_ids.shape[0] < m:
            raise ValueError(f"microbatches must be at most the batch size {input_ids.shape[0]} "
                             f"(each micro-batch holds one sequence or more), got microbatches={m}")
        ids, labs = torch.tensor_split(input_ids, m), torch.tensor_split(labels, m)
        if tokens is None:
            tokens = int((labels[:, 1:] != -100).sum())
        H = self.stages[0].hidden_size
        tied = self.tied_snapshot()
        inputs, outputs, losses = {}, {}, []
        sends: list[tuple[comm.P2P, tuple]] = []  # (message, key): posted with the next receive
        sent: dict = {}  # (chunk, mb) -> the work of its activation's send
        grads_sent: list = []  # the works of the gradients sent back
        self.events, self.peak_in_flight = [], 0
        if self.on_start is not None:
            self.on_start()
        for op in self.ops:
            stage = stage_of(self.rank, op.chunk, self.p)
            first, last = stage == 0, stage == self.num_stages - 1
            key = (op.chunk, op.mb)
            recv = None
            if op.kind == "F" and not first:
                recv = torch.empty(ids[op.mb].shape + (H,), dtype=self.dtype)
                src, tag = self.prev, FORWARD
            elif op.kind == "B" and not last:
                recv = torch.empty_like(outputs[key])
                src, tag = self.next, BACKWARD
            recvs = [comm.P2P("recv", recv, src, self.group, tag)] if recv is not None else []
            works = comm.batch_isend_irecv([o for o, _ in sends] + recvs)
            self._file(sends, works, sent, grads_sent)
            for w in works[len(sends):]:
                w.wait()
            sends = []
            start = time.perf_counter()
            module = self.stages[op.chunk]
            if op.kind == "F":
                x = ids[op.mb] if first else recv.requires_grad_()
                y = module(x)
                if last:
                    y = self.loss_fn(y, labs[op.mb], tokens)
                    losses.append(y.detach())
                else:
                    sends.append((comm.P2P("send", y.detach(), self.next, self.group,
                                           FORWARD), key))
                inputs[key], outputs[key] = x, y
                self.peak_in_flight = max(self.peak_in_flight, len(inputs))
            else:
                x, y = inputs.pop(key), outputs.pop(key)
                if key in sent:  # its gradient came back, so the activation has arrived
                    sent.pop(key).wait()
                torch.autograd.backward(y, None if last else recv)
                if not first:
                    sends.append((comm.P2P("send", x.grad, self.prev, self.group, BACKWARD), key))
                del x, y
            self._pad(op.kind, start)
            event = Event(self.rank, stage, op.kind, op.mb, start, time.perf_counter())
            self.events.append(event)
            if self.on_op is not None:
                self.on_op(event)
        self._file(sends, comm.batch_isend_irecv([o for o, _ in sends]), sent, grads_sent)
        for w in list(sent.values()) + grads_sent:
            w.wait()
        self.sync_tied(tied)
        return torch.stack(losses).sum() if losses else None

    @staticmethod
    def _file(sends: list, works: list, sent: dict, grads_sent: list) -> None:
        """Keep the works of posted sends: an activation's until its gradient returns (then it
        has surely arrived), a gradient's until the step ends (gloo calls a send done only on
        ``wait()``, and waiting earlier could stall this rank on a busy neighbour; each holds
        one b·s·h buffer)."""
        for (o, key), w in zip(sends, works):
            if o.tag == FORWARD:
                sent[key] = w
            else:
                grads_sent.append(w)

    def _pad(self, kind: str, start: float) -> None:
        """With ``fixed_costs`` = (t_f, t_b): make this operation last exactly t/v seconds."""
        if self.fixed_costs is not None:
            t = self.fixed_costs[0 if kind == "F" else 1] / self.virtual
            left = start + t - time.perf_counter()
            if left > 0:
                time.sleep(left)

    # --- tied embeddings: the first and the last stage add their gradients ------------------

    def _tied_param(self) -> nn.Parameter | None:
        if not self.stages[0].tied or self.p == 1:
            return None
        if self.rank == 0:
            return self.stages[0].embed_tokens.weight
        if self.rank == self.p - 1:
            return self.stages[-1].lm_head.weight
        return None

    def tied_snapshot(self):
        """Before a step: the tied matrix's gradient so far (the first and the last stage only)."""
        w = self._tied_param()
        if w is None:
            return None
        g = self.tied_grad(w)
        return w, None if g is None else g.clone()

    def sync_tied(self, tied) -> None:
        """After a step: send this step's gradient of the tied matrix (since ``tied_snapshot``)
        to the other end of the pipeline and add theirs, so both copies get the same update."""
        if tied is None:
            return
        w, before = tied
        grad = self.tied_grad(w)
        mine = grad if before is None else grad - before
        theirs = torch.empty_like(mine)
        peer = self.last_rank if self.rank == 0 else self.first_rank
        messages = [comm.P2P("send", mine.contiguous(), peer, self.group, TIED),
                    comm.P2P("recv", theirs, peer, self.group, TIED)]
        for work in comm.batch_isend_irecv(messages):
            work.wait()
        grad += theirs

    def connect(self) -> None:
        """Exchange one number with each neighbour (tag "pp-init"), so that no timed message is
        a pair's first (measured with torch 2.13's gloo on one machine: the first message after
        init takes 0.5 ms, the next ones 0.1 ms; other backends and networks may connect lazily)."""
        if self.p == 1:
            return
        wrap = self.schedule == "interleaved"  # the last rank also sends to the first
        peers = set()
        if self.rank > 0 or wrap:
            peers.add(self.prev)
        if self.rank < self.p - 1 or wrap:
            peers.add(self.next)
        if self.stages[0].tied and self.rank in (0, self.p - 1):
            peers.add(self.last_rank if self.rank == 0 else self.first_rank)
        ops = []
        for q in sorted(peers):
            ops += [comm.P2P("send", torch.zeros(1), q, self.group, INIT),
                    comm.P2P("recv", torch.zeros(1), q, self.group, INIT)]
        for w in comm.batch_isend_irecv(ops):
            w.wait()


def pipeline(model: Llama, group=None, schedule: str = "1f1b", microbatches: int = 4,
             virtual: int = 1, *, fixed_costs: tuple[float, float] | None = None,
             warm: bool = True, on_start: Callable[[], None] | None = None,
             on_op: Callable[[Event], None] | None = None) -> Pipeline:
    """This rank's part of ``model`` as a pipeline over ``group`` (default: the world).

    Call it on every rank of ``group`` with the same full model. ``schedule`` is "gpipe",
    "1f1b" or "interleaved" (``virtual`` ≥ 2 stages per rank, microbatches a multiple of p).
    ``fixed_costs`` = (t_f, t_b) seconds pads every forward / backward of a rank's layers to
    that time (a cost model for measuring schedules; the compute must fit inside). ``warm``
    exchanges one message with each neighbour first (``Pipeline.connect``). ``on_start`` and
    ``on_op``: ``Pipeline``'s hooks, called before each step and after each operation."""
    check.module("model", model, Llama, "a llmtrain.model.llama.Llama")
    require_process_group("pipeline")
    p, rank = dist.get_world_size(group), dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"group must contain this rank ({dist.get_rank()}): call pipeline on the "
                         f"ranks of the group only")
    same_on_every_rank(group, "the pipeline", schedule=schedule, microbatches=microbatches,
                       virtual=virtual, shape=model.shape)
    check_schedule(schedule, p, microbatches, virtual)
    if microbatches < p:
        raise ValueError(f"microbatches must be at least the {p} pipeline stages (with fewer, "
                         f"some stages never overlap: torch's Schedule1F1B refuses too), got "
                         f"microbatches={microbatches}")
    if schedule == "interleaved" and p < 2:
        raise ValueError("schedule='interleaved' needs a group of at least 2 ranks, got 1")
    if fixed_costs is not None:
        if not isinstance(fixed_costs, (tuple, list)) or len(fixed_costs) != 2:
            check.fail("fixed_costs", "a pair (t_f, t_b) of seconds", fixed_costs)
        for value in fixed_costs:
            check.number("fixed_costs", value, 0)
    check.boolean("warm", warm)
    stages = p * virtual
    ranges = stage_layers(model.shape.num_layers, stages)
    mine = [Stage(model, ranges[s], s == 0, s == stages - 1)
            for s in (stage_of(rank, c, p) for c in range(virtual))]
    pipe = Pipeline(mine, group, schedule, microbatches, virtual,
                    None if fixed_costs is None else tuple(fixed_costs), on_start=on_start,
                    on_op=on_op)
    if warm:
        pipe.connect()
    return pipe


if __name__ == "__main__":  # the old command (one release): runs llmtrain.parallel.demos.<this>
    run_moved_command(__spec__.name)
