"""Start ``world_size`` processes with ``torch.distributed`` up, run a function on each, return the results.

``launch(target, world_size, *args)`` is what a notebook or a test calls: on a CPU it starts
gloo ranks, on a machine with a GPU per rank NCCL ranks. ``init_from_env()`` is what the same
code calls under ``torchrun``, which starts the processes itself (on one machine or many).

Why it is written this way (each line of facts.md §8 is a pitfall measured on this CPU):

- **Fresh processes, importable targets.** Each rank is a new ``python`` (as with torchrun or
  ``mp.spawn``) that unpickles ``target`` by its module and name: a function defined in a
  notebook cannot be found there, so ``launch`` refuses it up front, saying what to do.
- **A free port per launch.** The launcher itself hosts the rendezvous store on a port the OS
  picks (``TCPStore(port=0)``), so two launches at once never collide.
- **One thread per rank on CPU, and no spinning.** Otherwise every rank grabs all cores: 7–8×
  slower on 2 cores. Every rank also gets ``OMP_WAIT_POLICY=PASSIVE`` (unless set): an OpenMP
  thread that waits sleeps instead of spinning on a core that another rank, or another
  notebook's kernel, needs (100 tiny-LLaMA steps in two processes at once: 287 s spinning,
  14 s passive, on 2 shared cores; tests/test_load.py).
- **Timeouts everywhere.** The process group gets ``timeout``; the launcher waits at most
  ``timeout`` seconds in all, then kills every rank and raises ``LaunchTimeout``.
- **A failing rank surfaces at once.** A rank that raises sends its traceback; the launcher
  kills the others (they would wait forever in their next collective) and raises ``RankError``.
- **No orphans.** Every rank is terminated, then killed, before ``launch`` returns or raises;
  each rank also exits by itself if the launcher dies (its stdin, which the launcher holds
  open, closes). Plain subprocesses: no multiprocessing helper process stays behind.
"""

from __future__ import annotations

import datetime
import io
import os
import pickle
import runpy
import selectors
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist

from .. import check

__all__ = ["run_moved_command", "launch", "RankError", "LaunchTimeout", "init_from_env", "shutdown", "default_backend",
           "check_backend", "rank", "world_size", "device", "DEFAULT_TIMEOUT_S",
           "require_process_group", "same_on_every_rank"]


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


# Seconds a launch may take in all. Generous: the ranks of a notebook's launch take seconds on a
# quiet machine, but a classroom server running many kernels at once can slow them 10×; a rank
# that hangs still ends, with every rank killed.
DEFAULT_TIMEOUT_S = 300.0


def check_backend(backend: str, world_size: int) -> None:
    """NCCL needs a CUDA GPU for each rank: say so (ValueError) rather than fail in every rank."""
    if backend == "nccl":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus < world_size:
            raise ValueError(f"backend must be 'gloo' (or None: chosen for you) where there is no CUDA "
                             f"GPU for each rank (NCCL needs one per rank: {world_size} ranks, {gpus} "
                             f"GPUs here), got 'nccl'")


def launch(target: Callable[..., Any], world_size: int, *args: Any,
           timeout: float = DEFAULT_TIMEOUT_S, backend: str | None = None) -> list[Any]:
    """Run ``target(*args)`` on ranks 0 … world_size−1 and return their results, by rank.

    Inside ``target``, ``torch.distributed`` is initialised (``dist.get_rank()``,
    ``dist.get_world_size()``); ``device()`` is this rank's device. Results are pickled back
    (tensors come back on the CPU); what a rank prints appears here as ``[rank r] …``.
    Raises ``RankError`` with the traceback of the first rank that fails, ``LaunchTimeout``
    if the ranks are not all done after ``timeout`` seconds.
    """
    _check_target(target)
    check.positive_int("world_size", world_size)
    check.positive_number("timeout", timeout)  # seconds
    check.optional(check.one_of, "backend", backend, ("gloo", "nccl"))
    backend = backend or default_backend(world_size)
    check_backend(backend, world_size)

    store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=timeout))
    ranks, grace = [], 0.0
    try:
        for r in range(world_size):
            ranks.append(_Rank(r, world_size, backend, store.port, timeout, target, args))
        results = _collect(ranks, timeout)
        grace = 5.0  # all answered: let them leave the process group together
        return results
    finally:
        deadline = time.monotonic() + grace
        for rk in ranks:
            rk.stop(max(0.0, deadline - time.monotonic()))
        del store


