"""A trial's work on one process, without Ray: MFT, FFT, baselines, checkpoints and resume."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mft_search.core import files
from mft_search.core.evaluation.spec import EvalSpec
from mft_search.train import faults
from mft_search.train.job import run_job
from mft_search.train.loop import OutOfMemory
from mft_search.train.session import DirectorySession, LocalSession
from mft_search.train.spec import EvalVariant, TrialJob
from mft_search.core.maskfile import load_mask_file
from mft_search.core.masking import MaskSpec
from mft_search.train.step import TrainSettings

SETTINGS = TrainSettings(lr=1e-2, epochs=2, global_batch_size=16, micro_batch_size=4)


def make_job(tmp_path, backbone, data, kind="mft", name="t", **extra):
    fields = dict(name=name, kind=kind, backbone=backbone, data=data, mask=MaskSpec(blocks=(1, 2)), train=SETTINGS,
                  cache_dir=str(tmp_path / "cache"), artifact_dir=str(tmp_path / "artifacts" / name))
    fields.update(extra)
    return TrialJob(**fields)


def test_mft_reports_every_epoch_and_writes_a_mask_file_each_time(tmp_path, tiny_backbone, sft_data, problems_dir):
    evaluation = EvalSpec(evaluator="gsm8k", source=str(problems_dir / "test.jsonl"), limit=4, max_new_tokens=4,
                          num_fewshot=0)
    session = LocalSession(tmp_path / "session")
    run_job(make_job(tmp_path, tiny_backbone, sft_data, evaluation=evaluation), session)
    assert [r["epoch"] for r in session.reports] == [1.0, 2.0]
    for report in session.reports:
        assert {"train_loss", "val_loss", "metric", "eval_accuracy", "kept_fraction"} <= set(report)
        assert report["metric"] == report["eval_accuracy"]
        assert abs(report["kept_fraction"] - 0.9) < 1e-3
    masks = sorted((tmp_path / "artifacts" / "t").glob("*.mask.safetensors"))
    assert len(masks) == 2
    mask_file = load_mask_file(masks[-1])
    assert mask_file.meta["trial"] == "t" and mask_file.meta["step"] == 6
    assert len(mask_file.masks) == 14


def test_the_checkpoint_holds_scores_and_optimiser_state_never_weights(tmp_path, tiny_backbone, sft_data):
    session = LocalSession(tmp_path / "session")
    run_job(make_job(tmp_path, tiny_backbone, sft_data), session)
    checkpoint = session.latest_checkpoint()
    assert sorted(p.name for p in checkpoint.iterdir()) == ["optimizer.pt", "progress.json", "scores.safetensors"]
    scores = load_file(checkpoint / "scores.safetensors")
    assert all(t.dtype == torch.float32 for t in scores.values()) and len(scores) == 14


class _Killed(Exception):
    pass


class CrashAfterFirstReport(LocalSession):
    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        raise _Killed


def test_a_restarted_run_resumes_from_its_checkpoint_and_ends_where_an_unbroken_one_does(
        tmp_path, tiny_backbone, sft_data):
    unbroken = LocalSession(tmp_path / "unbroken")
    run_job(make_job(tmp_path, tiny_backbone, sft_data, name="a"), unbroken)

    crashed = CrashAfterFirstReport(tmp_path / "broken")
    with pytest.raises(_Killed):
        run_job(make_job(tmp_path, tiny_backbone, sft_data, name="b"), crashed)
    resumed = LocalSession(tmp_path / "broken")
    run_job(make_job(tmp_path, tiny_backbone, sft_data, name="b"), resumed)

    assert [r["step"] for r in resumed.reports] == [6]  # only the second epoch ran again
    a = load_file(unbroken.latest_checkpoint() / "scores.safetensors")
    b = load_file(resumed.latest_checkpoint() / "scores.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert resumed.reports[-1]["val_loss"] == unbroken.reports[-1]["val_loss"]


def test_fft_trains_the_weights_and_saves_loadable_checkpoints(tmp_path, tiny_backbone, sft_data):
    from transformers import AutoModelForCausalLM

    session = LocalSession(tmp_path / "session")
    run_job(make_job(tmp_path, tiny_backbone, sft_data, kind="fft", mask=None), session)
    assert session.reports[-1]["val_loss"] < session.reports[0]["val_loss"]
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "artifacts" / "t" / "report_002")
    original = AutoModelForCausalLM.from_pretrained(tiny_backbone.source)
    assert not torch.equal(saved.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight)


def test_fft_on_a_bf16_backbone_keeps_fp32_masters_and_ships_bf16_weights(tmp_path, tiny_backbone, sft_data):
    backbone = tiny_backbone.model_copy(update={"dtype": "bfloat16"})
    session = LocalSession(tmp_path / "session")
    run_job(make_job(tmp_path, backbone, sft_data, kind="fft", mask=None), session)
    masters = load_file(session.latest_checkpoint() / "weights.safetensors")
    shipped = load_file(tmp_path / "artifacts" / "t" / "report_002" / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert masters[name].dtype == torch.float32 and shipped[name].dtype == torch.bfloat16
    assert torch.equal(masters[name].bfloat16(), shipped[name])


@pytest.mark.parametrize("baseline", ["none", "random", "l1", "learned"])
def test_baselines_and_learned_masks_evaluate(tmp_path, tiny_backbone, sft_data, problems_dir, baseline):
    evaluation = EvalSpec(evaluator="gsm8k", source=str(problems_dir / "test.jsonl"), limit=2, max_new_tokens=4,
                          num_fewshot=0)
    mask_file = None
    if baseline == "learned":
        run_job(make_job(tmp_path, tiny_backbone, sft_data, train=SETTINGS.model_copy(update={"epochs": 1})),
                LocalSession(tmp_path / "mft"))
        mask_file = str(next((tmp_path / "artifacts" / "t").glob("*.mask.safetensors")))
    session = LocalSession(tmp_path / "eval")
    variant = EvalVariant(name=baseline, mask=baseline, mask_file=mask_file)
    run_job(make_job(tmp_path, tiny_backbone, None, kind="evaluate", variants=[variant], evaluation=evaluation),
            session)
    (report,) = session.reports
    assert 0.0 <= report[f"{baseline}/metric"] <= 1.0 and f"{baseline}/eval_accuracy_flexible" in report


def test_the_wanda_baseline_is_core_wanda_at_the_learned_masks_counts_calibrated_on_training_rows(
        tmp_path, tiny_backbone, sft_data):
    from mft_search.core.backbone import load_model, load_tokenizer
    from mft_search.core.calibration import calibration_batches
    from mft_search.core.data import tokenized_dataset
    from mft_search.core.maskfile import save_mask_file
    from mft_search.core.wanda import wanda_masks

    run_job(make_job(tmp_path, tiny_backbone, sft_data, train=SETTINGS.model_copy(update={"epochs": 1})),
            LocalSession(tmp_path / "mft"))
    learned = load_mask_file(next((tmp_path / "artifacts" / "t").glob("*.mask.safetensors")))
    # Wanda computed here from the core functions, on the seeded training rows, saved as a mask file
    model, tokenizer = load_model(tiny_backbone, torch.float32), load_tokenizer(tiny_backbone)
    train = tokenized_dataset(sft_data, tokenizer, tmp_path / "cache", "train")
    expected = wanda_masks(model, learned.kept, calibration_batches(train, seed=3, batch_size=SETTINGS.micro_batch_size,
                                                                    pad_token_id=tokenizer.pad_token_id or 0))
    meta = learned.meta
    direct = save_mask_file(tmp_path / "direct.mask.safetensors", expected, fingerprint=meta["fingerprint"],
                            model_type=meta["model_type"], dtype=torch.float32, mode="local", ratio=0.1)
    mask_file = str(next((tmp_path / "artifacts" / "t").glob("*.mask.safetensors")))
    variants = [EvalVariant(name="wanda", mask="wanda", mask_file=mask_file, seed=3),
                EvalVariant(name="direct", mask="learned", mask_file=str(direct)),
                EvalVariant(name="l1", mask="l1", mask_file=mask_file)]
    session = LocalSession(tmp_path / "eval")
    run_job(make_job(tmp_path, tiny_backbone, sft_data, kind="evaluate", variants=variants, calibration=sft_data),
            session)
    (report,) = session.reports
    assert report["wanda/val_loss"] == report["direct/val_loss"]
    assert report["wanda/val_loss"] != report["l1/val_loss"]  # activations change what is kept
    with pytest.raises(ValueError, match="calibration data"):
        run_job(make_job(tmp_path, tiny_backbone, sft_data, kind="evaluate", variants=variants[:1]),
                LocalSession(tmp_path / "refused"))


def test_the_revert_baseline_puts_the_pretrained_weights_where_the_learned_mask_removes(
        tmp_path, tiny_backbone, sft_data):
    from mft_search.core.backbone import BackboneSpec, load_model, load_tokenizer
    from mft_search.core.revert import revert_to_pretrained
    from mft_search.demo.tiny import tiny_llama

    run_job(make_job(tmp_path, tiny_backbone, sft_data, train=SETTINGS.model_copy(update={"epochs": 1})),
            LocalSession(tmp_path / "mft"))
    mask_file = str(next((tmp_path / "artifacts" / "t").glob("*.mask.safetensors")))
    # "Pretrained": another tiny Llama of the same shape; the reverted model built by hand from the core function
    pretrained_dir = tmp_path / "pretrained"
    tiny_llama(seed=1).save_pretrained(pretrained_dir)
    load_tokenizer(tiny_backbone).save_pretrained(pretrained_dir)
    pretrained = BackboneSpec(source=str(pretrained_dir))
    model = load_model(tiny_backbone, torch.float32)
    revert_to_pretrained(model, load_model(pretrained, torch.float32), load_mask_file(mask_file).masks)
    model.save_pretrained(tmp_path / "reverted")
    variants = [EvalVariant(name="revert", mask="revert", mask_file=mask_file, pretrained=pretrained),
                EvalVariant(name="direct", weights=str(tmp_path / "reverted")),
                EvalVariant(name="learned", mask="learned", mask_file=mask_file)]
    session = LocalSession(tmp_path / "eval")
    run_job(make_job(tmp_path, tiny_backbone, sft_data, kind="evaluate", variants=variants), session)
    (report,) = session.reports
    assert report["revert/val_loss"] == report["direct/val_loss"]
    assert report["revert/val_loss"] != report["learned/val_loss"]  # pretrained weights, not zeros
    with pytest.raises(ValueError, match="pretrained backbone"):
        run_job(make_job(tmp_path, tiny_backbone, sft_data, kind="evaluate",
                         variants=[variants[0].model_copy(update={"pretrained": None})]), LocalSession(tmp_path / "no"))


def test_one_evaluation_job_scores_several_variants_including_other_weights(
        tmp_path, tiny_backbone, sft_data, problems_dir):
    evaluation = EvalSpec(evaluator="gsm8k", source=str(problems_dir / "test.jsonl"), limit=2, max_new_tokens=4,
                          num_fewshot=0)
    run_job(make_job(tmp_path, tiny_backbone, sft_data, kind="fft", mask=None,
                     train=SETTINGS.model_copy(update={"epochs": 1})), LocalSession(tmp_path / "fft"))
    variants = [EvalVariant(name="unmasked"), EvalVariant(name="random", mask="random"),
                EvalVariant(name="continued", weights=str(tmp_path / "artifacts" / "t" / "report_001"))]
    session = LocalSession(tmp_path / "eval")
    run_job(make_job(tmp_path, tiny_backbone, None, kind="evaluate", variants=variants, evaluation=evaluation),
            session)
    (report,) = session.reports
    assert {"unmasked/metric", "random/metric", "continued/metric"} <= set(report)


def test_a_trial_whose_mask_keeps_every_weight_ends_at_once_as_a_no_op(tmp_path, tiny_backbone, sft_data):
    from mft_search.experiment.results import trial_status

    # Magnitude init puts every score at |W| >= 0, above the negative threshold: nothing is masked.
    spec = MaskSpec(blocks=(1, 2), mode="global", threshold=-0.035, init="magnitude")
    session = LocalSession(tmp_path / "session")
    run_job(make_job(tmp_path, tiny_backbone, sft_data, mask=spec), session)
    (report,) = session.reports  # two epochs planned; it stopped at its first evaluation point
    assert report["kept_fraction"] == 1.0 and report["no_op"] == 1 and report["step"] < report["total_steps"]
    assert trial_status(report, errored=False) == "no-op"
    normal = LocalSession(tmp_path / "normal")
    run_job(make_job(tmp_path, tiny_backbone, sft_data, name="n", mask=MaskSpec(blocks=(1, 2), mode="global")), normal)
    assert len(normal.reports) == 2 and all(r["no_op"] == 0 and r["kept_fraction"] < 1 for r in normal.reports)


def test_the_random_baseline_follows_the_seed_it_is_given(tmp_path, tiny_backbone, sft_data):
    variants = [EvalVariant(name=f"random{i}", mask="random", seed=seed) for i, seed in enumerate((5, 5, 6))]
    session = LocalSession(tmp_path / "eval")
    run_job(make_job(tmp_path, tiny_backbone, sft_data, kind="evaluate", variants=variants), session)
    (report,) = session.reports
    losses = [report[f"{v.name}/val_loss"] for v in variants]
    assert losses[0] == losses[1] and losses[0] != losses[2]


@pytest.mark.parametrize("settings", [SETTINGS, SETTINGS.model_copy(update={"lr": 1e30, "max_grad_norm": None})],
                         ids=["finished", "failed"])
def test_no_reference_to_a_trials_model_outlives_it(tmp_path, tiny_backbone, sft_data, monkeypatch, settings):
    """A reused trial actor must not carry the last trial's model (or, after FSDP2, its full weights)."""
    import gc
    import weakref

    from mft_search.train import job as job_module

    loaded = []
    original = job_module.load_model

    def tracked(*args, **kwargs):
        model = original(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(job_module, "load_model", tracked)
    try:
        run_job(make_job(tmp_path, tiny_backbone, sft_data, train=settings), LocalSession(tmp_path / "s"))
    except FloatingPointError:
        pass
    gc.collect()
    assert loaded and all(ref() is None for ref in loaded)


def test_a_masked_module_holds_no_reference_to_the_module_it_replaced(tiny_backbone):
    import gc
    import weakref

    from mft_search.core.backbone import load_model
    from mft_search.core.masking import attach_masks, detach_masks, spec_module_names

    model, spec = load_model(tiny_backbone, torch.float32), MaskSpec(blocks=(1,))
    originals = [weakref.ref(model.get_submodule(n)) for n in spec_module_names(model, spec)]
    attach_masks(model, spec)
    gc.collect()
    assert all(ref() is None for ref in originals)
    weight = model.model.layers[1].mlp.up_proj.weight
    detach_masks(model)
    assert type(model.model.layers[1].mlp.up_proj).__name__ == "Linear"
    assert model.model.layers[1].mlp.up_proj.weight is weight


def test_a_loss_that_becomes_nan_fails_the_trial_with_its_reason(tmp_path, tiny_backbone, sft_data):
    explode = SETTINGS.model_copy(update={"lr": 1e30, "max_grad_norm": None})  # activations overflow
    with pytest.raises(FloatingPointError, match="training loss became nan at step"):
        run_job(make_job(tmp_path, tiny_backbone, sft_data, kind="fft", mask=None, train=explode),
                LocalSession(tmp_path / "session"))


@pytest.mark.parametrize("fault, error, reason", [
    ({"nan_at_step": 2}, FloatingPointError, "training loss became nan at step 2"),
    ({"oom_at_step": 2}, OutOfMemory, "out of memory at step 2: lower train.micro_batch_size"),
])
def test_an_mft_trial_that_breaks_mid_training_fails_with_its_reason(tmp_path, tiny_backbone, sft_data, fault,
                                                                      error, reason):
    # The hooks really break the step: a NaN multiplied into the forward pass, a petabyte allocation.
    session = faults.inject(LocalSession(tmp_path / "session"), fault)
    with pytest.raises(error, match=reason):
        run_job(make_job(tmp_path, tiny_backbone, sft_data), session)


def test_faults_are_aimed_at_trials_by_their_parameters(monkeypatch):
    monkeypatch.setenv(faults.ENV, '[{"match": {"ratio": 0.2, "mode": "local"}, "oom_at_step": 1}]')
    planned = faults.from_environment()
    assert faults.for_params(planned, {"ratio": 0.2, "mode": "local", "init": "normal"}) == {"oom_at_step": 1}
    assert faults.for_params(planned, {"ratio": 0.1, "mode": "local"}) is None
    monkeypatch.delenv(faults.ENV)
    assert faults.from_environment() == []


def test_a_directory_session_keeps_reports_and_one_whole_checkpoint_across_a_restart(tmp_path, tiny_backbone,
                                                                                      sft_data):
    # A one-worker job run as a Ray task reports here; a retried task must find the earlier reports
    # (the continued-FFT control picks its best one) and resume from the last complete checkpoint.
    class CrashAfterFirst(DirectorySession):
        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            raise _Killed

    directory = tmp_path / "run"
    with pytest.raises(_Killed):
        run_job(make_job(tmp_path, tiny_backbone, sft_data), CrashAfterFirst(directory))
    (directory / "checkpoint_000002").mkdir()  # as a kill mid-upload leaves one: `latest` does not name it
    resumed = DirectorySession(directory)
    assert resumed.latest_checkpoint().name == "checkpoint_000001"
    run_job(make_job(tmp_path, tiny_backbone, sft_data), resumed)
    assert [r["report"] for r in DirectorySession(directory).history()] == [1, 2]
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint_000002", "latest", "reports.jsonl"]
    unbroken = LocalSession(tmp_path / "unbroken")
    run_job(make_job(tmp_path, tiny_backbone, sft_data, name="u"), unbroken)
    assert resumed.reports[-1]["val_loss"] == unbroken.reports[-1]["val_loss"]


@pytest.mark.parametrize("kill", ["removing the older checkpoint", "storing the checkpoint", "naming the checkpoint",
                                  "writing the report"])
def test_a_directory_session_killed_inside_a_report_loses_no_point(tmp_path, monkeypatch, kill):
    # A job resumes from the latest checkpoint and goes on from its report number: a kill inside
    # report() must never leave that checkpoint ahead of the reports on record (a point, an FFT
    # epoch, would be lost), nor a point recorded twice when the job reports it again.
    directory = tmp_path / "run"
    session = DirectorySession(directory)
    _point(session, 1)
    with monkeypatch.context() as patch, pytest.raises(_Killed):
        _kill_while(patch, kill)
        _point(session, 2)
    resumed = DirectorySession(directory)
    done = json.loads((resumed.latest_checkpoint() / "progress.json").read_text())["report"]
    for number in range(done + 1, 4):
        _point(resumed, number)
    assert [r["report"] for r in resumed.reports] == [1, 2, 3]
    assert [r["report"] for r in DirectorySession(directory).history()] == [1, 2, 3]
    # checkpoints are staged in the run's directory (stored by a rename); a killed one's staging
    # is removed by the next, never left to pile up
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint_000003", "latest", "reports.jsonl"]


def test_a_directory_session_in_a_bucket_keeps_one_whole_checkpoint_and_resumes_from_it(store):
    # On a bucket each checkpoint is uploaded file by file: the older ones must still be found (a
    # GCS listing shows no directory without a marker object) and removed, and the latest downloaded
    bucket = store.new_bucket()
    session = DirectorySession(store.uri(bucket, "run"))
    for number in (1, 2):
        _point(session, number)
    resumed = DirectorySession(store.uri(bucket, "run"))
    assert json.loads((resumed.latest_checkpoint() / "progress.json").read_text())["report"] == 2
    _point(resumed, 3)
    objects = [k for k in store.keys(bucket) if not k.endswith("/")]  # pyarrow's S3 delete_dir leaves a parent marker
    assert objects == ["run/checkpoint_000003/progress.json", "run/latest", "run/reports.jsonl"]
    assert [r["report"] for r in DirectorySession(store.uri(bucket, "run")).history()] == [1, 2, 3]


def _point(session: DirectorySession, number: int) -> None:
    """An evaluation point as a job writes it: a checkpoint that knows its report number, then the report."""
    checkpoint = session.new_checkpoint_dir()
    checkpoint.mkdir(exist_ok=True)  # as save_state does: a session may hand over an empty directory
    (checkpoint / "progress.json").write_text(json.dumps({"report": number}))
    session.report({"report": number, "metric": float(number)}, checkpoint)


def _kill_while(patch: pytest.MonkeyPatch, step: str) -> None:
    """Make `step` of DirectorySession.report raise _Killed, as a SIGKILL there would stop it."""
    def killed(*args, **kwargs):
        raise _Killed

    if step == "removing the older checkpoint":
        patch.setattr(files.Location, "rmtree", killed)
    elif step == "storing the checkpoint":  # the staged directory's rename (one file's upload on a bucket)
        patch.setattr(Path, "rename", killed)
    else:  # the report's whole-file write (the first), or `latest` naming the new checkpoint (the second)
        written, write = [], files.Location.write_text

        def nth_killed(self, text):
            written.append(self.name)
            if len(written) == (1 if step == "writing the report" else 2):
                raise _Killed
            return write(self, text)

        patch.setattr(files.Location, "write_text", nth_killed)


def test_a_lora_job_trains_adapters_only_and_writes_a_plain_merged_checkpoint_each_epoch(
        tmp_path, tiny_backbone, sft_data):
    from pathlib import Path

    from mft_search.core.backbone import BackboneSpec, load_model
    from mft_search.train.spec import LoraAdapters, report_artifact

    session = LocalSession(tmp_path / "lora")
    job = make_job(tmp_path, tiny_backbone, sft_data, kind="lora", mask=None, lora=LoraAdapters(rank=4, alpha=8),
                   train=SETTINGS.model_copy(update={"lr": 0.01}))
    run_job(job, session)
    assert [r["epoch"] for r in session.reports] == [1.0, 2.0]
    assert all(r["val_loss"] > 0 for r in session.reports)
    base = load_model(tiny_backbone, torch.float32)
    merged = [load_model(BackboneSpec(source=str(report_artifact(Path(job.artifact_dir), r))), torch.float32)
              for r in (1, 2)]
    # A plain Llama (no adapter modules), its non-adapted weights (embeddings, norms) untouched,
    # its adapted projections changed, and a different model at each epoch
    names = {n for n, _ in merged[1].named_parameters()}
    assert names == {n for n, _ in base.named_parameters()} and not any("lora" in n for n in names)
    assert torch.equal(merged[1].model.embed_tokens.weight, base.model.embed_tokens.weight)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[1].get_parameter(q), base.get_parameter(q))
    assert not torch.equal(merged[1].get_parameter(q), merged[0].get_parameter(q))
    # Its checkpoint holds the adapters only: the frozen base is reloaded on resume
    state = load_file(session.latest_checkpoint() / "weights.safetensors")
    assert state and all("lora_" in n for n in state)


def test_early_reports_score_their_seeded_subset_and_the_last_report_every_item(tmp_path, tiny_backbone, sft_data,
                                                                                 problems_dir):
    # rung-wise validation: report 1 scores a quarter of the 8 problems; report 2, the trial's
    # last, scores all of them although the spec names a subset for it too
    evaluation = EvalSpec(evaluator="gsm8k", source=str(problems_dir / "test.jsonl"), limit=8, max_new_tokens=4,
                          num_fewshot=0)
    session = LocalSession(tmp_path / "session")
    run_job(make_job(tmp_path, tiny_backbone, sft_data, evaluation=evaluation, validation_subsets={1: 0.25, 2: 0.5}),
            session)
    assert [(r["validation_items"], r["validation_subset"]) for r in session.reports] == [(2, 1), (8, 0)]
