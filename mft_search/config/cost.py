"""What a sweep will cost, before it runs: memory per worker, tokens, FLOPs, wall time, GPU-hours.

    plan = cost_plan(cfg, model_configs, sizes, gpu="h100", utilisation=0.4)
    print("\n".join(plan.lines()))          # the cost part of --dry-run
    json.dumps(plan.to_dict())              # --dry-run --json

The arithmetic is in core.cost_model (its docstring states the model); here it is applied to
each run a study makes: probe trials, refine trials, the seed re-runs of the selected point, the
evaluations, and the continued-FFT baseline (or the fft stage, whose last point stands for it). Token counts are upper bounds (every sequence max_length long, every answer
max_new_tokens); a run's time is its FLOPs over the accelerator's peak dense bf16 rate times
a stated utilisation, on all the GPUs of the trial. Pure: the caller counts the data (sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mft_search.config.space import FloatRange, IntRange, choices_of, layer_groups
from mft_search.core import cost_model as cm
from mft_search.core.cost_model import GB, Memory, ModelShape, TrainShape

DEFAULT_UTILISATION = 0.4  # of peak dense bf16: what well-tuned LLM training reaches on H100s (MFU 35-45%)
FIT_FRACTION = 0.9  # of a GPU's memory the estimate may use: the CUDA context and fragmentation take the rest
PROMPT_TOKENS = 512  # a benchmark prompt, shots included (a stated guess: prompts are not tokenised here)
WANDA_SEQUENCES = 128
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Problems of each benchmark's default data (source and split unset).
BENCHMARK_SIZES = {"gsm8k": 1319, "math": 500, "ifeval": 541, "humaneval": 164, "humaneval_plus": 164}


@dataclass(frozen=True)
class Accelerator:
    name: str
    peak_flops: float  # dense bf16 FLOP/s (no sparsity); for cpu: measured, per core
    memory_gb: float | None  # None: not checked (host memory)
    note: str


# FLOP/s one core reached in MFT steps of `bench core` (fp32, idle 2-core machine: 44-46 GFLOP/s
# per core for MFT, 54 for FFT; README, Benchmarks, cost). Another CPU differs: rerun bench cost.
CPU_CORE_FLOPS = 45e9
ACCELERATORS = {a.name: a for a in (
    Accelerator("h100", 989e12, 80, "H100 SXM 80 GB"),
    Accelerator("h200", 989e12, 141, "H200 SXM 141 GB"),
    Accelerator("a100-80gb", 312e12, 80, "A100 80 GB"),
    Accelerator("a100-40gb", 312e12, 40, "A100 40 GB"),
    Accelerator("l40s", 362e12, 48, "L40S 48 GB"),
    Accelerator("a10", 125e12, 24, "A10 24 GB"),
    Accelerator("l4", 121e12, 24, "L4 24 GB"),
    Accelerator("cpu", CPU_CORE_FLOPS, None, "CPU, per core: measured, not a peak (utilisation 1)"),
)}
DEFAULT_GPU = "h100"


@dataclass(frozen=True)
class DataSizes:
    """Rows a domain's runs read; None where unknown (hub data is counted only at run time)."""

    train: int | None  # training examples after the validation carve-out and train.fraction
    validation: int | None  # rows of the validation loss (carve-out or validation_split)
    validation_problems: int | None = None
    test_problems: int | None = None
    guard_problems: tuple[int | None, ...] = ()  # each of domains[].guard, in order


