"""What decides a benchmark's score when the YAML leaves it out: the settings of a named preset.

`lm-eval` (the default) follows lm-evaluation-harness 0.4.13's task YAMLs: gsm8k v3 (5-shot from
the train split, `Question: ...\\nAnswer:`, stops `Question:`, `</s>`, `<|im_end|>`, 256 new
tokens, strict and flexible filters), ifeval v4 (0-shot, 1,280 new tokens), humaneval v1 (0-shot,
greedy pass@1, stops `\\nclass`, `\\ndef`, `\\n#`, `\\nif`, `\\nprint`, 1,024 new tokens). The chat
template is not part of an lm-eval task (its --apply_chat_template flag is off unless given); the
project's default stays on (when the tokenizer has one), as the models here were fine-tuned with
one; set use_chat_template: false for lm-eval's command-line default.

`olmes-paper` is what the MFT authors ran with olmes, where it differs: GSM8K 8-shot with the
last number as the answer (flexible filter first), the chat template with the examples as turns,
512 new tokens. olmes draws its 8 shots from a fixed chain-of-thought set; here they are drawn,
seeded, from GSM8K's train split, so prompts differ from olmes's in their examples, not format.
"""

from __future__ import annotations

from dataclasses import dataclass

GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")  # lm-eval gsm8k v3's `until`
MATH_STOP = ("Problem:", "</s>", "<|im_end|>", "<|eot_id|>")
# lm-eval humaneval v1's `until` (Codex's): a completion ends where the next top-level statement begins.
CODE_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


@dataclass(frozen=True)
class Convention:
    num_fewshot: int = 0
    max_new_tokens: int = 256
    stop: tuple[str, ...] | None = None  # None: the evaluator's own (HumanEval's depends on the chat template)
    filter: tuple[str, ...] = ()  # GSM8K only
    use_chat_template: bool = True
    fewshot_as_multiturn: bool = False


_LM_EVAL = {
    "gsm8k": Convention(num_fewshot=5, max_new_tokens=256, stop=GSM8K_STOP, filter=("strict", "flexible")),
    "math": Convention(max_new_tokens=256, stop=MATH_STOP),  # the project's own prompt (no lm-eval twin)
    "ifeval": Convention(max_new_tokens=1280, stop=()),
    "humaneval": Convention(max_new_tokens=1024),  # stop: CODE_STOP without a chat template
    "humaneval_plus": Convention(max_new_tokens=1024),
}

PRESETS: dict[str, dict[str, Convention]] = {
    "lm-eval": _LM_EVAL,
    "olmes-paper": {
        **_LM_EVAL,
        "gsm8k": Convention(num_fewshot=8, max_new_tokens=512, stop=GSM8K_STOP, filter=("flexible", "strict"),
                            use_chat_template=True, fewshot_as_multiturn=True),
    },
}

FEWSHOT_BENCHMARKS = ("gsm8k",)  # the benchmarks that draw few-shot examples


def convention(preset: str, evaluator: str) -> Convention:
    return PRESETS[preset][evaluator]