class _Rank:
    """One rank: a fresh ``python`` process, fed its job on stdin, answering on its own pipe."""

    def __init__(self, r, world_size, backend, port, timeout, target, args):
        self.rank, self.result, self.stderr = r, b"", b""
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world_size), LOCAL_RANK=str(r),
                   LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a waiting thread sleeps, never spins
        if backend == "gloo":
            env["OMP_NUM_THREADS"] = "1"  # one thread per rank: ranks share the cores
        main = _main_script() if getattr(target, "__module__", None) == "__main__" else None
        job = pickle.dumps(main) + pickle.dumps((r, world_size, backend, port, timeout, target, args))
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from llmtrain.parallel.launch import _rank_main; _rank_main()",
                 str(write_fd)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(write_fd,), env=env, cwd=os.getcwd())
        finally:
            os.close(write_fd)
        self.result_pipe = os.fdopen(read_fd, "rb", buffering=0)
        # the job; stdin then stays open: when this process dies, the rank sees EOF and exits
        self.proc.stdin.write(len(job).to_bytes(8, "little") + job)
        self.proc.stdin.flush()
        self._line = b""

    def stop(self, grace: float = 0.0) -> None:
        """Give the process ``grace`` seconds to exit, then terminate (then kill) it; close
        every pipe; reap it."""
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr, self.result_pipe):
            try:
                f.close()
            except OSError:
                pass

    def relay(self, data: bytes) -> None:
        """Print the rank's output here, one ``[rank r]`` line at a time (``data`` empty: the
        output ended; print what is left of the last line)."""
        self._line += data if data else (b"\n" if self._line else b"")
        *lines, self._line = self._line.split(b"\n")
        for line in lines:
            print(f"[rank {self.rank}] {line.decode(errors='replace')}", flush=True)


def _check_target(target) -> None:
    if not callable(target):
        raise ValueError(f"target must be a function, got {type(target).__name__}")
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if module == "__main__" and _main_script():
        module = "__mp_main__"  # a script's function: each rank re-runs the script, as spawn does
    if module in (None, "__main__") or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(
            f"target {qualname or target!r} must be importable (a top-level function of a module): "
            "each rank is a new process that imports it by name. Functions defined in a notebook "
            "or inside another function cannot be found there; put it in a .py module "
            "(as in llmtrain.parallel.demos) and import it.")


def _main_script() -> str | None:
    """The file of the script run as ``python script.py`` (None in notebooks and ``-c``)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return os.path.abspath(path) if path and path.endswith(".py") and os.path.exists(path) else None


def _load_main(path: str) -> None:
    """Make the launcher's script importable as ``__main__`` here (what multiprocessing's spawn
    does): it runs with ``__name__ == "__mp_main__"``, so its ``if __name__ == "__main__":``
    block does not run again."""
    import runpy
    import types

    module = types.ModuleType("__mp_main__")
    module.__dict__.update(runpy.run_path(path, run_name="__mp_main__"))
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def _collect(ranks: list[_Rank], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    for rk in ranks:
        sel.register(rk.result_pipe, selectors.EVENT_READ, (rk, "result"))
        sel.register(rk.proc.stdout, selectors.EVENT_READ, (rk, "stdout"))
        sel.register(rk.proc.stderr, selectors.EVENT_READ, (rk, "stderr"))
    results: dict[int, Any] = {}
    try:
        while len(results) < len(ranks):
            left = deadline - time.monotonic()
            if left <= 0:
                pending = [rk.rank for rk in ranks if rk.rank not in results]
                raise LaunchTimeout(f"ranks {pending} did not finish within timeout={timeout:g} s "
                                    f"(ranks {sorted(results)} did); all ranks were stopped")
            _read(sel, min(left, 1.0), results)
        drain = time.monotonic() + 2.0  # all answered: print what they wrote last, then go
        while sel.get_map() and time.monotonic() < drain:
            _read(sel, 0.1, results)
    finally:
        sel.close()
    return [results[r] for r in range(len(ranks))]


def _read(sel: selectors.BaseSelector, timeout: float, results: dict[int, Any]) -> None:
    """Read what the ranks' pipes hold: relay stdout, keep stderr, collect answers."""
    for key, _ in sel.select(timeout=timeout):
        rk, kind = key.data
        data = os.read(key.fileobj.fileno(), 1 << 16)
        if not data:  # end of file
            sel.unregister(key.fileobj)
        if kind == "stdout":
            rk.relay(data)
        elif kind == "stderr":
            rk.stderr = (rk.stderr + data)[-20_000:]  # shown only if the rank dies
        elif data:
            rk.result += data
        else:  # the rank closed its answer pipe: it is done, one way or another
            results[rk.rank] = _result(rk)


