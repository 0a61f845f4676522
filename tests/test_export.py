"""`python -m mft_search.export`: a finished synthetic experiment (laid out as the sweep writes it,
test_report's helpers) exported as a Hugging Face Hub folder, and every refusal in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from test_report import TRIALS, _experiment, _summary

from mft_search.cli import run
from mft_search.core.backbone import BackboneSpec
from mft_search.core.evaluation.spec import EvalSpec
from mft_search.core.maskfile import load_mask_file, save_mask_file
from mft_search.export import main
from mft_search.report import write_report

HUB_SOURCE = "HuggingFaceTB/SmolLM2-135M"
BLOCKS = (20, 21, 22, 23)
SHAPE = (8, 16)  # each module keeps 115 of its 128 weights: round(0.9 * 128)
FILES = {"README.md", "mask.safetensors", "mask.json", "config.yaml"}


def _export_best(exp: Path, backbone: str, domain: str, source: str) -> None:
    """best/<backbone>/<domain>/ as tune/evaluate.py's export_best writes it: a real mask file,
    its metadata as mask.json and the selected trial's config."""
    out = exp / "best" / backbone / domain
    masks = {}
    for block in BLOCKS:
        mask = torch.ones(SHAPE, dtype=torch.bool)
        mask.view(-1)[torch.randperm(mask.numel(), generator=torch.Generator().manual_seed(block))[:13]] = False
        masks[f"model.layers.{block}.mlp.up_proj"] = mask
    save_mask_file(out / "mask.safetensors", masks, fingerprint="ab" * 32, model_type="llama",
                   dtype=torch.bfloat16, mode="local", ratio=0.1, extra={"trial": "t0", "step": 20})
    (out / "mask.json").write_text(json.dumps(load_mask_file(out / "mask.safetensors").meta, indent=2))
    params = {"layer_group": "20-23", "mode": "local", "ratio": 0.1, "init": "normal", "lr": 2e-5, "kinds": "up"}
    domain_block = {"name": domain, "train": {"source": "openai/gsm8k", "subset": "main", "split": "train"},
                    "test": EvalSpec(evaluator="gsm8k").model_dump()}
    config = {"trial_id": "t0", "stage": "probe", "validation_metric": 0.63, "params": params,
              "mask": {"blocks": list(BLOCKS), "kinds": ["up"], "seed": 0, "mode": "local", "ratio": 0.1,
                       "init": "normal"},
              "train": {"lr": 2e-5, "epochs": 2}, "backbone": BackboneSpec(source=source, name=backbone).model_dump(),
              "sweep": {"name": "exp", "seed": 0, "domains": [domain_block]}}
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _finished(root: Path, summaries: dict[tuple[str, str], dict], source: str = HUB_SOURCE) -> Path:
    exp = _experiment(root, {key: (TRIALS, summary) for key, summary in summaries.items()})
    for (backbone, domain), summary in summaries.items():
        if all(r.get("selected", True) for r in summary["rows"]):
            _export_best(exp, backbone, domain, source)
    return exp


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    return _finished(tmp_path / "exp", {("tiny", "arithmetic"): _summary("tiny", "arithmetic")})


def _export(*args: str) -> int:
    return run(main, [str(a) for a in args])


