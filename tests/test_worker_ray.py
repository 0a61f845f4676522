"""The Ray Train worker for real: 2 CPU workers on gloo, DDP and FSDP2, and a worker SIGKILLed
mid-trial that resumes from its checkpoint; a one-worker job run as a plain Ray task (fit_job),
killed and resumed the same way. Slow (a Ray Train run costs ~20 s here)."""

from pathlib import Path

import pytest

from mft_search.train.spec import TrialJob
from mft_search.core.maskfile import load_mask_file
from mft_search.core.masking import MaskSpec
from mft_search.train.step import TrainSettings
from mft_search.core.files import location
from mft_search.train.ray_train import build_trainer, fit_job, fit_jobs
from mft_search.train.spec import Resources

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

SETTINGS = TrainSettings(lr=1e-2, epochs=2, global_batch_size=16, micro_batch_size=4)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def mft_job(tmp_path, backbone, data, name, strategy="ddp"):
    return TrialJob(name=name, kind="mft", backbone=backbone, data=data, mask=MaskSpec(blocks=(1, 2)), train=SETTINGS,
                   strategy=strategy, cache_dir=str(tmp_path / "cache"), artifact_dir=str(tmp_path / name))


def final_mask(tmp_path, name):
    return load_mask_file(sorted((tmp_path / name).glob("*.mask.safetensors"))[-1])


def fit(tmp_path, backbone, data, name, workers, strategy="ddp", **kwargs):
    job = mft_job(tmp_path, backbone, data, name, strategy)
    result = build_trainer(job, Resources(workers_per_trial=workers), storage=location(tmp_path / "ray"), **kwargs).fit()
    return result, final_mask(tmp_path, name)


def agreement(a, b) -> float:
    same = sum(int((a.masks[n] == b.masks[n]).sum()) for n in a.masks)
    return same / sum(m.numel() for m in a.masks.values())


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, tiny_backbone, sft_data):
    return fit(tmp_path_factory.mktemp("one"), tiny_backbone, sft_data, "one", 1)


def test_two_ddp_workers_report_metrics_a_checkpoint_and_learn_the_one_worker_mask(
        tmp_path, tiny_backbone, sft_data, one_worker):
    result, mask = fit(tmp_path, tiny_backbone, sft_data, "two", 2)
    assert result.error is None and result.checkpoint is not None
    assert result.metrics["step"] == 6 and {"train_loss", "val_loss", "kept_fraction"} <= set(result.metrics)
    single_result, single_mask = one_worker
    assert result.metrics["train_loss"] == pytest.approx(single_result.metrics["train_loss"], rel=1e-5)
    assert agreement(mask, single_mask) > 0.9999


def test_fsdp2_shards_weights_and_scores_on_cpu_and_learns_the_same_mask(tmp_path, tiny_backbone, sft_data, one_worker):
    result, mask = fit(tmp_path, tiny_backbone, sft_data, "fsdp", 2, strategy="fsdp")
    assert result.error is None and result.metrics["step"] == 6
    assert agreement(mask, one_worker[1]) > 0.9999


def test_a_sigkilled_worker_restarts_and_resumes_from_its_last_checkpoint(tmp_path, tiny_backbone, sft_data,
                                                                          one_worker):
    marker = tmp_path / "killed"
    result, mask = fit(tmp_path, tiny_backbone, sft_data, "killed", 2, max_failures=1,
                       fault={"kill_after_reports": 1, "marker": str(marker)})
    assert marker.exists(), "the fault was never injected"
    assert result.error is None and result.metrics["step"] == 6
    # The second epoch started from the saved scores and optimiser state: same end as unbroken.
    assert result.metrics["train_loss"] == pytest.approx(one_worker[0].metrics["train_loss"], rel=1e-5)
    assert agreement(mask, one_worker[1]) > 0.9999


def test_a_one_worker_job_outside_tune_runs_as_a_task_killed_and_resumed_like_a_train_run(
        tmp_path, tiny_backbone, sft_data, one_worker):
    marker = tmp_path / "killed"
    job = mft_job(tmp_path, tiny_backbone, sft_data, "task")
    result = fit_job(job, Resources(workers_per_trial=1), storage=location(tmp_path / "ray"), max_failures=1,
                     fault={"kill_after_reports": 1, "marker": str(marker)})
    assert marker.exists(), "the fault was never injected"
    # The retried task resumed from the first report's checkpoint; both reports are on record
    assert result.history["report"].tolist() == [1, 2] and result.metrics["step"] == 6
    assert result.metrics["train_loss"] == pytest.approx(one_worker[0].metrics["train_loss"], rel=1e-5)
    assert agreement(final_mask(tmp_path, "task"), one_worker[1]) > 0.9999
    with result.checkpoint.as_directory() as checkpoint:
        assert sorted(p.name for p in Path(checkpoint).iterdir()) == [
            "optimizer.pt", "progress.json", "scores.safetensors"]


def test_a_failing_one_worker_job_raises_its_own_error_after_its_retries(tmp_path, tiny_backbone, sft_data):
    job = mft_job(tmp_path, tiny_backbone, sft_data, "nan")
    with pytest.raises(FloatingPointError, match="training loss became nan"):
        fit_job(job, Resources(workers_per_trial=1), storage=location(tmp_path / "ray"), max_failures=0,
                fault={"nan_at_step": 1})


@ray.remote(num_cpus=1)
def _warm_worker() -> None:
    import time

    import mft_search.train.job  # noqa: F401  (what a job imports: torch, transformers)

    time.sleep(1)  # held, so that the two calls take two worker processes


def test_one_worker_jobs_fitted_together_run_side_by_side_and_come_back_in_order(tmp_path, tiny_backbone, sft_data):
    ray.get([_warm_worker.remote() for _ in range(2)])  # both jobs start at once, not one a worker's start-up later
    names = ("first", "second")
    jobs = [mft_job(tmp_path, tiny_backbone, sft_data, name).model_copy(
        update={"train": SETTINGS.model_copy(update={"epochs": 8})}) for name in names]
    results = fit_jobs(jobs, Resources(workers_per_trial=1), storage=location(tmp_path / "ray"))
    assert [r.metrics["step"] for r in results] == [24, 24] and all((tmp_path / "ray" / n).is_dir() for n in names)
    assert results[0].metrics["train_loss"] == pytest.approx(results[1].metrics["train_loss"], rel=1e-5)
    # Side by side on the 2 CPUs: each job wrote its first report before the other wrote its last
    # (in turn, the second would start after the first's last)
    written = {name: sorted(p.stat().st_mtime for p in (tmp_path / name).glob("report_*.mask.safetensors"))
               for name in names}
    assert written["first"][0] < written["second"][-1] and written["second"][0] < written["first"][-1]
