#!/usr/bin/env python3
"""One prepared GPU check: every GPU-only measurement of the notebooks, in one command.

    python scripts/gpu_check.py                        # on a GPU machine: results/gpu/<card>.json + .md
    python scripts/gpu_check.py --out DIR              # the same, written into DIR
    python scripts/gpu_check.py --dry-run --out DIR    # every code path on the CPU, tiny sizes (CI)

What it measures, and which notebook cell shows it where no GPU is (``llmtrain.gpu_results``):

- ``matmul``: dense matmul throughput in fp32, TF32, bf16, fp16 and FP8 (``torch._scaled_mm``,
  E4M3, compute capability 8.9+) — notebook 04 §6 and §7;
- ``autocast_step``: one AdamW training step of notebook 04's small LLaMA, fp32 against
  ``torch.autocast`` (bf16; fp16 with a GradScaler on GPUs without fast bf16) — 04 §6;
- ``memory_peak``: the peak of a training step, ``torch.cuda.max_memory_allocated``, against
  ``memory.estimate`` (its step peak, and notebook 11's reading "total − gradients") for
  notebook 11's small LLaMA and a larger one — 11 §6;
- ``framework``: the slides' 其他 (C7): the CUDA context (device memory in use that PyTorch's
  caching allocator did not hand out, read in a fresh process, after CUDA starts and after the
  first cuBLAS matmul) and allocator fragmentation (reserved − allocated at a step's peak, for
  a fixed shape and for batches of varying length).

About a minute on one H100/H200 (most of it starting CUDA and the processes); the dry run
takes well under a minute on a 2-core CPU. Output: a JSON file with the card name, torch and
CUDA versions, the date and every number (``values``, raw; ``rows``, as shown), and a short
markdown table beside it (``gpu_results.markdown``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))  # run from a checkout without installing, too

from llmtrain import gpu_results
from llmtrain.cost import memory  # noqa: E402
from llmtrain.measure import tracker  # noqa: E402
from llmtrain.device import choose  # noqa: E402
from llmtrain.model.llama import Llama  # noqa: E402
from llmtrain.model.shapes import ModelShape  # noqa: E402

GIB, MIB = 2**30, 2**20

# notebook 04 §6's model (autocast step) and notebook 11 §6's model (peak); a larger one on GPUs
SHAPE_04 = ModelShape(vocab_size=1024, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=8,
                      intermediate_size=688, max_seq_len=256, name="small (notebook 04)")
SHAPE_11 = ModelShape(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=4,
                      intermediate_size=688, max_seq_len=256, name="small (notebook 11)")
SHAPE_BIG = ModelShape(vocab_size=32000, hidden_size=1024, num_layers=8, num_heads=16, num_kv_heads=8,
                       intermediate_size=2816, max_seq_len=1024, name="medium")
TINY = ModelShape(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=64, max_seq_len=16, name="dry-run tiny")

# sizes: (full run on a GPU, dry run on the CPU)
SIZES = {
    "matmul_n": (8192, 64), "matmul_reps": (10, 2), "timing_repeats": (5, 2),
    "step_04": ((SHAPE_04, 4, 256), (TINY, 2, 16)),
    "peaks": ([(SHAPE_11, 4, 256), (SHAPE_BIG, 8, 1024)], [(TINY, 2, 16)]),
    "varying_seq": ((1024, 256, 768, 512, 1024, 384), (16, 4, 12, 8)),
}


def sizes(dry: bool) -> dict:
    return {k: v[1] if dry else v[0] for k, v in SIZES.items()}


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, reps: int, repeats: int) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` timings of ``reps`` calls (after one warm-up)."""
    fn()
    sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(dev)
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times)


def fmt_bytes(b: int | None) -> str:
    if b is None:
        return "n/a"
    return f"{b:,} B ({b / MIB:,.1f} MiB)"


# ------------------------------------------------------------------------------ sections

