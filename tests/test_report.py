"""The report rebuilt from synthetic experiment directories laid out exactly as the sweep writes them."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from mft_search.cli import run
from mft_search.core import files
from mft_search.report import main, write_report
from mft_search.experiment.items import add_items, items_path
from mft_search.experiment.results import NO_OP

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = math.nan
# trial id, status, layer group, mode, ratio, threshold, lr, metric of each report
TRIALS = [
    ("t0", "completed", "20-23", "local", 0.10, NAN, 2e-5, [0.58, 0.63, 0.62]),
    ("t1", "completed", "0-3", "local", 0.05, NAN, 1e-5, [0.55, 0.60, 0.59]),
    ("t2", "completed", "8-11", "global", NAN, -0.035, 2e-5, [0.50, 0.57, 0.56]),
    ("t3", "pruned", "20-23", "local", 0.05, NAN, 1e-5, [0.45]),
    ("t4", "pruned", "0-3", "local", 0.10, NAN, 2e-5, [0.40]),
    ("t5", "failed", "8-11", "local", 0.10, NAN, 2e-5, []),  # failed before its first report
    ("t6", "no-op", "8-11", "global", NAN, -0.035, 2e-5, [0.70]),  # kept every weight: never ranked
]
STATES = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL, "no-op": TrialState.COMPLETE,
          "running": TrialState.RUNNING}
DISTRIBUTIONS = {
    "layer_group": CategoricalDistribution(["0-3", "8-11", "20-23"]),
    "mode": CategoricalDistribution(["local", "global"]),
    "ratio": FloatDistribution(0.02, 0.4, log=True),
    "threshold": FloatDistribution(-0.06, -0.01),
    "lr": FloatDistribution(1e-6, 1e-4, log=True),
}


def _rows(backbone: str, domain: str, trials: list) -> list[dict]:
    rows = []
    for trial_id, status, group, mode, ratio, threshold, lr, metrics in trials:
        if not metrics:  # the sweep records such a trial with its key and status only
            rows.append({"study": f"{backbone}/{domain}", "stage": "probe", "trial_id": trial_id, "report": 0,
                         "status": status, "error": "CUDA out of memory"})
        for report, metric in enumerate(metrics, start=1):
            rows.append({
                "study": f"{backbone}/{domain}", "backbone": backbone, "domain": domain, "stage": "probe",
                "trial_id": trial_id, "status": status, "error": NO_OP if status == "no-op" else None,
                "report": report, "step": 10 * report, "epoch": float(report), "metric": metric,
                "val_loss": 1.0 - metric, "train_loss": 1.1, "kept_fraction": 1.0 if status == "no-op" else 0.9,
                "wall_s": 5.0 * report, "mask_path": f"trials/{trial_id}/report_{report:03d}/mask.safetensors",
                "workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0.0, "seed": 0,
                "param.layer_group": group, "param.mode": mode, "param.ratio": ratio, "param.threshold": threshold,
                "param.kinds": "q,k,v,o,gate,up,down", "param.init": "normal", "param.lr": lr, "param.epochs": 2,
                "eval_accuracy": metric,
            })
    return rows


def _journal(path: Path, study_name: str, trials: list) -> None:
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    for _, status, group, mode, ratio, threshold, lr, metrics in trials:
        params = {"layer_group": group, "mode": mode, "lr": lr}
        params.update({"ratio": ratio} if mode == "local" else {"threshold": threshold})
        study.add_trial(create_trial(
            state=STATES[status], value=max(metrics) if status in ("completed", "no-op") else None, params=params,
            distributions={k: DISTRIBUTIONS[k] for k in params},
            intermediate_values={i: m for i, m in enumerate(metrics, start=1)}))


def _summary(backbone: str, domain: str, *, selected: bool = True) -> dict:
    best = {"name": "best_mft", "validation": 0.64 if selected else 0.60, "test": 0.61 if selected else 0.58,
            "trial_id": "t0", "mask": f"best/{backbone}/{domain}/mask.safetensors",
            "params": {"layer_group": "20-23", "mode": "local", "ratio": 0.1, "init": "normal", "lr": 2e-5,
                       "kinds": "q,k,v,o,gate,up,down"}}
    if not selected:
        best["selected"] = False
    verdict = ("best MFT beats the unmasked backbone on validation by +3.0 points" if selected
               else "no MFT mask beat the unmasked backbone on validation (-1.0 points)")
    return {"study": f"{backbone}/{domain}", "backbone": backbone, "domain": domain, "metric_name": "accuracy",
            "validation_benchmark": "gsm8k (validation split)", "test_benchmark": "gsm8k (test)",
            "rows": [{"name": "unmasked", "validation": 0.61, "test": 0.60},
                     {"name": "random", "validation": 0.40, "test": 0.41},
                     {"name": "l1", "validation": 0.60, "test": 0.59},
                     {"name": "continued_fft", "validation": 0.62, "test": 0.60}, best],
            "verdict": verdict}


def _experiment(root: Path, studies: dict[tuple[str, str], tuple[list, dict | None]]) -> Path:
    """An experiment directory: each study's trials in results.parquet, journal, optional summary."""
    rows = []
    for (backbone, domain), (trials, summary) in studies.items():
        directory = root / "studies" / f"{backbone}__{domain}"
        directory.mkdir(parents=True)
        _journal(directory / "optuna.journal", f"{backbone}/{domain}", trials)
        rows += _rows(backbone, domain, trials)
        if summary is not None:
            (directory / "summary.json").write_text(json.dumps(summary))
            if any(r["name"] == "best_mft" and r.get("selected", True) for r in summary["rows"]):
                mask_dir = root / "best" / backbone / domain
                mask_dir.mkdir(parents=True)
                (mask_dir / "mask.safetensors").write_bytes(b"mask")
        if summary is not None and summary.get("items", True):
            _items(root, f"{backbone}/{domain}", summary)
    if rows:
        pd.DataFrame(rows).to_parquet(root / "results.parquet", index=False)
    return root


