"""`core` suite: MFT optimiser step against FFT step and bare forward+backward.

Each measurement runs in a fresh process so that peak memory (resident set above the loaded
model) belongs to that measurement alone.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepCase:
    name: str
    kind: str  # "bare" forward+backward, "fft" step, "mft" step
    accumulation: int
    blocks: tuple[int, ...] = ()


BENCH_MODEL = dict(vocab_size=8000, hidden=384, layers=12, intermediate=1024, heads=6, kv_heads=6)
MICRO_BATCH, SEQ_LEN = 1, 64


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _measure_step(case: StepCase, repeats: int) -> dict[str, float]:
    """Median seconds per optimiser step and peak RSS growth (MB) over the loaded model."""
    from mft_search.core.masking import MaskSpec, attach_masks, masked_modules, score_parameters
    from mft_search.demo.tiny import tiny_llama

    torch.manual_seed(0)
    model = tiny_llama(**BENCH_MODEL).train()
    if case.kind == "mft":
        attach_masks(model, MaskSpec(blocks=case.blocks, ratio=0.1))
        params = score_parameters(model)
    else:
        params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0) if case.kind != "bare" else None
    data = torch.randint(3, BENCH_MODEL["vocab_size"], (case.accumulation, MICRO_BATCH, SEQ_LEN))
    base_rss = _peak_rss_mb()

    def step() -> None:
        for x in data:
            model(x, labels=x).loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, optimiser state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result = {"step_s": statistics.median(times), "peak_mb": _peak_rss_mb() - base_rss}
    if case.kind == "mft":
        result["mask_s"] = _mask_seconds(masked_modules(model).values())
    return result


def _mask_seconds(modules) -> float:
    """Time to recompute every module's mask once (what one optimiser step costs)."""
    start = time.perf_counter()
    for m in modules:
        m._cache = None
        m.mask()
    return time.perf_counter() - start


def _run_isolated(case: StepCase, repeats: int) -> dict[str, float]:
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_measure_step, (case, repeats))


def bench_core(quick: bool = False) -> None:
    layers = BENCH_MODEL["layers"]
    shallow, deep = tuple(range(0, 4)), tuple(range(layers - 4, layers))
    repeats = 1 if quick else 3
    accumulations = (1, 4) if quick else (1, 16)
    n_params = sum(p.numel() for p in __import__("mft_search.demo.tiny", fromlist=["x"]).tiny_llama(**BENCH_MODEL).parameters())
    print(f"# core: Llama {n_params / 1e6:.1f}M params ({BENCH_MODEL}), micro-batch {MICRO_BATCH}x{SEQ_LEN} "
          f"tokens, CPU, {torch.get_num_threads()} threads, median of {repeats}")
    print(f"{'accum':>5} {'case':<22} {'step s':>8} {'x FFT':>7} {'x bare':>7} {'peak MB':>8} {'x FFT':>7} {'mask %':>7}")
    for accum in accumulations:
        cases = [StepCase("bare fwd+bwd", "bare", accum), StepCase("FFT step", "fft", accum),
                 StepCase(f"MFT shallow {shallow[0]}-{shallow[-1]}", "mft", accum, shallow),
                 StepCase(f"MFT deep {deep[0]}-{deep[-1]}", "mft", accum, deep)]
        results = {c.name: _run_isolated(c, repeats) for c in cases}
        fft, bare = results["FFT step"], results["bare fwd+bwd"]
        for case in cases:
            r = results[case.name]
            mask = f"{100 * r['mask_s'] / r['step_s']:6.2f}%" if "mask_s" in r else ""
            print(f"{accum:>5} {case.name:<22} {r['step_s']:8.3f} {r['step_s'] / fft['step_s']:7.2f} "
                  f"{r['step_s'] / bare['step_s']:7.2f} {r['peak_mb']:8.1f} {r['peak_mb'] / max(fft['peak_mb'], 1e-9):7.2f} {mask:>7}")


def run(quick: bool = False) -> None:
    bench_core(quick)
