"""llmtrain.parallel: the launcher's guarantees, DP/ZeRO equal to one process and to DDP/FSDP2,
bytes held and bytes communicated equal to the formulas. Real gloo ranks, 2 by default; the
tests marked ``slow`` use 4 (run them alone with ``pytest -m slow``)."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from llmtrain.cost import memory
from llmtrain.parallel import LaunchTimeout, RankError, comm, launch, zero
from llmtrain.parallel import data_parallel
from llmtrain.cost.layout import ParallelDims
from llmtrain.parallel.demos import data_parallel_zero as demos
from llmtrain.parallel.demos import harness

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- what the ranks run (importable)

def whoami(tag):
    return dist.get_rank(), dist.get_world_size(), tag, os.environ["OMP_NUM_THREADS"], \
        torch.get_num_threads()


def say_hello():
    print(f"hello from {dist.get_rank()}")
    print("x" * 100_000)  # more than one read of the pipe
    print("last words", end="")  # no newline: still shown
    return None


def raise_on(bad_rank):
    if dist.get_rank() == bad_rank:
        raise ValueError(f"boom on rank {bad_rank}")
    dist.barrier()  # the others wait here for a rank that will never come


def exit_on(bad_rank, code):
    if dist.get_rank() == bad_rank:
        os._exit(code)
    dist.barrier()


def omp_env():
    return os.environ.get("OMP_WAIT_POLICY"), os.environ.get("OMP_NUM_THREADS")


def hang_on(bad_rank):
    if dist.get_rank() == bad_rank:
        time.sleep(3600)
    dist.barrier()


def pid_then_hang(folder):
    Path(folder, f"rank{dist.get_rank()}.pid").write_text(str(os.getpid()))
    time.sleep(3600)


def comm_demo():
    t = torch.arange(6.0) * (dist.get_rank() + 1)
    with comm.counting() as log:
        comm.all_reduce(t, "sum", tag="a")
        out = torch.empty(3)
        comm.reduce_scatter(out, torch.arange(6.0), "avg", tag="b")
        full = torch.empty(6)
        comm.all_gather(full, out, tag="c")
        b = torch.full((5,), float(dist.get_rank()))
        comm.broadcast(b, src=1, tag="d")
    return t, out, full, b, log


# ---------------------------------------------------------------- helpers

def _children() -> set[int]:
    """Living processes whose parent is this test process."""
    kids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            kids.add(int(pid))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def no_orphans():
    before = _children()
    yield
    assert _children() <= before, "a launch left processes behind"


# ---------------------------------------------------------------- launch

def test_launch_returns_results_by_rank(no_orphans):
    assert launch(whoami, 3, "x") == [(r, 3, "x", "1", 1) for r in range(3)]


def test_launch_relays_what_ranks_print(capsys, no_orphans):
    launch(say_hello, 2)
    out = capsys.readouterr().out
    assert "[rank 0] hello from 0" in out and "[rank 1] hello from 1" in out
    assert out.count("[rank 1] " + "x" * 100_000 + "\n") == 1
    assert "[rank 0] last words\n" in out and "[rank 1] last words\n" in out


@pytest.mark.parametrize("kwargs, field", [
    ({"target": lambda: 1, "world_size": 2}, "importable"),
    ({"target": whoami, "world_size": 0}, "world_size"),
    ({"target": whoami, "world_size": 2.0}, "world_size"),
    ({"target": whoami, "world_size": 2, "timeout": 0}, "timeout"),
    ({"target": whoami, "world_size": 2, "backend": "mpi"}, "backend"),
    ({"target": 3, "world_size": 2}, "target"),
])
def test_launch_rejects_bad_arguments(kwargs, field):
    target, n = kwargs.pop("target"), kwargs.pop("world_size")
    with pytest.raises(ValueError, match=field):
        launch(target, n, **kwargs)


def test_nccl_without_a_gpu_per_rank_is_a_clear_value_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"backend must be 'gloo' .* 2 ranks, 0 GPUs here\), got 'nccl'"):
        launch(whoami, 2, "x", backend="nccl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"2 ranks, 1 GPUs here"):
        launch(whoami, 2, "x", backend="nccl")


def test_ranks_wait_passively(no_orphans):
    env = launch(omp_env, 2)
    assert env == [("PASSIVE", "1")] * 2


def test_a_raising_rank_surfaces_with_its_traceback(no_orphans):
    t0 = time.monotonic()
    with pytest.raises(RankError) as e:
        launch(raise_on, 2, 1, timeout=600)
    assert e.value.rank == 1
    assert "ValueError: boom on rank 1" in str(e.value) and "raise_on" in e.value.remote_traceback
    # at once, not at the timeout (the bound allows a heavily loaded machine: rank start-up)
    assert time.monotonic() - t0 < 300


def test_a_rank_that_dies_silently_is_reported(no_orphans):
    with pytest.raises(RankError, match="exited with code 3") as e:
        launch(exit_on, 2, 0, 3, timeout=600)
    assert e.value.rank == 0


def test_a_hung_rank_ends_in_a_timeout(no_orphans):
    t0 = time.monotonic()
    with pytest.raises(LaunchTimeout, match=r"ranks \[0, 1\] did not finish"):
        launch(hang_on, 2, 1, timeout=6)
    assert time.monotonic() - t0 < 6 + 60  # the timeout, then stopping the ranks (even under load)


def test_concurrent_launches_do_not_collide(no_orphans):
    results = {}

    def run(tag):
        results[tag] = launch(whoami, 2, tag, timeout=600)

    threads = [threading.Thread(target=run, args=(tag,)) for tag in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {tag: [(r, 2, tag, "1", 1) for r in range(2)] for tag in "abc"}


def test_ranks_exit_when_the_launcher_is_killed(tmp_path):
    code = ("import sys; sys.path.insert(0, %r); import test_parallel; from llmtrain.parallel import launch; "
            "launch(test_parallel.pid_then_hang, 2, %r, timeout=600)" % (str(HERE), str(tmp_path)))
    launcher = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("*.pid"))) < 2:
            assert time.monotonic() < deadline, "ranks did not start"
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
        assert all(_alive(pid) for pid in pids)
        launcher.send_signal(signal.SIGKILL)  # no finally, no cleanup: the ranks must notice
        launcher.wait()
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in pids):
            assert time.monotonic() < deadline, f"ranks {pids} outlived their launcher"
            time.sleep(0.2)
    finally:
        launcher.kill()


# ---------------------------------------------------------------- comm

def test_ring_bytes():
    M = 1200
    assert comm.ring_bytes("all_reduce", M, 4) == (Fraction(1800), Fraction(1800))
    assert comm.ring_bytes("reduce_scatter", M, 4) == (900, 900)
    assert comm.ring_bytes("all_gather", M, 3) == (800, 800)
    assert comm.ring_bytes("all_reduce", M, 1) == (0, 0)
    # broadcast chain from rank 1 on 3 ranks: 1 → 2 → 0
    assert [comm.ring_bytes("broadcast", M, 3, r, src=1) for r in range(3)] == \
        [(0, M), (M, 0), (M, M)]
    with pytest.raises(ValueError, match="op"):
        comm.ring_bytes("scatter", M, 2)


@pytest.mark.parametrize("args, name", [
    (("all_reduce", 1200, 0), "world_size"), (("all_reduce", 1200, -2), "world_size"),
    (("all_reduce", -1, 2), "buffer_bytes"), (("all_gather", 1.5, 2), "buffer_bytes"),
    (("broadcast", 1200, 3, 3), "rank"), (("broadcast", 1200, 3, 0, -1), "src")])
def test_ring_bytes_bad_input_names_the_argument(args, name):
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        comm.ring_bytes(*args)


def test_counted_collectives_compute_and_count(no_orphans):
    res = launch(comm_demo, 2)
    for r, (t, out, full, b, log) in enumerate(res):
        assert torch.equal(t, torch.arange(6.0) * 3)                 # 1·x + 2·x
        assert torch.equal(out, torch.arange(6.0)[3 * r:3 * r + 3])  # average of equals
        assert torch.equal(full, torch.arange(6.0))
        assert torch.equal(b, torch.ones(5))                          # rank 1's
        assert [(x.op, x.tag, x.buffer_bytes) for x in log.records] == [
            ("all_reduce", "a", 24), ("reduce_scatter", "b", 24), ("all_gather", "c", 24),
            ("broadcast", "d", 20)]
        assert log.sent_bytes("all_reduce") == 24 and log.sent_bytes(tag="b") == 12
        assert log.calls() == 4 and log.buffer_bytes() == 92


# ---------------------------------------------------------------- equal to one process

ZERO = ["zero0", "zero1", "zero2", "zero3"]


@pytest.fixture(scope="module")
def sgd64():
    """3 SGD steps of the tiny LLaMA in float64 on 2 ranks, every strategy, and one process."""
    cfg = dict(model="tiny", dtype="float64", optimizer="sgd", lr=0.5, steps=3, units="layers")
    return launch(demos.train_all, 2, ["dp", *ZERO], cfg), demos.train("single", **cfg)


@pytest.fixture(scope="module")
def adamw32():
    """4 AdamW steps of the odd-sized MLP in float32 on 2 ranks, with DDP and FSDP2."""
    cfg = dict(model="mlp", optimizer="adamw", lr=1e-2, steps=4, units="layers")
    return launch(demos.train_all, 2, ["dp", "ddp", *ZERO, "fsdp2"], cfg), demos.train("single", **cfg)


@pytest.mark.parametrize("strategy", ["dp", *ZERO])
def test_sgd_equals_one_process_up_to_float_reassociation(sgd64, strategy):
    ranks, single = sgd64
    for res in ranks:  # every rank holds the same weights, equal to the single process's
        assert res[strategy]["losses"] == pytest.approx(single["losses"], rel=1e-13, abs=0)
        assert harness.max_weight_diff(res[strategy]["weights"], single["weights"]) < 1e-13
    assert harness.max_weight_diff(ranks[0][strategy]["weights"], ranks[1][strategy]["weights"]) == 0


@pytest.mark.parametrize("strategy", ["dp", "ddp", *ZERO, "fsdp2"])
def test_adamw_close_to_one_process(adamw32, strategy):
    # Adam divides by √v: float noise on tiny gradients is amplified (facts.md §8). Measured
    # here: largest weight difference 1.2e-6 after 4 steps (losses: 9e-8 relative); 1e-5 is
    # 8× that and 1e-3 of one step's size (lr).
    ranks, single = adamw32
    for res in ranks:
        assert res[strategy]["losses"] == pytest.approx(single["losses"], rel=1e-6)
        assert harness.max_weight_diff(res[strategy]["weights"], single["weights"]) < 1e-5


# On 2 ranks averaging is exact whichever way it is done ((a + b)/2 = a/2 + b/2 in binary
# floating point), so the hand-written versions must equal PyTorch's engines bit for bit.

def test_hand_written_dp_equals_ddp(adamw32):
    ranks, _ = adamw32
    for res in ranks:
        assert res["dp"]["losses"] == res["ddp"]["losses"]
        assert harness.max_weight_diff(res["dp"]["weights"], res["ddp"]["weights"]) == 0


def test_hand_written_zero3_equals_fsdp2(adamw32):
    ranks, _ = adamw32
    for res in ranks:
        assert res["zero3"]["losses"] == res["fsdp2"]["losses"]
        assert harness.max_weight_diff(res["zero3"]["weights"], res["fsdp2"]["weights"]) == 0
        # and holds the same bytes: FSDP2 shards by rows, we by flat elements; with no
        # padding (every tensor of the MLP splits evenly in 2) the two are the same size
        assert res["zero3"]["memory"] == res["fsdp2"]["memory"]


# ---------------------------------------------------------------- bytes held

def _check_memory(reports, numels, n):
    psi = sum(numels)
    for rep in reports:
        for stage, got in rep.items():
            exp = zero.expected_bytes(numels, n, stage)  # mixed bf16 AdamW: 2 + 2 + 4 + 8
            assert {k: got[k] for k in exp} == exp, (stage, got, exp)
            assert got["other"] == 4 * len(numels)  # AdamW's fp32 step counter per shard
            paper = memory.model_state_bytes(psi, precision="mixed", zero=stage,
                                             dims=ParallelDims(dp=n))
            held = sum(exp.values())
            padding = sum(n * math.ceil(x / n) - x for x in numels) if stage else 0
            assert 0 <= held - sum(paper.values()) <= 16 * padding
            formula = {0: 16 * psi, 1: 4 * psi + Fraction(12 * psi, n),
                       2: 2 * psi + Fraction(14 * psi, n), 3: Fraction(16 * psi, n)}[stage]
            if padding == 0:
                assert held == formula


@pytest.mark.parametrize("n", [1, 2, 3])
def test_bytes_held_equal_the_zero_formulas(n, no_orphans):
    numels = [p.numel() for p in harness.make_model("mlp").parameters()]
    _check_memory(launch(demos.memory_by_stage, n, "mlp", "bfloat16"), numels, n)


def test_phases_after_the_update_hold_the_formulas_bytes_in_every_stage(no_orphans):
    """notebook 05's one launch for every stage (demos.phases_all): after the update each rank holds
    exactly zero.expected_bytes, kind by kind, the same on both ranks."""
    out = launch(demos.phases_all, 2, (0, 1, 2, 3))
    numels = [p.numel() for p in harness.make_model("tiny", "bfloat16").parameters()]
    for z in range(4):
        held = {k: v for k, v in out[0][z]["step"].items() if k not in ("other", "total")}
        assert held == zero.expected_bytes(numels, 2, z), z
        assert out[1][z] == out[0][z]
    assert out[0][3]["forward"]["weights"] > out[0][3]["step"]["weights"]  # a unit gathered whole


def test_fp32_bytes_held(adamw32):
    ranks, single = adamw32
    numels = single["numels"]
    for stage in range(4):
        exp = zero.expected_bytes(numels, 2, stage, weight_bytes=4, grad_bytes=4, master_bytes=0)
        got = ranks[0][f"zero{stage}"]["memory"]
        assert {k: got[k] for k in exp} == exp
    psi = sum(numels)
    for held in (ranks[0]["dp"]["memory"], single["memory"]):  # fp32 AdamW: 4 + 4 + 8 bytes
        assert held["weights"] + held["gradients"] + held["optimizer"] == 16 * psi
        assert held["master"] == 0 and held["other"] == 4 * len(numels)


# ---------------------------------------------------------------- bytes communicated

def test_communication_equals_the_formulas(adamw32):
    ranks, single = adamw32
    n, numels = 2, single["numels"]
    psi = 4 * sum(numels)                                   # fp32 bytes
    padded = 4 * sum(n * math.ceil(x / n) for x in numels)  # what ZeRO's collectives carry
    ring = Fraction(n - 1, n)
    for res in ranks:
        logs = {s: comm.Log(res[s]["comm"]) for s in ["dp", *ZERO]}
        assert logs["dp"].sent_bytes() == 2 * ring * psi
        assert logs["dp"].calls() == logs["dp"].calls("all_reduce")
        assert logs["zero0"].sent_bytes() == 2 * ring * psi
        for s in ("zero1", "zero2"):  # reduce-scatter + all-gather = one all-reduce
            assert logs[s].sent_bytes("reduce_scatter") == ring * padded
            assert logs[s].sent_bytes("all_gather") == ring * padded
        z3 = logs["zero3"]
        assert z3.sent_bytes("all_gather", "forward") == ring * padded
        assert z3.sent_bytes("all_gather", "backward") == ring * padded
        assert z3.sent_bytes("reduce_scatter", "grads") == ring * padded
        assert z3.sent_bytes() == 3 * ring * padded == Fraction(3, 2) * logs["zero1"].sent_bytes()
        assert res["ddp"]["comm"] == [] and res["fsdp2"]["comm"] == []  # not counted: not ours


# ---------------------------------------------------------------- four ranks (one launch)

FOUR = dict(model="mlp", dtype="float64", optimizer="sgd", lr=0.5, steps=2, batch=8)
DP_TP = ["dp", "zero1", "zero3", "ddp", "fsdp2"]


def four_rank_runs():
    """Every strategy over the world; DP, ZeRO-1, ZeRO-3 over the dp groups of dp2×tp2; bytes
    held per stage."""
    return (demos.train_all(["dp", *ZERO], FOUR),
            demos.train_all(DP_TP, {**FOUR, "dims": ParallelDims(dp=2, tp=2)}),
            demos.memory_by_stage("mlp", "bfloat16"))


@pytest.fixture(scope="module")
def four_ranks():
    return launch(four_rank_runs, 4, timeout=600), demos.train("single", **FOUR)


@pytest.mark.slow
def test_four_ranks(four_ranks):
    ranks, single = four_ranks
    for res, _, _ in ranks:
        for s in ["dp", *ZERO]:
            assert res[s]["losses"] == pytest.approx(single["losses"], rel=1e-13, abs=0)
            assert harness.max_weight_diff(res[s]["weights"], single["weights"]) < 1e-13
    numels = [p.numel() for p in harness.make_model("mlp").parameters()]
    _check_memory([mem for _, _, mem in ranks], numels, 4)


@pytest.mark.slow
def test_dp_and_zero_over_the_dp_group_of_dp2_tp2(four_ranks):
    # 4 ranks as dp=2 × tp=2: the two ranks of a tp group hold the same replica and take the
    # same half of the batch; gradients and shards go over the dp group only ([0, 2], [1, 3]),
    # each replica starting from its group's first rank (global rank 0 or 1)
    ranks, single = four_ranks
    psi = 8 * sum(single["numels"])  # float64 bytes
    padded = 8 * sum(2 * math.ceil(x / 2) for x in single["numels"])
    for _, res, _ in ranks:
        for s in DP_TP:
            assert res[s]["losses"] == pytest.approx(single["losses"], rel=1e-13, abs=0)
            assert harness.max_weight_diff(res[s]["weights"], single["weights"]) < 1e-13
        for s in DP_TP[:3]:  # ours: counted (DDP's and FSDP2's collectives are not)
            records = res[s]["comm"]
            assert records and {(r.axis, r.world_size) for r in records} == {("dp", 2)}
        # PyTorch's engines on the same dp group (DDP's process_group, FSDP2's mesh["dp"]):
        # on 2 ranks averaging is exact, so bit for bit the same as ours
        assert harness.max_weight_diff(res["dp"]["weights"], res["ddp"]["weights"]) == 0
        assert harness.max_weight_diff(res["zero3"]["weights"], res["fsdp2"]["weights"]) == 0
        # bytes of a 2-rank ring, not a 4-rank one: the group is the dp pair
        assert comm.Log(res["dp"]["comm"]).sent_bytes() == psi
        assert comm.Log(res["zero1"]["comm"]).sent_bytes() == padded
        assert comm.Log(res["zero3"]["comm"]).sent_bytes() == Fraction(3, 2) * padded
        assert res["zero3"]["memory"]["weights"] == padded // 2  # one of 2 shards
    for s in DP_TP:  # tp peers: same replica, bit for bit
        assert harness.max_weight_diff(ranks[0][1][s]["weights"], ranks[1][1][s]["weights"]) == 0


# ---------------------------------------------------------------- bad input

def test_wrap_outside_a_process_group():
    with pytest.raises(RuntimeError, match="inside a rank"):
        data_parallel.wrap(torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="inside a rank"):
        zero.wrap(torch.nn.Linear(2, 2), 1)


def bad_wraps():
    out = []
    for kwargs in ({"stage": 4}, {"stage": True}, {"stage": 1, "optimizer_cls": dict},
                   {"stage": 2, "units": []}):
        try:
            zero.wrap(torch.nn.Linear(2, 2), **kwargs)
        except ValueError as e:
            out.append(str(e))
    try:
        data_parallel.wrap(torch.nn.Linear(2, 2), bucket_bytes=-1)
    except ValueError as e:
        out.append(str(e))
    return out


def test_wrap_rejects_bad_arguments(no_orphans):
    msgs = launch(bad_wraps, 1)[0]
    assert len(msgs) == 5
    for msg, field in zip(msgs, ["stage", "stage", "optimizer_cls", "units", "bucket_bytes"]):
        assert field in msg


def test_expected_bytes_rejects_bad_arguments():
    with pytest.raises(ValueError, match="stage"):
        zero.expected_bytes([4], 2, 5)
    with pytest.raises(ValueError, match="world_size"):
        zero.expected_bytes([4], 0, 1)


def test_demo_rejects_bad_arguments():
    with pytest.raises(ValueError, match="strategy"):
        demos.train("tp")
    with pytest.raises(ValueError, match="model"):
        harness.make_model("gpt")
    with pytest.raises(ValueError, match="dtype must be one of"):
        harness.make_model("tiny", dtype="fp8")


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("module, args", [("llmtrain.parallel.demos.data_parallel", []),
                                          ("llmtrain.parallel.demos.zero", ["--stage", "2"])])
def test_entry_points_run_alone_and_under_torchrun(module, args):
    plain = subprocess.run([sys.executable, "-m", module, "--steps", "2", *args],
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    torchrun = Path(sys.executable).with_name("torchrun")
    # --standalone: a free port, not torchrun's fixed 29500 (two runs at once would collide)
    under = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2", "-m", module,
                            "--steps", "2", *args], capture_output=True, text=True, timeout=300)
    assert under.returncode == 0, under.stderr
    assert plain.stdout == under.stdout  # same ranks, same numbers, whoever starts them
    assert "largest weight difference" in plain.stdout


# ---------------------------------------------------------------- a model the demos never use

class Odd(torch.nn.Module):
    """Tied input/output embedding used outside its module, a frozen weight, a buffer, a
    dict output, sizes that do not split evenly over 2 or 3 ranks."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(13, 7)
        self.mix = torch.nn.Sequential(torch.nn.Linear(7, 11), torch.nn.Tanh(), torch.nn.Linear(11, 7))
        self.norm = torch.nn.LayerNorm(7)
        self.frozen = torch.nn.Linear(7, 7, bias=False)
        self.frozen.weight.requires_grad_(False)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.scale * self.mix(h) + self.frozen(h)
        return {"logits": torch.nn.functional.linear(self.norm(h), self.emb.weight)}