def _items(root: Path, study: str, summary: dict) -> None:
    """Per-item test scores of 100 problems matching each row's test accuracy: the first
    round(100 * test) problems correct, so every row's gain over another is known exactly."""
    for row in (r for r in summary["rows"] if r.get("test") is not None):
        correct = round(100 * row["test"])
        add_items(items_path(root), study, "test", row["name"], 0, "fraction", "GSM8K test, 0-shot, strict",
                  [(f"p{i}", float(i < correct)) for i in range(100)])


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    return _experiment(tmp_path / "exp", {("tiny", "arithmetic"): (TRIALS, _summary("tiny", "arithmetic"))})


def test_rows_run_with_several_seeds_show_mean_and_std_beside_the_first_seeds_paired_gain(tmp_path: Path) -> None:
    summary = _summary("tiny", "arithmetic")
    best = summary["rows"][-1]
    best.update(seeds=[0, 1, 2], validation_seeds=[0.64, 0.62, 0.60], test_seeds=[0.61, 0.57, None])
    summary["rows"][1].update(seeds=[0, 1], validation_seeds=[0.40, 0.44], test_seeds=[0.41, 0.45])
    exp = _experiment(tmp_path / "exp", {("tiny", "arithmetic"): (TRIALS, summary)})
    text = write_report(exp).leaderboard.read_text()
    # mean ± sample std (ddof 1) over the seeds that have the figure; the gain pairs the first seed's items
    assert "| Best MFT | 3 | 62.0 ± 2.0 | 59.0 ± 2.8 | +1.0 [" in text
    assert "| Random mask | 2 | 42.0 ± 2.8 | 43.0 ± 2.8 | -19.0 [" in text
    assert "| Unmasked backbone | 1 | 61.0 | 60.0 | — |" in text
    assert "mean ± sample std over them; the paired gains and intervals are of their first seed's run (0)" in text


def test_every_metric_a_benchmark_reported_is_shown_beside_the_selecting_one(tmp_path: Path) -> None:
    summary = _summary("tiny", "arithmetic")
    for row, flexible in zip(summary["rows"], (0.65, 0.41, 0.62, 0.60, 0.66)):
        row["reported"] = {"test": {"accuracy_strict": row["test"], "accuracy_flexible": flexible}}
    exp = _experiment(tmp_path / "exp", {("tiny", "arithmetic"): (TRIALS, summary)})
    text = write_report(exp).leaderboard.read_text()
    assert ("The test benchmark's other metrics (first seed):\n\n| Model | accuracy_strict | accuracy_flexible |"
            in text)
    assert "| Unmasked backbone | 60.0 | 65.0 |" in text and "| Best MFT | 61.0 | 66.0 |" in text
    assert "The validation benchmark's other metrics" not in text  # none recorded for validation
    plain = write_report(_experiment(tmp_path / "plain", {("tiny", "arithmetic"): (TRIALS, _summary("tiny", "arithmetic"))}))
    assert "other metrics" not in plain.leaderboard.read_text()