@dataclass
class RunCost:
    """One kind of run of a study, per run; `count` of them per study."""

    kind: str
    count: int
    detail: str
    memory: Memory
    memory_other: Memory | None = None  # training: the same with checkpointing toggled
    checkpointing: bool | None = None
    tokens_trained: int | None = 0
    tokens_generated: int | None = 0
    flops: float | None = 0.0
    seconds: float | None = 0.0
    gpu_hours: float | None = 0.0
    fits: bool | None = None
    fixes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": self.kind, "runs_per_study": self.count, "detail": self.detail,
               "memory_per_worker_gb": round(self.memory.total() / GB, 3), "memory_breakdown_gb": self.memory.gb(),
               "fits": self.fits, "fixes": self.fixes, "tokens_trained": self.tokens_trained,
               "tokens_generated": self.tokens_generated, "flops": self.flops, "wall_s": self.seconds,
               "gpu_hours": self.gpu_hours}
        if self.memory_other is not None:
            key = "memory_per_worker_gb_without_checkpointing" if self.checkpointing else \
                "memory_per_worker_gb_with_checkpointing"
            out[key] = round(self.memory_other.total() / GB, 3)
        return out


def _total(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values)


@dataclass
class StudyCost:
    study: str
    sizes: DataSizes
    runs: list[RunCost]
    probe_seconds: float | None = None  # the probe stage's wall time at max_concurrent_trials

    def total(self, name: str) -> float | None:
        return _total(getattr(r, name) if getattr(r, name) is None else getattr(r, name) * r.count for r in self.runs)


@dataclass
class Plan:
    accelerator: Accelerator
    utilisation: float
    gpus_per_trial: float
    studies: list[StudyCost]
    notes: list[str]
    budget: list[str]

    def totals(self) -> dict[str, Any]:
        names = ("tokens_trained", "tokens_generated", "flops", "seconds", "gpu_hours")
        out = {n: _total(s.total(n) for s in self.studies) for n in names}
        memory = [r.memory.total() for s in self.studies for r in s.runs]
        out["memory_per_worker_gb"] = round(max(memory, default=0) / GB, 3)
        out["fits"] = all(r.fits is not False for s in self.studies for r in s.runs)
        out["wall_s"] = out.pop("seconds")
        return out

    def to_dict(self) -> dict[str, Any]:
        a = self.accelerator
        return {"accelerator": {"name": a.name, "peak_flops": a.peak_flops, "memory_gb": a.memory_gb, "note": a.note},
                "utilisation": self.utilisation, "gpus_per_trial": self.gpus_per_trial,
                "studies": [{"study": s.study, "train_examples": s.sizes.train, "probe_wall_s": s.probe_seconds,
                             "runs": [r.to_dict() for r in s.runs]} for s in self.studies],
                "totals": self.totals(), "budget": self.budget, "assumptions": self.notes}

    def lines(self) -> list[str]:
        from mft_search.config.cost_text import plan_lines  # the words, apart from the arithmetic

        return plan_lines(self)


# ---------------------------------------------------------------- building the plan


def split_sizes(spec, rows: int | None, validation_rows: int | None = None) -> tuple[int | None, int | None]:
    """(train, validation) examples of a DataSpec whose split holds `rows` rows, split as
    core.data.load.split_train_validation does; `validation_rows` for a validation_split."""
    if rows is None:
        return None, validation_rows
    rows = min(rows, spec.limit) if spec.limit else rows
    n_val = max(1, round(spec.validation_fraction * rows)) if spec.validation_fraction > 0 else 0
    train = rows - n_val
    if spec.fraction < 1.0:
        train = max(1, round(spec.fraction * train))
    return train, (validation_rows if spec.validation_split else n_val)


def benchmark_problems(spec, local_rows: int | None) -> int | None:
    """Problems an EvalSpec evaluates: its limit over the data's size, where known."""
    if spec is None:
        return 0
    known = local_rows if local_rows is not None else (
        BENCHMARK_SIZES.get(spec.evaluator) if spec.source is None and spec.split is None else None)
    if known is None:
        return spec.limit  # None when neither is known: said so in the plan
    return min(known, spec.limit) if spec.limit else known