def train_odd(stage, world=None, steps=3, accumulate=2):
    """SGD with momentum, float64, gradient accumulation over 2 micro-batches; ``stage`` None
    is one process on the whole batch of ``world`` ranks."""
    torch.manual_seed(dist.get_rank() if dist.is_initialized() else 0)
    model = Odd().double()  # different on every rank: wrap must broadcast rank 0's
    n = dist.get_world_size() if stage is not None else world
    r = dist.get_rank() if stage is not None else 0
    if stage is None:
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    elif stage == "dp":
        model = data_parallel.wrap(model, bucket_bytes=200)
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    else:
        model, opt = zero.wrap(model, stage, torch.optim.SGD, lr=0.3, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, 13, (accumulate, 6 * n, 5), generator=g)  # 6 per rank per micro
        total = 0.0
        for micro in ids:
            mine = micro[r * 6:(r + 1) * 6] if stage is not None else micro
            out = model(mine)["logits"]
            loss = torch.nn.functional.cross_entropy(out[:, :-1].flatten(0, 1), mine[:, 1:].flatten())
            (loss / accumulate).backward()
            total += loss.item() / accumulate
        opt.step()
        opt.zero_grad()
        losses.append(total)
    weights = zero.full_state_dict(model, opt if stage not in (None, "dp") else None)
    return losses, weights


