"""The cost part of --dry-run, in words: one line per run kind of each study, then the totals."""

from __future__ import annotations

from mft_search.core.cost_model import GB


def plan_lines(plan) -> list[str]:
    a, res = plan.accelerator, plan
    rate = a.peak_flops * plan.utilisation
    if a.name == "cpu":
        head = f"cost on cpu ({a.peak_flops / 1e9:.0f} GFLOP/s per core, measured; host memory not checked)"
    else:
        head = (f"cost on {a.name} ({a.note}: {a.peak_flops / 1e12:.0f} TFLOP/s dense bf16 x utilisation "
                f"{plan.utilisation:g} = {rate / 1e12:.0f} TFLOP/s per GPU; {res.gpus_per_trial:g} GPU(s) per trial)")
    lines = [head]
    for study in plan.studies:
        s = study.sizes
        lines.append(f"  study {study.study}: {_n(s.train, 'training examples')}, {_n(s.validation, 'validation rows')}"
                     + ("" if s.train is not None else " (hub data is counted at run time: give --train-examples N "
                        "or set train.limit)"))
        lines += [f"    {line}" for run in study.runs for line in _run_lines(run, a)]
        if study.probe_seconds is not None:
            lines.append(f"    probe stage wall time: {_time(study.probe_seconds)} at max_concurrent_trials")
    t = plan.totals()
    lines.append(f"  total: {_tokens(t['tokens_trained'])} tokens trained, {_tokens(t['tokens_generated'])} generated, "
                 f"{_flops(t['flops'])}, {_time(t['wall_s'])} of trial time, {_hours(t['gpu_hours'])}"
                 + ("" if t["fits"] else "; some runs do not fit (above)"))
    lines += [f"  budget: {line}" for line in plan.budget]
    lines += [f"  assumption: {line}" for line in plan.notes]
    return lines


def _run_lines(run, accel) -> list[str]:
    m = run.memory
    parts = [f"weights {m.weights / GB:.1f}", f"{'scores+masks' if run.kind != 'continued_fft' else 'fp32 masters'} "
             f"{m.trainable / GB:.1f}", f"grads {m.gradients / GB:.1f}", f"AdamW {m.optimizer / GB:.1f}",
             f"{'activations' if run.checkpointing is not None else 'KV cache/logits'} {m.activations / GB:.1f}"]
    if run.memory_other is not None:
        parts[-1] += (f" ({run.memory_other.total() / GB:.1f} GB in all "
                      f"{'without' if run.checkpointing else 'with'} checkpointing)")
    if m.working:
        parts.append(f"gathered/buckets {m.working / GB:.1f}")
    fit = "" if run.fits is None else (
        f", fits in {accel.memory_gb:g} GB" if run.fits else f": DOES NOT FIT in {accel.memory_gb:g} GB of {accel.name}")
    lines = [f"{run.kind} x{run.count} ({run.detail}): {m.total() / GB:.1f} GB per worker [{', '.join(parts)}]{fit}",
             f"  {_tokens(run.tokens_trained)} tokens trained, {_tokens(run.tokens_generated)} generated, "
             f"{_flops(run.flops)}: {_time(run.seconds)}, {_hours(run.gpu_hours)} each"]
    lines += [f"  to fit: {fix}" for fix in run.fixes]
    return lines


def _n(value, what: str) -> str:
    return f"{'unknown' if value is None else f'{value:,}'} {what}"


def _tokens(value) -> str:
    return "unknown" if value is None else f"{value:.3g}"


def _flops(value) -> str:
    return "FLOPs unknown" if value is None else f"{value:.2e} FLOPs"


def _time(seconds) -> str:
    if seconds is None:
        return "time unknown"
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 3600:.2f} h"


def _hours(value) -> str:
    return "GPU-hours unknown" if value is None else f"{value:.3g} GPU-hours"
