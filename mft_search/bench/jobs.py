"""`jobs` suite: a one-worker job outside Tune (an evaluation, the continued-FFT control) run as a
Ray Train run against the same job run as a plain Ray task (train.ray_train.fit_job).

A sweep runs three such jobs per study after its search (validation, continued FFT, test). Each
is timed on the driver's clock, start to result, on a local Ray: a tiny Llama (demo.tiny) built
here, scoring validation loss for the unmasked backbone and a random mask. The Train run is the
baseline; the first task starts a worker process, later ones find it pooled.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from mft_search.core.backbone import BackboneSpec
from mft_search.core.data import DataSpec
from mft_search.core.masking import MaskSpec
from mft_search.demo.problems import ALL_PHRASINGS, unique_problems
from mft_search.demo.tiny import tiny_llama, tiny_tokenizer
from mft_search.train.ray_train import build_trainer, fit_job
from mft_search.train.spec import EvalVariant, Resources, TrialJob


def run(quick: bool = False) -> None:
    import ray

    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        job = _job(tmp_path)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            train = [_timed(lambda i=i: _train_run(job, tmp_path, i)) for i in range(repeats)]
            task = [_timed(lambda i=i: _task(job, tmp_path, i)) for i in range(repeats + 1)]
        finally:
            ray.shutdown()
    print(f"# jobs: a one-worker evaluate job (validation loss, 2 variants, tiny Llama), {repeats} repeat(s); "
          "seconds on the driver's clock, start to result")
    print(f"{'runner':>28} " + " ".join(f"{'#' + str(i + 1):>6}" for i in range(repeats + 1)))
    print(f"{'Ray Train run (baseline)':>28} " + " ".join(f"{s:6.1f}" for s in train))
    print(f"{'Ray task (fit_job)':>28} " + " ".join(f"{s:6.1f}" for s in task))
    first, warm = task[0] / min(train), min(task[1:]) / min(train)
    print(f"task / Train run: {first:.2f}x for the first task (a new worker process), {warm:.2f}x once it is pooled")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _train_run(job: TrialJob, tmp_path: Path, i: int) -> None:
    named = job.model_copy(update={"name": f"train-{i}"})
    result = build_trainer(named, Resources(), storage_path=str(tmp_path / "ray")).fit()
    if result.error:
        raise result.error


def _task(job: TrialJob, tmp_path: Path, i: int) -> None:
    fit_job(job.model_copy(update={"name": f"task-{i}"}), Resources(), storage_path=str(tmp_path / "ray"))


def _job(tmp_path: Path) -> TrialJob:
    """An evaluate job on a tiny Llama and 96 generated word problems (a quarter held out)."""
    rng = random.Random(0)
    problems = unique_problems(rng, 96, (1, 2, 3), ALL_PHRASINGS, set())
    lines = [f"{p.question} {p.answer}" for p in problems]
    data_path = tmp_path / "train.jsonl"
    data_path.write_text("".join(json.dumps(p.record()) + "\n" for p in problems))
    backbone = tmp_path / "backbone"
    tiny_llama().save_pretrained(backbone)
    tiny_tokenizer(lines).save_pretrained(backbone)
    data = DataSpec(source=str(data_path), prompt_field="question", response_field="answer",
                    validation_fraction=0.25, max_length=512)
    return TrialJob(name="job", kind="evaluate", backbone=BackboneSpec(source=str(backbone), name="tiny"), data=data,
                    mask=MaskSpec(blocks=(1, 2), ratio=0.1),
                    variants=[EvalVariant(name="unmasked"), EvalVariant(name="random", mask="random")],
                    cache_dir=str(tmp_path / "cache"), artifact_dir=str(tmp_path / "artifacts"))