STAGES = ("dp", 0, 1, 2, 3)


def train_odd_every_stage():
    """``train_odd`` under plain data parallelism and ZeRO-0/1/2/3, one after the other in one
    launch (a launch costs seconds; the stages share nothing but the process group)."""
    return {stage: train_odd(stage) for stage in STAGES}


@pytest.mark.parametrize("n", [2, 3])
def test_an_unseen_model_trains_the_same(n, no_orphans):
    ref_losses, ref_weights = train_odd(None, n)
    for by_stage in launch(train_odd_every_stage, n):
        assert set(by_stage) == set(STAGES)
        for stage, (losses, weights) in by_stage.items():  # losses: this rank's share only
            assert harness.max_weight_diff(weights, ref_weights) < 1e-12, (n, stage)


def zero3_state_dict():
    torch.manual_seed(dist.get_rank())
    model, opt = zero.wrap(Odd().double(), 3, torch.optim.SGD, lr=0.1)
    freed_before = all(p.untyped_storage().nbytes() == 0 for p in opt.params)
    sd = model.state_dict()
    freed_after = all(p.untyped_storage().nbytes() == 0 for p in opt.params)
    return sd, freed_before, freed_after


def test_zero3_state_dict_is_whole_and_weights_stay_freed(no_orphans):
    torch.manual_seed(0)
    ref = Odd().double().state_dict()
    for sd, freed_before, freed_after in launch(zero3_state_dict, 3):
        assert freed_before and freed_after
        assert sd.keys() == ref.keys()
        assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_a_function_of_a_script_runs_on_ranks(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import torch.distributed as dist\n"
                      "from llmtrain.parallel import launch\n\n"
                      "def work(x):\n    return dist.get_rank() * x\n\n"
                      "if __name__ == '__main__':\n    print(launch(work, 3, 10))\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 10, 20]"


class Checkpointed(torch.nn.Module):
    """Two blocks, each recomputed in backward (activation checkpointing)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(13, 8)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(8, 9), torch.nn.GELU(), torch.nn.Linear(9, 8))
            for _ in range(2))
        self.out = torch.nn.Linear(8, 13)

    def forward(self, ids):
        h = self.emb(ids)
        for block in self.blocks:
            h = h + torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False)
        return self.out(h)


def train_checkpointed(distributed, early_stop=True):
    torch.manual_seed(0)
    model = Checkpointed().double()
    if distributed:
        model, opt = zero.wrap(model, 3, torch.optim.SGD, units=list(model.blocks), lr=0.5)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
    n, r = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    ids = torch.randint(0, 13, (4, 6), generator=torch.Generator().manual_seed(2))
    # early_stop=False: backward recomputes each block whole, so its forward hooks run again
    with torch.utils.checkpoint.set_checkpoint_early_stop(early_stop):
        for _ in range(2):
            mine = ids[r * 4 // n:(r + 1) * 4 // n]
            logits = model(mine)
            torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                              mine[:, 1:].flatten()).backward()
            opt.step()
            opt.zero_grad()
    return zero.full_state_dict(model, opt if distributed else None)


@pytest.mark.parametrize("early_stop", [True, False])
def test_zero3_with_activation_recomputation(early_stop, no_orphans):
    ref = train_checkpointed(False)
    for weights in launch(train_checkpointed, 2, True, early_stop):
        assert harness.max_weight_diff(weights, ref) < 1e-13


def accumulate_with_no_sync(use_no_sync):
    """4 micro-batches per step; with no_sync only the last backward communicates."""
    torch.manual_seed(0)
    model = data_parallel.wrap(Odd().double(), bucket_bytes=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(3)
    calls = []
    for _ in range(2):
        with comm.counting() as log:
            for k, micro in enumerate(torch.randint(0, 13, (4, 2 * dist.get_world_size(), 5), generator=g)):
                mine = micro[2 * dist.get_rank():2 * dist.get_rank() + 2]
                ctx = data_parallel.no_sync(model) if use_no_sync and k < 3 else contextlib.nullcontext()
                with ctx:
                    logits = model(mine)["logits"]
                    (torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                                       mine[:, 1:].flatten()) / 4).backward()
        opt.step()
        opt.zero_grad()
        calls.append(log.calls())
    return calls, {k: v.clone() for k, v in model.named_parameters()}


def test_no_sync_accumulates_locally_and_communicates_once(no_orphans):
    every = launch(accumulate_with_no_sync, 2, False)
    once = launch(accumulate_with_no_sync, 2, True)
    trainable = sum(p.requires_grad for p in Odd().parameters())
    for (calls_every, w_every), (calls_once, w_once) in zip(every, once):
        assert calls_every == [4 * trainable] * 2 and calls_once == [trainable] * 2
        assert harness.max_weight_diff(w_every, w_once) < 1e-14


@pytest.mark.parametrize("args, message", [(["--batch", "7"], "--batch 7 must be divisible by the 2"),
                                           (["--nproc", "0"], "--nproc: must be a positive"),
                                           (["--stage", "4"], "--stage: invalid choice"),
                                           (["--dtype", "fp16"], "--dtype: invalid choice")])
def test_entry_point_rejects_bad_arguments(args, message):
    out = subprocess.run([sys.executable, "-m", "llmtrain.parallel.demos.zero", *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and message in out.stderr


def test_bf16_with_fp32_master_weights_is_the_same_in_every_stage(no_orphans):
    # 16-bit weights and gradients, fp32 master + Adam states: every stage does the same
    # element-wise arithmetic on the same numbers, so all four agree bit for bit
    cfg = dict(model="mlp", dtype="bfloat16", optimizer="adamw", lr=1e-2, steps=3)
    for res in launch(demos.train_all, 2, ZERO, cfg):
        for s in ZERO[1:]:
            assert res[s]["losses"] == res["zero0"]["losses"]
            assert harness.max_weight_diff(res[s]["weights"], res["zero0"]["weights"]) == 0
        assert all(w.dtype == torch.bfloat16 for w in res["zero3"]["weights"].values())
        assert res["zero0"]["losses"][-1] < res["zero0"]["losses"][0]


def test_max_weight_diff():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    assert harness.max_weight_diff(a, {"w": torch.tensor([1.0, 2.5]), "b": torch.tensor([0.25])}) == 0.5
    with pytest.raises(ValueError, match="names"):
        harness.max_weight_diff(a, {"w": a["w"]})


def test_formula_is_the_zero_papers_and_the_memory_modules():
    import sympy as sp

    psi, n = sp.symbols("Psi N", positive=True)
    assert [sp.simplify(zero.formula(z) - f) for z, f in enumerate(
        [16 * psi, 4 * psi + 12 * psi / n, 2 * psi + 14 * psi / n, 16 * psi / n])] == [0] * 4
    for z in range(4):
        for P, N in [(7_500_000_000, 64), (125_248, 4), (6_738_415_616, 8)]:
            exact = sum(memory.model_state_bytes(P, zero=z, dims=ParallelDims(dp=N)).values())
            assert abs(zero.formula(z, P, N) - exact) < 16  # model_state_bytes rounds shards up
            if P % N == 0:  # no padding: the measured-bytes formula is the paper's
                assert zero.formula(z, P, N) == sum(zero.expected_bytes([P], N, z).values())
    # the ZeRO paper's Figure 1: 7.5B parameters, N_d = 64
    assert [round(float(zero.formula(z, 7.5e9, 64)) / 1e9, 1) for z in range(4)] == \
        [120.0, 31.4, 16.6, 1.9]
    with pytest.raises(ValueError, match="stage"):
        zero.formula(4)


def test_the_package_imports_nothing_eagerly():
    """``import llmtrain.parallel`` loads no submodule; ``from llmtrain.parallel import launch``
    is the function, also after another submodule imported ``launch`` first."""
    code = ("import sys; import llmtrain.parallel; "
            "print(sorted(m for m in sys.modules if m.startswith('llmtrain.parallel.'))); "
            "from llmtrain.parallel import data_parallel, launch, RankError; "
            "print(launch is sys.modules['llmtrain.parallel.launch'].launch, RankError.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True RankError"]
