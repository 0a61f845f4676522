"""Fixtures shared by the job, worker, sweep and data tests: generated SFT data and a tiny backbone on disk.

The data is the demo's word problems (mft_search/demo/problems.py) written as GSM8K-format jsonl,
so these tests need nothing outside the repository; tests about the real GSM8K and IFEval files
find them through real_data.py and skip without them.
"""

import json
import random
from pathlib import Path

import pytest
from gcsserver import gcs  # noqa: F401 - the GCS server fixture (gcp-storage-emulator's)
from s3server import s3  # noqa: F401 - the S3 server fixture (moto's), for the tests that use a bucket

from mft_search.core.backbone import BackboneSpec
from mft_search.core.data import DataSpec
from mft_search.demo.problems import ALL_PHRASINGS, unique_problems
from mft_search.demo.tiny import tiny_llama, tiny_tokenizer

PROBLEMS_SEED = 0
TRAIN_ROWS, TEST_ROWS = 320, 64


@pytest.fixture(scope="session")
def problems_dir(tmp_path_factory) -> Path:
    """train.jsonl and test.jsonl of seeded, disjoint word problems: {"question", "answer": "... #### N"}.

    1 to 3 steps and every phrasing, so prompt lengths spread (the truncation test needs short and
    long ones); the same seed writes the same files on every run.
    """
    path = tmp_path_factory.mktemp("problems")
    rng, seen = random.Random(PROBLEMS_SEED), set()
    for split, count in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        problems = unique_problems(rng, count, (1, 2, 3), ALL_PHRASINGS, seen)
        (path / f"{split}.jsonl").write_text("".join(json.dumps(p.record()) + "\n" for p in problems),
                                             encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory, problems_dir) -> BackboneSpec:
    """A 4-block Llama with a tokenizer trained on the generated training lines, saved as safetensors."""
    path = tmp_path_factory.mktemp("backbone")
    lines = (problems_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    tiny_llama().save_pretrained(path)
    tiny_tokenizer(lines).save_pretrained(path)
    return BackboneSpec(source=str(path), name="tiny")


@pytest.fixture(scope="session")
def sft_data(problems_dir) -> DataSpec:
    return DataSpec(source=str(problems_dir / "train.jsonl"), prompt_field="question", response_field="answer",
                    limit=64, validation_fraction=0.25, max_length=512)



@pytest.fixture(params=["s3", "gcs"])
def store(request):
    """Each object store in turn (moto's S3, the GCS emulator): `store.uri(store.new_bucket(), "runs")`
    is a storage URI on a fresh bucket; `store.keys(bucket)` lists it through the store's own API."""
    return request.getfixturevalue(request.param)