def test_finished_experiment_leaderboard(finished: Path) -> None:
    files = write_report(finished)
    text = files.leaderboard.read_text()
    assert files.leaderboard == finished / "leaderboard.md"
    # Gains are paired over items.parquet's items: p is McNemar's (19 discordant, all one way: 2 * 0.5^19)
    for line in ("| Unmasked backbone | 1 | 61.0 | 60.0 | — |",
                 "| Random mask | 1 | 40.0 | 41.0 | -19.0 [",
                 "| L1 mask | 1 | 60.0 | 59.0 | -1.0 [",
                 "| Continued FFT | 1 | 62.0 | 60.0 | +0.0 [+0.0, +0.0] pts, p=1, n=100 |",
                 "| Best MFT | 1 | 64.0 | 61.0 | +1.0 ["):
        assert line in text, line
    assert "mean ± sample std" not in text  # every row ran once
    random_row = next(line for line in text.splitlines() if line.startswith("| Random mask"))
    assert "pts, p<0.001, n=100 |" in random_row
    assert "Scored as: test: GSM8K test, 0-shot, strict." in text
    assert "- Best MFT against each on test (paired over items): Continued FFT +1.0 [" in text
    assert ("**Selected configuration** (trial t0): layer group 20-23, mode local, ratio 0.1, init normal, "
            "lr 2e-05.") in text
    assert "Mask: `best/tiny/arithmetic/mask.safetensors`\n" in text
    assert "**Verdict:** best MFT beats the unmasked backbone on validation by +3.0 points" in text
    assert "| tiny/arithmetic | 3 | 2 | 1 | 1 | 0 | 0 | 7 |" in text
    top = text[text.index("top 5 trials"):].splitlines()
    ranked = [line.split(" | ")[1] for line in top if line.startswith("| ") and line[2].isdigit()]
    assert ranked == ["t0", "t1", "t2", "t3", "t4"]  # each trial by its best report; t5 never scored
    assert "| 1 | t0 | probe | completed | 63.0 | 2 | 90.0% | 20-23 | local | 0.1 | normal | 2e-05 |" in text
    assert "| t6 | probe | 8-11 | global | -0.035 | kept every weight" in text


def test_finished_experiment_plots(finished: Path) -> None:
    files = write_report(finished)
    names = {p.relative_to(finished).as_posix() for p in files.plots}
    assert names == {f"plots/tiny__arithmetic/{n}.png" for n in ("history", "heatmap", "importances")}
    for path in files.plots:
        assert path.read_bytes().startswith(PNG_MAGIC)
    text = files.leaderboard.read_text()
    # t0-t2 and the no-op t6 are COMPLETE in the journal: shown, but flagged as too few to rank
    line = text.split("Parameter importances from 4 completed trials: ")[1].splitlines()[0]
    for name in ("layer_group", "mode", "lr"):
        assert name in line
    assert "**Flagged:** rests on only 4 completed trials;" in line
    assert "![optimisation history](plots/tiny__arithmetic/history.png)" in text
    assert not list(finished.rglob("*.tmp"))


def test_half_finished_experiment_is_pending(tmp_path: Path) -> None:
    running = ("t6", "running", "20-23", "local", 0.10, NAN, 2e-5, [0.52])
    exp = _experiment(tmp_path / "exp", {("tiny", "arithmetic"): (TRIALS, _summary("tiny", "arithmetic")),
                                         ("tiny", "code"): ([*TRIALS[3:6], running], None)})
    files = write_report(exp)
    text = files.leaderboard.read_text()
    code = text[text.index("## tiny / code"):text.index("## Trials")]
    assert "Evaluation pending: 4 trials so far" in code
    assert "Parameter importances skipped: needs at least 2 completed trials, the study has 0" in code
    assert "| tiny/code | 0 | 2 | 0 | 1 | 1 | 0 | 4 |" in text
    assert "| 1 | t6 | probe | running | 52.0 | 1 | 90.0% | 20-23 | local | 0.1 | normal | 2e-05 |" in text
    assert "1 evaluated, 1 pending" in text
    assert exp / "plots" / "tiny__code" / "history.png" in files.plots


def test_experiment_before_its_first_trial_finishes(tmp_path: Path) -> None:
    (tmp_path / "exp" / "studies" / "tiny__arithmetic").mkdir(parents=True)
    files = write_report(tmp_path / "exp")
    text = files.leaderboard.read_text()
    assert "Evaluation pending: 0 trials so far" in text
    assert "No trial has a validation metric yet." in text
    assert "no optuna.journal for this study yet" in text
    assert files.plots == ()
    assert not (tmp_path / "exp" / "studies" / "tiny__arithmetic" / "optuna.journal").exists()


def test_no_winner_is_said_plainly(tmp_path: Path) -> None:
    summary = _summary("tiny", "arithmetic", selected=False)
    exp = _experiment(tmp_path / "exp", {("tiny", "arithmetic"): (TRIALS, summary)})
    text = write_report(exp).leaderboard.read_text()
    assert "**No mask's validation gain over the unmasked model was distinguishable from noise**, so no mask " \
           "was selected or exported." in text
    assert "| Best MFT (not selected) | 1 | 60.0 | 58.0 | -2.0 [" in text
    assert "Selected configuration" not in text