def check_matmul(dev: torch.device, sz: dict) -> dict:
    n, reps, repeats = sz["matmul_n"], sz["matmul_reps"], sz["timing_repeats"]
    flops = 2 * n**3
    values, rows, skipped = {"n": n}, [], []
    g = torch.Generator(device=dev).manual_seed(0)
    a32 = torch.randn(n, n, device=dev, generator=g)
    b32 = torch.randn(n, n, device=dev, generator=g)

    def rate(a, b):
        return flops / timed(lambda: a @ b, dev, reps, repeats) / 1e12

    cuda = dev.type == "cuda"
    if cuda:
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
    values["fp32"] = rate(a32, b32)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        values["tf32"] = rate(a32, b32)
        torch.backends.cuda.matmul.allow_tf32 = old
    else:
        values["tf32"] = None
        skipped.append("tf32: a GPU mode (torch.backends.cuda.matmul.allow_tf32)")
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        values[name] = rate(a32.to(dt), b32.to(dt))
    values["fp8"] = None
    if not hasattr(torch, "_scaled_mm"):
        skipped.append("fp8: this torch has no torch._scaled_mm")
    elif cuda and torch.cuda.get_device_capability(dev) < (8, 9):
        skipped.append("fp8: torch._scaled_mm needs FP8 tensor cores (compute capability 8.9+)")
    else:
        a8 = a32.to(torch.float8_e4m3fn)
        b8 = b32.t().contiguous().to(torch.float8_e4m3fn).t()  # column-major, as cuBLASLt wants
        one = torch.tensor(1.0, device=dev)
        try:
            values["fp8"] = flops / timed(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one,
                                                                   out_dtype=torch.bfloat16),
                                          dev, reps, repeats) / 1e12
        except (RuntimeError, NotImplementedError) as e:
            skipped.append(f"fp8: torch._scaled_mm failed here: {str(e).splitlines()[0][:120]}")
    for name in ("fp32", "tf32", "bf16", "fp16", "fp8"):
        v = values[name]
        note = "" if v is None else f"{v / values['fp32']:.2f}× fp32"
        if v is not None and name in ("bf16", "fp16", "fp8") and values["tf32"]:
            note += f", {v / values['tf32']:.2f}× tf32"
        if name == "fp8" and v is not None:
            note += " (torch._scaled_mm, E4M3, out bf16)"
        rows.append([f"{name} {n}×{n}", "n/a" if v is None else f"{v:.4g}", note])
    return {"values": values, "rows": rows, **({"skipped": "; ".join(skipped)} if skipped else {})}


def check_autocast(dev: torch.device, sz: dict) -> dict:
    shape, B, T = sz["step_04"]
    choice = choose(env={}, cuda=dev.type == "cuda", mps=False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape.vocab_size, (B, T), generator=g).to(dev)

    def seconds(autocast: bool) -> float:
        torch.manual_seed(0)
        net = Llama(shape).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler(dev.type, enabled=autocast and choice.needs_loss_scaling)

        def step():
            with torch.autocast(dev.type, dtype=choice.dtype, enabled=autocast):
                loss = net(ids, labels=ids).loss
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)

        return timed(step, dev, 3, sz["timing_repeats"])

    t32, t16 = seconds(False), seconds(True)
    dt = str(choice.dtype).removeprefix("torch.")
    values = {"model": shape.name, "batch": B, "seq": T, "dtype": dt,
              "loss_scaling": choice.needs_loss_scaling, "fp32_ms": t32 * 1e3, "autocast_ms": t16 * 1e3,
              "speedup": t32 / t16}
    rows = [["fp32 step", f"{t32 * 1e3:.2f} ms", f"{shape.name}, batch {B} × {T} tokens, AdamW"],
            [f"autocast {dt} step", f"{t16 * 1e3:.2f} ms",
             "with GradScaler" if choice.needs_loss_scaling else "no loss scaling"],
            ["speed-up", f"{t32 / t16:.2f}×", "fp32 / autocast"]]
    return {"values": values, "rows": rows}