def cost_plan(cfg, model_configs: dict[str, Any], sizes: dict[str, DataSizes], gpu: str | None = None,
              utilisation: float = DEFAULT_UTILISATION) -> Plan:
    """The cost of every run of the sweep on accelerator `gpu` (None: h100; cpu when the
    trials use no GPU)."""
    res = cfg.resources
    notes = []
    if not res.use_gpu:
        if gpu not in (None, "cpu"):
            notes.append(f"--gpu {gpu} not used: resources.gpus_per_worker is 0, so trials train on CPU")
        gpu, utilisation = "cpu", 1.0
    accel = ACCELERATORS[gpu or DEFAULT_GPU]
    gpus = res.workers_per_trial * res.gpus_per_worker
    rate = accel.peak_flops * utilisation * res.workers_per_trial * (
        res.gpus_per_worker if res.use_gpu else res.cpus_per_worker)
    context = _Context(cfg, accel, rate, gpus)
    studies = [context.study(label, ModelShape.of(mc), mc, domain, sizes[domain.name])
               for label, mc in model_configs.items() for domain in cfg.domains]
    return Plan(accel, utilisation, gpus, studies, notes + _assumptions(cfg), _budget_lines(cfg, studies, gpus))


def _assumptions(cfg) -> list[str]:
    notes = ["tokens are upper bounds: every training sequence max_length tokens, every answer max_new_tokens, "
             f"every prompt {PROMPT_TOKENS} tokens",
             "the probe figures are of its costliest point (the shallowest layer group, the most kinds, the "
             "largest searched micro-batch and epochs); totals assume no trial stops early"]
    if cfg.search.asha is not None:
        notes.append("ASHA stops some probe trials early: the probe's real cost is lower")
    return notes


def _budget_lines(cfg, studies: list[StudyCost], gpus: float) -> list[str]:
    """What each budget would let the probe start, at this estimate."""
    search, lines = cfg.search, []
    probes = [next(r for r in s.runs if r.kind == "probe trial") for s in studies]
    if search.time_budget_s is not None:
        waves = [None if p.seconds is None else math.ceil(search.time_budget_s / p.seconds) for p in probes]
        started = [None if w is None else min(search.trials, w * search.max_concurrent_trials) for w in waves]
        lines.append(f"search.time_budget_s {search.time_budget_s:g} s per study's probe: about {_count_text(started)} "
                     f"of its {search.trials} trials start within it")
    if search.max_gpu_hours is not None:
        if gpus == 0:
            lines.append("search.max_gpu_hours never binds: resources.gpus_per_worker is 0, so trials use no GPU")
        else:
            started = [None if p.gpu_hours is None else min(search.trials, math.ceil(search.max_gpu_hours / p.gpu_hours))
                       for p in probes]
            lines.append(f"search.max_gpu_hours {search.max_gpu_hours:g} per study's probe: about "
                         f"{_count_text(started)} of its {search.trials} trials start within it")
    return lines


def _count_text(counts: list[int | None]) -> str:
    known = [c for c in counts if c is not None]
    if not known:
        return "an unknown number (the data's size is unknown)"
    return f"{min(known)}" if min(known) == max(known) else f"{min(known)}-{max(known)}"