def test_summary_without_a_finished_trial(tmp_path: Path) -> None:
    summary = {**_summary("tiny", "arithmetic"), "rows": [],
               "verdict": "no trial finished with a validation metric; nothing to select"}
    exp = _experiment(tmp_path / "exp", {("tiny", "arithmetic"): (TRIALS[5:6], summary)})
    text = write_report(exp).leaderboard.read_text()
    assert "**Verdict:** no trial finished with a validation metric; nothing to select" in text
    assert "| Model |" not in text and "| tiny/arithmetic | 0 | 0 | 0 | 1 | 0 | 0 | 1 |" in text


def test_cli_prints_leaderboard_and_plots(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(main, [str(finished)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# MFT leaderboard: exp\n")
    assert f"leaderboard: {finished / 'leaderboard.md'}" in out
    assert str(finished / "plots" / "tiny__arithmetic" / "heatmap.png") in out


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_cli_refuses_a_directory_that_is_not_an_experiment(tmp_path: Path, make, capsys) -> None:
    assert run(main, [str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(make(tmp_path)) in err


def test_module_entry_point_exits_2_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mft_search.report", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert done.stdout == ""


def test_a_report_of_an_experiment_in_a_bucket_finds_its_studies(finished: Path, store, capsys) -> None:
    # uploaded object by object, as the sweep writes: on GCS no directory has a marker object, and
    # the report must still find studies/<study>/ (its listing once found none)
    bucket = store.new_bucket()
    exp = files.location(store.uri(bucket, "runs/exp"))
    for path in sorted(p for p in finished.rglob("*") if p.is_file()):
        (exp / path.relative_to(finished).as_posix()).write_bytes(path.read_bytes())
    assert run(main, [str(exp)]) == 0
    assert f"leaderboard: {exp / 'leaderboard.md'}" in capsys.readouterr().out
    text = (exp / "leaderboard.md").read_text()
    assert "| tiny/arithmetic | 3 | 2 | 1 | 1 | 0 | 0 | 7 |" in text and "| Best MFT | 1 | 64.0 | 61.0 | +1.0 [" in text
    assert "runs/exp/plots/tiny__arithmetic/heatmap.png" in store.keys(bucket, "runs/exp/plots/")


def test_report_modifies_no_input(finished: Path) -> None:
    inputs = sorted(finished.glob("studies/**/*"))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in [finished / "results.parquet", finished / "items.parquet", *inputs] if p.is_file()}
    write_report(finished)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before} == before
    assert sorted(finished.glob("studies/**/*")) == inputs  # no lock or temporary file left behind


def test_loss_metric_is_shown_raw_without_test(tmp_path: Path) -> None:
    summary = _summary("tiny", "chat")
    for row in summary["rows"]:
        row["validation"], row["test"] = -1.0 - row["validation"], None
    summary.update(metric_name="-val_loss", test_benchmark=None)
    trials = [(*t[:7], [-1.5 - m for m in t[7]]) for t in TRIALS]
    text = write_report(_experiment(tmp_path / "exp", {("tiny", "chat"): (trials, summary)})).leaderboard.read_text()
    assert "| Unmasked backbone | 1 | -1.610 | n/a | — |" in text
    assert "| Best MFT | 1 | -1.640 | n/a | n/a (no per-item scores) |" in text
    assert "Test: none." in text
    assert "Caveat" not in text
    summary["caveats"] = ["selection is on 10% carved out of train.source"]
    text = write_report(_experiment(tmp_path / "caveat", {("tiny", "chat"): (trials, summary)})).leaderboard.read_text()
    assert "**Caveat:** selection is on 10% carved out of train.source." in text


def test_importances_skipped_when_one_parameter_varies(tmp_path: Path) -> None:
    trials = [(f"t{i}", "completed", group, "local", 0.1, NAN, 2e-5, [0.5 + i / 100])
              for i, group in enumerate(["0-3", "8-11", "20-23"])]
    files = write_report(_experiment(tmp_path / "exp", {("tiny", "arithmetic"): (trials, None)}))
    assert "skipped: needs at least 2 varying parameters, only 1 varied (layer_group)" in files.leaderboard.read_text()
    assert not any(p.name == "importances.png" for p in files.plots)


def test_unreadable_inputs_are_one_line_errors(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = finished / "studies" / "tiny__arithmetic" / "summary.json"
    summary.write_text('{"rows": [')
    assert run(main, [str(finished)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(summary) in err
    summary.unlink()
    pd.read_parquet(finished / "results.parquet").drop(columns="stage").to_parquet(finished / "results.parquet")
    assert run(main, [str(finished)]) == 2
    assert "missing column(s) stage" in capsys.readouterr().err
