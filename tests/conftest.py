"""Fixtures shared by the job, worker and sweep tests: a tiny backbone and SFT data on disk."""

from pathlib import Path

import pytest

from mft_search.core.backbone import BackboneSpec
from mft_search.core.data import DataSpec
from mft_search.demo.tiny import tiny_llama, tiny_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    path = SHARED_DATA / "gsm8k"
    if not (path / "train.jsonl").exists():
        pytest.skip(f"GSM8K data not found at {path} (the project's ../shared/data)")
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory, gsm8k_dir) -> BackboneSpec:
    """A 4-block Llama with a tokenizer trained on GSM8K text, saved as safetensors."""
    path = tmp_path_factory.mktemp("backbone")
    lines = (gsm8k_dir / "train.jsonl").read_text().splitlines()[:300]
    tiny_llama().save_pretrained(path)
    tiny_tokenizer(lines).save_pretrained(path)
    return BackboneSpec(source=str(path), name="tiny")


@pytest.fixture(scope="session")
def gsm8k_sft(gsm8k_dir) -> DataSpec:
    return DataSpec(source=str(gsm8k_dir / "train.jsonl"), prompt_field="question", response_field="answer",
                    limit=64, validation_fraction=0.25, max_length=512)