def test_exports_the_four_files_and_the_mask_byte_for_byte(exp: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hub"
    assert _export(exp, "--out", out) == 0
    assert {p.name for p in out.iterdir()} == FILES
    best = exp / "best" / "tiny" / "arithmetic"
    for name in ("mask.safetensors", "mask.json", "config.yaml"):
        assert (out / name).read_bytes() == (best / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "hub"]  # no staging directory left beside it
    printed = capsys.readouterr().out
    assert f"tiny/arithmetic: {out} (README.md, mask.safetensors, mask.json, config.yaml)" in printed
    assert f"hf upload <user>/<repo> {out} ." in printed


def test_the_front_matter_is_the_hubs_model_card_format(exp: Path, tmp_path: Path) -> None:
    assert _export(exp, "--out", tmp_path / "hub") == 0
    text = (tmp_path / "hub" / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["base_model"] == HUB_SOURCE
    assert front["tags"] == ["mft", "mask-fine-tuning", "pruning", "arithmetic"]
    assert front["metrics"] == ["accuracy"] and front["datasets"] == ["openai/gsm8k"]
    assert "license" not in front  # the sweep records none, and none is invented
    card = ModelCard.load(tmp_path / "hub" / "README.md")  # the Hub's own parser, model-index included
    (result,) = card.data.eval_results
    assert (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split) == (
        "text-generation", "openai/gsm8k", "main", "test")
    assert (result.metric_type, result.metric_value, result.metric_name) == ("accuracy", 61.0, "accuracy (%)")
    assert card.data.model_name == "tiny-mft-arithmetic"


def test_the_body_holds_table1_with_intervals_the_settings_and_the_selection(exp: Path, tmp_path: Path) -> None:
    assert _export(exp, "--out", tmp_path / "hub") == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    leaderboard = write_report(exp).leaderboard.read_text()
    # Table 1 is the leaderboard's own block: metric, rows, paired intervals, settings, best against each
    table1 = leaderboard[leaderboard.index("Metric: "):leaderboard.index("**Selected configuration**")]
    assert table1.count("\n") > 10 and table1 in card
    assert "| Best MFT | 1 | 64.0 | 61.0 | +1.0 [" in card and "pts, p=" in card
    assert "Scored as: test: GSM8K test, 0-shot, strict." in card
    assert "Metric: accuracy (%), higher is better. Validation: gsm8k (validation split). Test: gsm8k (test)." in card
    assert "- Blocks 20, 21, 22, 23; module kinds up: 4 modules." in card
    assert "- Keeps 460 of the 512 weights of those modules (89.84%)." in card
    assert "- Mode local, ratio 0.1: each module keeps round((1 - 0.1) x numel) of its weights" in card
    assert "fingerprint `abababababababab…`" in card
    assert ("Trial t0 of the probe stage, the best on validation of the 7 trials of its stage (7 in the study): "
            "layer group 20-23, mode local, ratio 0.1, init normal, lr 2e-05.") in card
    assert "**Verdict:** best MFT beats the unmasked backbone on validation by +3.0 points" in card
    assert f"python -m mft_search.apply --backbone {HUB_SOURCE} --mask mask.safetensors --out masked/\n" in card
    assert "- License: none recorded" in card


def test_seeds_caveats_and_a_given_license(tmp_path: Path) -> None:
    summary = _summary("tiny", "arithmetic")
    summary["rows"][-1].update(seeds=[0, 1, 2], validation_seeds=[0.64, 0.62, 0.60], test_seeds=[0.61, 0.57, 0.59])
    summary.update(caveats=["selection is on 10% carved out of train.source"], skipped=["revert: no pretrained model"])
    exp = _finished(tmp_path / "exp", {("tiny", "arithmetic"): summary})
    assert _export(exp, "--out", tmp_path / "hub", "--license", "apache-2.0") == 0
    text = (tmp_path / "hub" / "README.md").read_text()
    card = ModelCard(text)
    assert card.data.license == "apache-2.0" and "- License: `apache-2.0`." in text
    assert card.data.eval_results[0].metric_value == 59.0
    assert card.data.eval_results[0].metric_name == "accuracy (%), mean over seeds"
    assert "| Best MFT | 3 | 62.0 ± 2.0 | 59.0 ± 2.0 | +1.0 [" in text
    assert "**Caveat:** selection is on 10% carved out of train.source." in text
    assert "**Skipped:** revert: no pretrained model." in text


def test_a_local_backbone_is_named_in_the_body_not_as_base_model(tmp_path: Path) -> None:
    local = tmp_path / "checkpoints" / "tiny"
    local.mkdir(parents=True)
    exp = _finished(tmp_path / "exp", {("tiny", "arithmetic"): _summary("tiny", "arithmetic")}, source=str(local))
    assert _export(exp, "--out", tmp_path / "hub") == 0
    text = (tmp_path / "hub" / "README.md").read_text()
    assert ModelCard(text).data.base_model is None
    assert f"`{local}`, a local model: the front matter names no `base_model`" in text
    assert f"--backbone {local} --mask mask.safetensors" in text


def test_several_studies_go_to_backbone_domain_folders_and_unselected_ones_are_skipped(tmp_path: Path, capsys) -> None:
    exp = _finished(tmp_path / "exp", {("tiny", "arithmetic"): _summary("tiny", "arithmetic"),
                                       ("tiny", "code"): _summary("tiny", "code"),
                                       ("tiny", "chat"): _summary("tiny", "chat", selected=False)})
    out = tmp_path / "hub"
    assert _export(exp, "--out", out) == 0
    assert {p.relative_to(out).as_posix() for p in out.glob("*/*")} == {"tiny/arithmetic", "tiny/code"}
    assert {p.name for p in (out / "tiny" / "code").iterdir()} == FILES
    assert "# tiny-mft-code" in (out / "tiny" / "code" / "README.md").read_text()
    printed = capsys.readouterr().out
    assert "skipped: no mask was selected for tiny/chat: no MFT mask beat the unmasked backbone" in printed
    assert _export(exp, "--out", tmp_path / "one", "--domain", "code") == 0  # one study: its files at the top
    assert {p.name for p in (tmp_path / "one").iterdir()} == FILES


def test_force_replaces_a_non_empty_folder(exp: Path, tmp_path: Path) -> None:
    out = tmp_path / "hub"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert _export(exp, "--out", out, "--force") == 0
    assert {p.name for p in out.iterdir()} == FILES


REFUSALS = {  # name: (how to break it, extra arguments, what the one line must say)
    "not an experiment": (lambda exp: exp / "nope", [], "no such directory"),
    "unknown backbone": (None, ["--backbone", "tiny2"], "--backbone: no study has 'tiny2' (did you mean 'tiny'?); "
                                                        "choose one of tiny"),
    "unknown domain": (None, ["--domain", "math"], "--domain: no study has 'math'; choose one of arithmetic"),
    "no selection": ("unselected", [], "no mask was selected for tiny/arithmetic: no MFT mask beat the unmasked "
                                       "backbone on validation (-1.0 points)"),
    "damaged mask": ("damaged", [], "mask.safetensors"),
    "mask.json not the file's": ("meta", [], "mask.json: differs from mask.safetensors's own metadata"),
    "out holds the experiment": ("parent", [], "holds the experiment"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_each_refusal_is_one_line_with_exit_2_and_leaves_no_folder(case: str, tmp_path: Path, capsys) -> None:
    how, extra, message = REFUSALS[case]
    summary = _summary("tiny", "arithmetic", selected=how != "unselected")
    exp = _finished(tmp_path / "exp", {("tiny", "arithmetic"): summary})
    best = exp / "best" / "tiny" / "arithmetic"
    out = tmp_path / "hub"
    if how == "damaged":
        (best / "mask.safetensors").write_bytes((best / "mask.safetensors").read_bytes()[:-3])
    if how == "meta":
        (best / "mask.json").write_text(json.dumps({**json.loads((best / "mask.json").read_text()), "mode": "global"}))
    if how == "parent":
        out = tmp_path
    target = how(exp) if callable(how) else exp
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _export(target, "--out", out, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder, no staging directory


def test_a_non_empty_folder_is_refused_and_left_as_it_was(exp: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hub"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert _export(exp, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty; name a new folder, or pass --force" in err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_module_entry_point_exits_2_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mft_search.export", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "hub")], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "hub").exists()
