"""Start ``world_size`` processes with ``torch.distributed`` up, run a function on each, return the results.

``launch(target, world_size, *args)`` is what a notebook or a test calls: on a CPU it starts
gloo ranks, on a machine with a GPU per rank NCCL ranks. ``init_from_env()`` is what the same
code calls under ``torchrun``, which starts the processes itself (on one machine or many).

Why it is written this way (each line of facts.md §8 is a pitfall measured on this CPU):

- **spawn, importable targets.** Each rank is a fresh interpreter (start method ``spawn``), which
  unpickles ``target`` by its module and name: a function defined in a notebook cannot be found
  there, so ``launch`` refuses it up front with a message saying what to do.
- **A free port per launch.** The launcher itself hosts the rendezvous store on a port the OS
  picks (``TCPStore(port=0)``), so two launches at once never collide.
- **One thread per rank on CPU.** Otherwise every rank grabs all cores: 7–8× slower on 2 cores.
- **Timeouts everywhere.** The process group gets ``timeout``; the launcher waits at most
  ``timeout`` seconds in all, then kills every rank and raises ``LaunchTimeout``.
- **A failing rank surfaces at once.** A rank that raises sends its traceback; the launcher
  kills the others (they would wait forever in their next collective) and raises ``RankError``.
- **No orphans.** Every rank is terminated, then killed, before ``launch`` returns or raises;
  each rank also exits by itself if the launcher dies (a pipe it watches closes).
"""

from __future__ import annotations

import datetime
import os
import pickle
import queue
import threading
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["launch", "RankError", "LaunchTimeout", "init_from_env", "shutdown", "default_backend",
           "rank", "world_size", "device"]


class RankError(RuntimeError):
    """A rank raised (or died): ``.rank`` is which one, ``.remote_traceback`` its traceback."""

    def __init__(self, rank: int, remote_traceback: str):
        self.rank, self.remote_traceback = rank, remote_traceback
        super().__init__(f"rank {rank} failed:\n{remote_traceback}")


class LaunchTimeout(TimeoutError):
    """Not every rank finished within the launch's ``timeout``; all ranks were killed."""


def default_backend(world_size: int) -> str:
    """"nccl" when there is a CUDA GPU for each rank, else "gloo" (CPU)."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= world_size:
        return "nccl"
    return "gloo"


def launch(target: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0,
           backend: str | None = None) -> list[Any]:
    """Run ``target(*args)`` on ranks 0 … world_size−1 and return their results, by rank.

    Inside ``target``, ``torch.distributed`` is initialised (``dist.get_rank()``,
    ``dist.get_world_size()``); ``device()`` is this rank's device. Results are pickled back
    (tensors come back on the CPU). Raises ``RankError`` with the traceback of the first rank
    that fails, ``LaunchTimeout`` if the ranks are not all done after ``timeout`` seconds.
    """
    _check_target(target)
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    backend = backend or default_backend(world_size)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")

    ctx = mp.get_context("spawn")
    store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=timeout))
    results_q = ctx.Queue()
    alive_r, alive_w = ctx.Pipe(duplex=False)  # closes when the launcher goes: ranks then exit
    procs = [ctx.Process(target=_rank_main, daemon=True, name=f"llmtrain-rank{r}",
                         args=(r, world_size, backend, store.port, timeout, target, args,
                               results_q, alive_r))
             for r in range(world_size)]
    try:
        for p in procs:
            p.start()
        alive_r.close()
        return _collect(procs, results_q, world_size, timeout)
    finally:
        _stop(procs)
        alive_w.close()
        results_q.close()
        results_q.join_thread()
        del store


def _check_target(target) -> None:
    if not callable(target):
        raise ValueError(f"target must be a function, got {type(target).__name__}")
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if module in (None, "__main__") or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"target {qualname or target!r} must be importable (a top-level function of a module): "
            "each rank is a new process that imports it by name. Functions defined in a notebook "
            "or inside another function cannot be found there; put it in a .py module "
            "(e.g. llmtrain.dist.demos) and import it.")


def _collect(procs, results_q, world_size: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    results: dict[int, Any] = {}
    while len(results) < world_size:
        left = deadline - time.monotonic()
        if left <= 0:
            pending = sorted(set(range(world_size)) - set(results))
            raise LaunchTimeout(f"ranks {pending} did not finish within timeout={timeout:g} s "
                                f"(ranks {sorted(results)} did); all ranks were stopped")
        try:
            r, status, payload = results_q.get(timeout=min(0.2, left))
        except queue.Empty:
            for r, p in enumerate(procs):
                if r not in results and p.exitcode is not None:
                    try:  # it may have reported just before exiting
                        r2, status, payload = results_q.get(timeout=1.0)
                    except queue.Empty:
                        raise RankError(r, f"process exited with code {p.exitcode} "
                                           "without reporting a result") from None
                    _take(results, r2, status, payload)
                    break
            continue
        _take(results, r, status, payload)
    return [results[r] for r in range(world_size)]


def _take(results: dict, r: int, status: str, payload) -> None:
    if status == "error":
        raise RankError(r, payload)
    results[r] = pickle.loads(payload)


def _stop(procs) -> None:
    """Terminate every rank still running, then kill what did not stop; reap them all."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        if p.pid is not None:
            p.join(timeout=3)
            if p.is_alive():
                p.kill()
                p.join(timeout=3)


# ----------------------------------------------------------------------------- inside a rank

def _rank_main(r, world_size, backend, port, timeout, target, args, results_q, alive_r) -> None:
    threading.Thread(target=_exit_with_launcher, args=(alive_r,), daemon=True).start()
    os.environ.update(RANK=str(r), WORLD_SIZE=str(world_size), LOCAL_RANK=str(r),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        _init(backend, r, world_size, timeout,
              store=dist.TCPStore("127.0.0.1", port, world_size, is_master=False,
                                  timeout=datetime.timedelta(seconds=timeout)))
        result = target(*args)
        payload = pickle.dumps(_to_cpu(result))
    except BaseException:  # noqa: BLE001 - everything goes back to the launcher
        results_q.put((r, "error", traceback.format_exc()))
        results_q.close()
        results_q.join_thread()
        os._exit(1)  # do not wait in destroy_process_group for ranks that may be stuck
    results_q.put((r, "ok", payload))
    results_q.close()
    results_q.join_thread()
    dist.destroy_process_group()


def _exit_with_launcher(alive_r) -> None:
    try:
        alive_r.recv()
    except BaseException:  # noqa: BLE001 - EOF: the launcher is gone
        pass
    os._exit(1)


def _to_cpu(obj):
    return torch.utils._pytree.tree_map(
        lambda x: x.detach().cpu() if isinstance(x, torch.Tensor) else x, obj)


def _init(backend: str, r: int, world_size: int, timeout: float, store=None) -> None:
    if backend == "gloo":
        torch.set_num_threads(1)
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", r)))
    dist.init_process_group(backend, store=store, rank=r, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout))


def init_from_env(timeout: float = 300.0, backend: str | None = None) -> None:
    """Join the process group ``torchrun`` set up (RANK, WORLD_SIZE, MASTER_ADDR/PORT)."""
    if dist.is_initialized():
        return
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"{var} is not set: start this with torchrun, or use launch()")
    n = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_WORLD_SIZE", n))
    backend = backend or default_backend(local)
    if backend == "gloo":
        torch.set_num_threads(1)
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def device() -> torch.device:
    """This rank's device: its GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