class _Context:
    """What every run's cost needs: the config, the accelerator, and the trial's FLOP/s."""

    def __init__(self, cfg, accel: Accelerator, rate: float, gpus: float) -> None:
        self.cfg, self.accel, self.rate, self.gpus = cfg, accel, rate, gpus
        self.available = None if accel.memory_gb is None else accel.memory_gb * GB * FIT_FRACTION * min(
            1.0, cfg.resources.gpus_per_worker)

    def dtype_bytes(self, backbone) -> int:
        if backbone.dtype == "auto":
            return 2 if self.cfg.resources.use_gpu else 4
        return DTYPE_BYTES[backbone.dtype]

    def study(self, label: str, shape: ModelShape, model_config, domain, sizes: DataSizes) -> StudyCost:
        backbone = next(b for b in self.cfg.backbones if b.label == label)
        dtype = self.dtype_bytes(backbone)
        train = _costliest_train(self.cfg)
        groups = sorted(layer_groups(self.cfg.search.space), key=min)
        kinds = _largest_kinds(self.cfg.search.space)
        probe_rows = None if sizes.train is None else max(1, round(sizes.train * self.cfg.stages.probe.data_fraction))
        runs = [self.mft("probe trial", self.cfg.search.trials, shape, dtype, domain, train, probe_rows, sizes,
                         groups[0], kinds, cheapest=groups[-1])]
        if self.cfg.stages.refine.top_k:
            runs.append(self.mft("refine trial", self.cfg.refine_trials, shape, dtype, domain, train,
                                 sizes.train, sizes, groups[0], kinds))
        if self.cfg.seeds > 1:  # the selected point again with each extra seed, on the data it was selected on
            rows = sizes.train if self.cfg.stages.refine.top_k else probe_rows
            runs.append(self.mft("seed re-run", self.cfg.seeds - 1, shape, dtype, domain, train, rows, sizes,
                                 groups[0], kinds, guarded=False))
        runs.append(self.evaluations(shape, dtype, domain, sizes, self.cfg.pretrained_missing(backbone) is None))
        if self.cfg.stages.fft is not None:  # its final point is Continued FFT: one run, not re-seeded
            runs.append(self.fft("fft stage", 1, shape, dtype, domain, self.cfg.stages.fft.train, sizes))
        elif "continued_fft" in self.cfg.baselines:
            runs.append(self.fft("continued_fft", self.cfg.seeds, shape, dtype, domain, train, sizes))
        if "lora" in self.cfg.baselines and self.cfg.pretrained_missing(backbone) is None:
            runs.append(self.lora(shape, domain, sizes))
        study = StudyCost(f"{label}/{domain.name}", sizes, runs)
        if runs[0].seconds is not None:
            waves = math.ceil(self.cfg.search.trials / self.cfg.search.max_concurrent_trials)
            study.probe_seconds = waves * runs[0].seconds
        return study

    # ------------------------------------------------------------ runs

    def mft(self, kind: str, count: int, shape: ModelShape, dtype: int, domain, train, rows, sizes, group, kinds,
            cheapest=None, guarded: bool = True) -> RunCost:
        """`guarded`: it scores the domain's guards at every report (the search's trials do)."""
        seq = domain.train.max_length
        masked = shape.masked_params(group, kinds)
        backward = shape.layers - min(group)
        memory = self.train_memory(shape, masked, backward, train, seq, dtype)
        other = self.train_memory(shape, masked, backward, replace_ckpt(train), seq, dtype)
        tokens = _tokens(rows, train, seq)
        per_token = cm.train_flops_per_token(shape, group, kinds, train.activation_checkpointing, seq)
        detail = f"blocks {group[0]}-{group[-1]}, {masked / 1e6:.1f}M scores, micro-batch {train.micro_batch_size}"
        if cheapest is not None and tokens is not None:
            low = cm.train_flops_per_token(shape, cheapest, kinds, train.activation_checkpointing, seq)
            detail += f"; the deepest group ({cheapest[0]}-{cheapest[-1]}) trains at {low / per_token:.0%} of its FLOPs"
        run = RunCost(kind, count, detail, memory, other, train.activation_checkpointing)
        evals = self.report_evaluations(shape, domain, sizes, _reports(rows, train))
        if guarded:
            evals = _pairs_total(evals, self.guards(shape, domain, sizes, _reports(rows, train)))
        self.finish(run, tokens, tokens and tokens * per_token, evals)
        run.fixes = self.fixes(run, lambda t, s: self.train_memory(shape, masked, backward, t, seq, dtype, s), train)
        return run

    def fft(self, kind: str, count: int, shape: ModelShape, dtype: int, domain, train, sizes: DataSizes) -> RunCost:
        seq = domain.train.max_length
        memory = self.train_memory(shape, None, shape.layers, train, seq, dtype)
        other = self.train_memory(shape, None, shape.layers, replace_ckpt(train), seq, dtype)
        tokens = _tokens(sizes.train, train, seq)
        per_token = cm.train_flops_per_token(shape, None, None, train.activation_checkpointing, seq)
        run = RunCost(kind, count, "every weight trained, fp32 masters", memory, other,
                      train.activation_checkpointing)
        evals = self.report_evaluations(shape, domain, sizes, _reports(sizes.train, train))
        self.finish(run, tokens, tokens and tokens * per_token, evals)
        run.fixes = self.fixes(run, lambda t, s: self.train_memory(shape, None, shape.layers, t, seq, dtype, s), train)
        return run

    def lora(self, shape: ModelShape, domain, sizes: DataSizes) -> RunCost:
        """The lora baseline: adapters on the fp32 pretrained model, its own schedule, every point scored."""
        settings, seq = self.cfg.lora, domain.train.max_length
        train, adapters = settings.train, shape.adapter_params(settings.rank)
        memory = self.train_memory(shape, adapters, shape.layers, train, seq, DTYPE_BYTES["float32"])
        other = self.train_memory(shape, adapters, shape.layers, replace_ckpt(train), seq, DTYPE_BYTES["float32"])
        tokens = _tokens(sizes.train, train, seq)
        per_token = cm.lora_flops_per_token(shape, settings.rank, train.activation_checkpointing, seq)
        run = RunCost("lora", self.cfg.seeds, f"rank {settings.rank} adapters ({adapters / 1e6:.1f}M) on the fp32 pretrained "
                      "model", memory, other, train.activation_checkpointing)
        evals = self.report_evaluations(shape, domain, sizes, _reports(sizes.train, train))
        self.finish(run, tokens, tokens and tokens * per_token, evals)
        run.fixes = self.fixes(run, lambda t, s: self.train_memory(shape, adapters, shape.layers, t, seq,
                                                                   DTYPE_BYTES["float32"], s), train)
        return run

    def models_scored(self, pretrained: bool) -> tuple[int, int]:
        """How many models the validation and the test jobs score (tune.sweep's Compared): the
        unmasked backbone and the L1 mask once; per seed the learned mask, random and Wanda, and
        with the pretrained model (`pretrained`) revert and the two LoRA points; the pretrained
        model's own row after the fft stage; Continued FFT on both splits after the fft stage,
        else on test only, once per seed."""
        cfg, baselines = self.cfg, set(self.cfg.baselines)
        # Per seed: the learned mask, random, wanda, and with the pretrained model revert and two LoRA points
        seeded = 1 + len(baselines & {"random", "wanda"})
        if pretrained:
            seeded += ("revert" in baselines) + 2 * ("lora" in baselines)
        both = 1 + ("l1" in baselines) + cfg.seeds * seeded + (pretrained and cfg.stages.fft is not None)
        control = "continued_fft" in baselines
        if cfg.stages.fft is not None:
            return both + control, both + control
        return both, both + control * cfg.seeds

    def evaluations(self, shape: ModelShape, dtype: int, domain, sizes: DataSizes, pretrained: bool) -> RunCost:
        """Selection on validation (the best mask, unmasked and the mask baselines), then test
        (those and continued FFT), wanda's calibration forward, and each guard scored on the
        unmasked backbone (before the probe) and the best mask."""
        masks = [b for b in ("random", "l1", "wanda") if b in self.cfg.baselines]
        validation_variants, test_variants = self.models_scored(pretrained)
        validation = self.report_evaluations(shape, domain, sizes, validation_variants)
        test = self.benchmark(shape, domain.test, sizes.test_problems, test_variants)
        seq = domain.train.max_length
        wanda = WANDA_SEQUENCES * seq * cm.forward_flops_per_token(shape, seq) if "wanda" in masks else 0.0
        guards = self.guards(shape, domain, sizes, 2)
        specs = (domain.validation, domain.test, *(g.benchmark for g in domain.guard))
        memory = max((self.eval_memory(shape, s, dtype, domain) for s in specs), key=Memory.total)
        detail = (f"validation x{validation_variants} models, test x{test_variants}" if domain.test
                  else f"validation x{validation_variants} models, no test")
        if domain.guard:
            detail += f", {len(domain.guard)} guard(s) x2 models"
        run = RunCost("evaluations", 1, detail, memory)
        flops = _total((validation[0], test[0], guards[0]))
        self.finish(run, 0, flops and flops + wanda, (0.0, _total((validation[1], test[1], guards[1]))))
        if run.fits is False:
            # Evaluations hold the whole model on each worker: only their batches can shrink.
            loss = cm.loss_memory(shape, self.cfg.train.micro_batch_size, seq, dtype).total() >= memory.total()
            batch = "train.micro_batch_size (the validation loss's batch)" if loss else \
                "domains[].validation/test.batch_size"
            run.fixes = [f"lower {batch}, or {self._bigger(run.memory.total())}"]
        return run

    def report_evaluations(self, shape: ModelShape, domain, sizes: DataSizes, times: int | None):
        """(FLOPs, generated tokens) of `times` validations: the carve-out's loss, the benchmark."""
        if times is None:
            return None, None
        seq = domain.train.max_length
        loss = _times(sizes.validation, seq * cm.forward_flops_per_token(shape, seq))
        bench, generated = self.benchmark(shape, domain.validation, sizes.validation_problems, 1)
        return _times(times, _total((loss, bench))), _times(times, generated)

    def guards(self, shape: ModelShape, domain, sizes: DataSizes, times: int | None):
        """(FLOPs, generated tokens) of `times` scorings of every guard benchmark of the domain."""
        if times is None:
            return None, None
        costs = [self.benchmark(shape, g.benchmark, n, times) for g, n in zip(domain.guard, sizes.guard_problems)]
        return _total(c[0] for c in costs), _total(c[1] for c in costs)

    def benchmark(self, shape: ModelShape, spec, problems: int | None, variants: int):
        if spec is None:
            return 0.0, 0
        if problems is None:
            return None, None
        new = spec.generation().max_new_tokens
        answers = problems * spec.num_samples * variants
        return answers * cm.generation_flops(shape, PROMPT_TOKENS, new), answers * new

    # ------------------------------------------------------------ memory, time, fit

    def train_memory(self, shape, masked, backward, train, seq, dtype, shards=None) -> Memory:
        res = self.cfg.resources
        shards = shards or (res.workers_per_trial if res.strategy == "fsdp" else 1)
        step = TrainShape(train.micro_batch_size, seq, train.activation_checkpointing)
        return cm.train_memory(shape, masked, backward, step, dtype, shards)

    def eval_memory(self, shape, spec, dtype, domain) -> Memory:
        if spec is None:
            return cm.loss_memory(shape, self.cfg.train.micro_batch_size, domain.train.max_length, dtype)
        context = PROMPT_TOKENS + spec.generation().max_new_tokens
        return cm.generation_memory(shape, spec.batch_size * spec.num_samples, context, dtype)

    def finish(self, run: RunCost, tokens, flops, evals) -> None:
        run.tokens_trained = tokens
        run.flops = _total((flops, evals[0]))
        run.tokens_generated = evals[1]
        run.seconds = None if run.flops is None else run.flops / self.rate
        run.gpu_hours = None if run.seconds is None else run.seconds * self.gpus / 3600
        run.fits = None if self.available is None else run.memory.total() <= self.available

    def fixes(self, run: RunCost, memory_of, train) -> list[str]:
        """What would make a run that does not fit fit, each with its estimate."""
        if run.fits is not False:
            return []
        res, fixes = self.cfg.resources, []
        fits = self.available.__ge__
        if not train.activation_checkpointing and fits(memory_of(replace_ckpt(train), None).total()):
            fixes.append(f"train.activation_checkpointing: true ({_gb(memory_of(replace_ckpt(train), None))})")
        for micro in range(train.micro_batch_size - 1, 0, -1):
            smaller = train.model_copy(update={"micro_batch_size": micro})
            if fits(memory_of(smaller, None).total()):
                fixes.append(f"train.micro_batch_size: {micro} ({_gb(memory_of(smaller, None))})")
                break
        lean = train.model_copy(update={"micro_batch_size": 1, "activation_checkpointing": True})
        for settings, prefix in ((train, ""), (lean, "with micro-batch 1 and checkpointing, ")):
            workers = next((w for w in (2, 4, 8, 16, 32, 64) if fits(memory_of(settings, w).total())), None)
            if workers and workers > (res.workers_per_trial if res.strategy == "fsdp" else 1):
                fixes.append(f"{prefix}resources.strategy: fsdp with workers_per_trial: {workers} "
                             f"({_gb(memory_of(settings, workers))})")
                break
        return fixes or [f"nothing here fits it: {self._bigger(memory_of(lean, 64).total())}"]

    def _bigger(self, needed: float) -> str:
        bigger = [a for a in ACCELERATORS.values() if a.memory_gb and a.memory_gb * GB * FIT_FRACTION >= needed]
        best = min(bigger, key=lambda a: a.memory_gb, default=None)
        return f"--gpu {best.name} ({best.memory_gb:g} GB) would fit it" if best else "no GPU listed has the memory"


