"""`cost` suite: the cost model's predicted FLOPs against `bench core`'s measured CPU steps.

For each core case (FFT step, MFT on the shallowest and the deepest 4 blocks) it prints the
predicted FLOPs of one optimiser step (core.cost_model), the measured seconds, the FLOP/s this
CPU reached, and the predicted against the measured MFT/FFT time ratio: how far off the model's
relative costs are, which is what the plan's MFT-vs-FFT figures rest on.
"""

from __future__ import annotations

import torch

from mft_search.bench.core import BENCH_MODEL, MICRO_BATCH, SEQ_LEN, StepCase, _run_isolated
from mft_search.core import cost_model as cm


def _shape() -> cm.ModelShape:
    from mft_search.demo.tiny import tiny_llama

    return cm.ModelShape.of(tiny_llama(**BENCH_MODEL).config)


def step_flops(shape: cm.ModelShape, case: StepCase) -> float:
    """Predicted FLOPs of one optimiser step of a core case (fp32, no checkpointing)."""
    blocks = case.blocks if case.kind == "mft" else None
    tokens = case.accumulation * MICRO_BATCH * SEQ_LEN
    return tokens * cm.train_flops_per_token(shape, blocks, None, False, SEQ_LEN)


def bench_cost(quick: bool = False) -> None:
    shape, layers = _shape(), BENCH_MODEL["layers"]
    accumulation, repeats = (4, 1) if quick else (16, 3)
    cases = [StepCase("FFT step", "fft", accumulation),
             StepCase("MFT shallow 0-3", "mft", accumulation, tuple(range(4))),
             StepCase(f"MFT deep {layers - 4}-{layers - 1}", "mft", accumulation, tuple(range(layers - 4, layers)))]
    threads = torch.get_num_threads()
    print(f"# cost: predicted FLOPs vs measured step time, Llama {shape.params() / 1e6:.1f}M params, "
          f"{accumulation} x {MICRO_BATCH}x{SEQ_LEN} tokens per step, CPU fp32, {threads} threads, median of {repeats}")
    print(f"{'case':<18} {'GFLOP/step':>10} {'step s':>8} {'GFLOP/s':>8} {'per thread':>10} "
          f"{'pred/FFT':>8} {'meas/FFT':>8} {'pred/meas':>9}")
    measured = {c.name: _run_isolated(c, repeats)["step_s"] for c in cases}
    predicted = {c.name: step_flops(shape, c) for c in cases}
    fft = cases[0].name
    for case in cases:
        flops, seconds = predicted[case.name], measured[case.name]
        pred_ratio, meas_ratio = flops / predicted[fft], seconds / measured[fft]
        print(f"{case.name:<18} {flops / 1e9:10.2f} {seconds:8.3f} {flops / seconds / 1e9:8.1f} "
              f"{flops / seconds / threads / 1e9:10.1f} {pred_ratio:8.2f} {meas_ratio:8.2f} {pred_ratio / meas_ratio:9.2f}")


def run(quick: bool = False) -> None:
    bench_cost(quick)