def _peak_once(shape: ModelShape, B: int, T: int, dev: torch.device) -> dict:
    torch.manual_seed(0)
    net = Llama(shape, attn_impl="sdpa").to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)  # foreach on CUDA, single-tensor on CPU
    ids = torch.randint(0, shape.vocab_size, (B, T), generator=torch.Generator().manual_seed(0)).to(dev)

    def step():
        net(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # creates AdamW's states
    cuda = dev.type == "cuda"
    peak = tracker.measure_peak(step, device=dev, include=() if cuda else [net, opt, ids])
    reserved = torch.cuda.max_memory_reserved(dev) if cuda else None  # same window (reset by measure_peak)
    impl = "foreach" if cuda else "single-tensor"
    est = memory.estimate(shape, 1, batch=B, seq=T, zero=0, recompute="none", dtype="fp32",
                          impl="reference", attention="sdpa", precision="fp32", overheads=False,
                          optimizer_impl=impl)
    at_backward_start = est.total - est.details["model states"]["gradients"]
    del net, opt, ids
    if cuda:
        torch.cuda.empty_cache()
    return {"model": shape.name, "batch": B, "seq": T, "method": peak.method,
            "measured_peak": peak.peak_bytes, "max_reserved": reserved,
            "estimate_step_peak": est.peak_bytes, "estimate_phase": est.step_peak.phase,
            "estimate_sum_of_parts": est.total, "estimate_total_minus_gradients": at_backward_start,
            "optimizer_impl": impl,
            "step_peak_error": est.peak_bytes / peak.peak_bytes - 1,
            "total_minus_gradients_error": at_backward_start / peak.peak_bytes - 1}


def check_memory_peak(dev: torch.device, sz: dict) -> dict:
    runs = [_peak_once(shape, B, T, dev) for shape, B, T in sz["peaks"]]
    rows = []
    for r in runs:
        what = f"{r['model']}, B={r['batch']}, T={r['seq']}"
        rows += [[f"{what}: measured peak", fmt_bytes(r["measured_peak"]), r["method"]],
                 [f"{what}: estimate step peak", fmt_bytes(r["estimate_step_peak"]),
                  f"{r['step_peak_error']:+.1%}, phase {r['estimate_phase']}, AdamW {r['optimizer_impl']}"],
                 [f"{what}: total − gradients", fmt_bytes(r["estimate_total_minus_gradients"]),
                  f"{r['total_minus_gradients_error']:+.1%} (notebook 11's reading)"]]
    return {"values": {"runs": runs}, "rows": rows}


CONTEXT_PROBE = r"""
import json, sys, torch
dev = sys.argv[1]
def used():
    if dev == "cuda":
        free, total = torch.cuda.mem_get_info()
        return total - free, torch.cuda.memory_reserved(), total
    rss = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS"))
    return rss, 0, None
out = {}
x = torch.zeros(1, device=dev)
out["after_init"] = used()
a = torch.randn(1024, 1024, device=dev)
(a @ a).sum().item()
out["after_matmul"] = used()
print(json.dumps(out))
"""


def check_framework(dev: torch.device, sz: dict, peaks: list[dict] = ()) -> dict:
    """``peaks``: the runs of ``check_memory_peak`` (their max_reserved − measured peak)."""
    probe = subprocess.run([sys.executable, "-c", CONTEXT_PROBE, dev.type], capture_output=True,
                           text=True, timeout=300)
    if probe.returncode:
        raise RuntimeError(f"the context probe failed:\n{probe.stderr[-2000:]}")
    snap = json.loads(probe.stdout.strip().splitlines()[-1])
    values: dict = {}
    rows = []
    cuda = dev.type == "cuda"
    for moment, (used, reserved, total) in snap.items():
        outside = used - reserved  # device memory PyTorch's allocator did not hand out
        values[f"context_{moment}"] = outside
        values[f"device_used_{moment}"], values[f"reserved_{moment}"] = used, reserved
        values["device_total"] = total
        label = "CUDA context + libraries" if cuda else "process RSS (dry run: no CUDA context)"
        rows.append([f"{label}, {moment.replace('_', ' ')}", fmt_bytes(outside),
                     "mem_get_info used − memory_reserved, fresh process" if cuda else "VmRSS"])

    # fragmentation: the allocator's reserved − allocated at the peak, for the step of
    # ``memory_peak``'s larger model, and for steps whose sequence length varies
    shape, B, _ = sz["peaks"][-1]
    torch.manual_seed(0)
    net = Llama(shape, attn_impl="sdpa").to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    for T in sz["varying_seq"]:
        ids = torch.randint(0, shape.vocab_size, (B, T), generator=g).to(dev)
        net(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize(dev)
        alloc, res = torch.cuda.max_memory_allocated(dev), torch.cuda.max_memory_reserved(dev)
        stats = torch.cuda.memory_stats(dev)
        values.update({"varying_max_allocated": alloc, "varying_max_reserved": res,
                       "varying_fragmentation": res - alloc,
                       "alloc_retries": stats.get("num_alloc_retries", 0)})
    else:
        alloc = res = None
        values.update({"varying_max_allocated": None, "varying_max_reserved": None,
                       "varying_fragmentation": None, "alloc_retries": None})
    del net, opt
    for r in peaks:
        frag = None if r["max_reserved"] is None else r["max_reserved"] - r["measured_peak"]
        values[f"fixed_fragmentation {r['model']}"] = frag
        rows.append([f"reserved − allocated at the peak, {r['model']} (fixed shape)", fmt_bytes(frag),
                     "max_memory_reserved − max_memory_allocated, one step" if cuda else "n/a on the CPU"])
    frag = values["varying_fragmentation"]
    rows.append([f"reserved − allocated, {shape.name}, T = {', '.join(map(str, sz['varying_seq']))}",
                 fmt_bytes(frag), "over steps of varying length" if cuda else "n/a on the CPU"])
    rows.append(["slides' 其他 for comparison", "1 GB + 1~4 GB + 1 GB",
                 "PyTorch ~1 GB, DeepSpeed (ZeRO) 1~4 GB, fragmentation ~1 GB"])
    return {"values": values, "rows": rows}


# ------------------------------------------------------------------------------ main

def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def run(dry: bool) -> dict:
    t0 = time.perf_counter()
    if dry:
        dev = torch.device("cpu")
        card = f"{platform.machine()} CPU (dry run)"
    else:
        dev = torch.device("cuda")
        card = torch.cuda.get_device_name(dev)
    sz = sizes(dry)
    sections: dict = {}
    checks = {"matmul": lambda: check_matmul(dev, sz), "autocast_step": lambda: check_autocast(dev, sz),
              "memory_peak": lambda: check_memory_peak(dev, sz),
              "framework": lambda: check_framework(dev, sz, sections["memory_peak"]["values"]["runs"])}
    for name, fn in checks.items():
        t = time.perf_counter()
        sections[name] = fn()
        sections[name]["seconds"] = time.perf_counter() - t
        print(f"{name}: {sections[name]['seconds']:.1f} s", file=sys.stderr)
    props = {}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        props = {"compute_capability": list(torch.cuda.get_device_capability(dev)),
                 "total_memory": p.total_memory, "multiprocessors": p.multi_processor_count}
    results = {
        "schema": gpu_results.SCHEMA, "dry_run": dry, "card": card, "device": str(dev),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        "python": platform.python_version(), **props,
        "seconds": time.perf_counter() - t0, "sections": sections,
    }
    return gpu_results.validate(json.loads(json.dumps(results)))  # what is written is what is checked


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for <card>.json and <card>.md (default: results/gpu/, or "
                         "build/gpu_check/ for a dry run)")
    ap.add_argument("--dry-run", action="store_true",
                    help="run every code path on the CPU with tiny sizes; the file is marked dry_run")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("scripts/gpu_check.py: no CUDA GPU here (torch.cuda.is_available() is False); "
              "use --dry-run to rehearse on the CPU", file=sys.stderr)
        return 2
    out = args.out or (ROOT / "build" / "gpu_check" if args.dry_run else gpu_results.results_dir())
    if out.exists() and not out.is_dir():
        print(f"scripts/gpu_check.py: --out {out} must be a folder", file=sys.stderr)
        return 2
    results = run(args.dry_run)
    out.mkdir(parents=True, exist_ok=True)
    stem = slug(results["card"])
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    (out / f"{stem}.md").write_text(gpu_results.markdown(results), encoding="utf-8")
    print(gpu_results.markdown(results))
    print(f"wrote {out / (stem + '.json')} and {stem}.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
