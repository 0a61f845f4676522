"""The demo domain's SFT data as the sweep reads it (demo.yaml): one template for training and
for the GSM8K evaluator's prompt, so that fine-tuning and evaluation agree."""

from __future__ import annotations

from pathlib import Path

from mft_search.core.data import DataSpec

TEMPLATE = "Question: {prompt}\nAnswer:"  # the GSM8K evaluator's prompt; answers start with a space


def sft_data_spec(train_file: Path) -> DataSpec:
    """The SFT data of the demo domain: what the fft stage and MFT both train on (demo.yaml)."""
    return DataSpec(source=str(train_file), prompt_field="question", response_field="answer", template=TEMPLATE,
                    use_chat_template=False, max_length=256)