def replace_ckpt(train):
    return train.model_copy(update={"activation_checkpointing": not train.activation_checkpointing})


def _gb(memory: Memory) -> str:
    return f"-> {memory.total() / GB:.1f} GB"


def _pairs_total(a: tuple, b: tuple) -> tuple:
    """(FLOPs, tokens) pairs added, None where either is unknown."""
    return tuple(_total(pair) for pair in zip(a, b))


def _times(n, value):
    return None if n is None or value is None else n * value


def _tokens(rows: int | None, train, seq: int) -> int | None:
    """Tokens a run trains on: whole global batches (the last partial one is dropped each epoch)."""
    if rows is None:
        return None
    steps = math.ceil(train.epochs * (rows // train.global_batch_size))
    return steps * train.global_batch_size * seq


def _reports(rows: int | None, train) -> int | None:
    """Evaluation points of a run: one per epoch, or every eval_every_steps (and at the end)."""
    if train.eval_every_steps is None:
        return max(1, math.ceil(train.epochs))
    if rows is None:
        return None
    steps = math.ceil(train.epochs * (rows // train.global_batch_size))
    return max(1, math.ceil(steps / train.eval_every_steps))


def _most(dim, default):
    """The largest value a searched dimension can take (the train section's when unsearched)."""
    if dim is None:
        return default
    if isinstance(dim, (FloatRange, IntRange)):
        return dim.high
    return max(choices_of(dim))


def _costliest_train(cfg):
    """The train settings at their most expensive: largest micro-batch and epochs, checkpointing
    off when the search may turn it off (memory), the smallest global batch (fewest dropped rows)."""
    space, train = cfg.search.space, cfg.train
    ckpt = space.activation_checkpointing
    update = {"micro_batch_size": _most(space.micro_batch_size, train.micro_batch_size),
              "epochs": _most(space.epochs, train.epochs),
              "activation_checkpointing": train.activation_checkpointing if ckpt is None else min(choices_of(ckpt))}
    if space.global_batch_size is not None:
        dim = space.global_batch_size
        update["global_batch_size"] = dim.low if isinstance(dim, IntRange) else min(choices_of(dim))
    return train.model_copy(update=update)


def _largest_kinds(space) -> tuple[str, ...] | None:
    if space.kinds is None:
        return None
    return tuple(max(space.kinds, key=len))


__all__ = ["ACCELERATORS", "DEFAULT_UTILISATION", "Accelerator", "DataSizes", "Plan", "RunCost", "cost_plan",
           "benchmark_problems", "split_sizes"]