def _result(rk: _Rank) -> Any:
    if len(rk.result) < 8 or len(rk.result) != 8 + int.from_bytes(rk.result[:8], "little"):
        code = rk.proc.wait(timeout=5)
        tail = rk.stderr.decode(errors="replace")[-4000:]
        raise RankError(rk.rank, f"process exited with code {code} without reporting a result"
                                 + (f"; its stderr ends with:\n{tail}" if tail else ""))
    status, payload = pickle.loads(rk.result[8:])
    if status == "error":
        raise RankError(rk.rank, payload)
    return pickle.loads(payload)


# ----------------------------------------------------------------------------- inside a rank

def _rank_main() -> None:
    """Entry point of a rank process started by ``launch``: read the job, run it, answer."""
    out = os.fdopen(int(sys.argv[1]), "wb")
    stdin = sys.stdin.buffer
    n = int.from_bytes(stdin.read(8), "little")
    job = stdin.read(n)
    threading.Thread(target=_exit_with_launcher, args=(stdin,), daemon=True).start()
    try:
        buf = io.BytesIO(job)
        main = pickle.load(buf)  # the launcher's script, when target is defined in it
        if main:
            _load_main(main)
        r, world_size, backend, port, timeout, target, args = pickle.load(buf)
        _init(backend, r, world_size, timeout,
              store=dist.TCPStore("127.0.0.1", port, world_size, is_master=False,
                                  timeout=datetime.timedelta(seconds=timeout)))
        answer = ("ok", pickle.dumps(_to_cpu(target(*args))))
    except BaseException:  # noqa: BLE001 - everything goes back to the launcher
        answer = ("error", traceback.format_exc())
    data = pickle.dumps(answer)
    out.write(len(data).to_bytes(8, "little") + data)
    out.close()
    if answer[0] == "error":
        os._exit(1)  # do not wait in destroy_process_group for ranks that may be stuck
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter's slow teardown: the answer is sent, the group left


def _exit_with_launcher(stdin) -> None:
    stdin.read()  # returns at EOF: the launcher is gone (or done)
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
    check.optional(check.one_of, "backend", backend, ("gloo", "nccl"))
    backend = backend or default_backend(local)
    check_backend(backend, local)
    if backend == "gloo":
        torch.set_num_threads(1)
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))


def shutdown() -> None:
    """Leave the process group together: wait for every rank, then destroy it (a rank that
    tears down while another still talks to it can abort)."""
    if dist.is_initialized():
        dist.barrier()
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


def require_process_group(what: str) -> None:
    """RuntimeError saying ``what`` must run inside a rank, when torch.distributed is not up."""
    if not dist.is_initialized():
        raise RuntimeError(f"{what} must be called inside a rank: torch.distributed is not "
                           "initialised (use llmtrain.parallel.launch, or torchrun + init_from_env)")


def same_on_every_rank(group, what: str = "the group", **settings) -> None:
    """ValueError on every rank (not a hang on some) when the ranks of ``group`` disagree on
    one of ``settings`` (compared by ``repr``); ``what`` names the ranks in the message."""
    mine = {k: repr(v) for k, v in settings.items()}
    seen: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(seen, mine, group=group)
    for name in settings:
        values = [s[name] for s in seen]
        if len(set(values)) > 1:
            raise ValueError(f"{name} must be the same on every rank of {what}, got "
                             f"{values[:4]} on ranks 0-{min(len(values), 4) - 1}")


def run_moved_command(module: str) -> None:
    """Run ``python -m llmtrain.parallel.X`` (the command of a library module before issue 24)
    as the demo it moved to, ``python -m llmtrain.parallel.demos.X``: the old command lines, in
    scripts and torchrun jobs, keep working for one release. The demo is found by name when the
    command runs, never when the library is imported (tests/test_bad_input.py)."""
    runpy.run_module(module.replace("llmtrain.parallel.", "llmtrain.parallel.demos.", 1),
                     run_name="__main__", alter_sys=True)
