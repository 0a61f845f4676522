"""README.md of an exported mask: a Hugging Face Hub model card, YAML front matter and body.

huggingface_hub writes the front matter (ModelCardData) and parses the whole card back
(ModelCard), so its YAML is the Hub's own format, not a hand-written imitation. The body prints
the leaderboard's Table 1 (report.leaderboard.table1), so the card and the leaderboard agree.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from mft_search.core.evaluation import get_evaluator
from mft_search.core.evaluation.records import BENCHMARK_DATA, is_local
from mft_search.experiment.layout import BEST_CONFIG, BEST_MASK, BEST_META
from mft_search.report.experiment import StudyRecord
from mft_search.report.leaderboard import selected_config, table1
from mft_search.report.selected import SelectedMask

TAGS = ("mft", "mask-fine-tuning", "pruning")
TASK = "text-generation"
MODES = {  # how each mode cuts, from the mask file's own ratio or threshold
    "local": "ratio {ratio}: each module keeps round((1 - {ratio}) x numel) of its weights, those of largest |score|",
    "global": "threshold {threshold}: every weight whose score reaches it is kept, so the kept share is learned",
}


def model_card(study: StudyRecord, selected: SelectedMask, license: str | None = None) -> str:
    """The card of `study`'s selected mask: front matter (base_model where the backbone is a Hub id,
    license only when given, tags, metrics, model-index with the test result) and a body saying what
    the mask is, how it was selected, Table 1 and how to apply it."""
    body = [*_intro(study, selected, license), *_mask(selected), *_selection(study, selected),
            "## Results", "", "Best MFT is this mask.", "", *table1(study, study.metric_is_fraction()),
            *_apply(selected)]
    text = "\n".join(body).rstrip() + "\n"
    # Parsed back by the Hub's own reader: a field it would refuse fails here, not at upload.
    return str(ModelCard(f"---\n{_front_matter(study, selected, license).to_yaml()}\n---\n\n{text}"))


def hub_id(source: str | None) -> str | None:
    """`source` where it names a Hub repository, None where it is a local path, a .gguf file or a pkg: path."""
    if not source or source.startswith("pkg:") or source.endswith(".gguf") or is_local(source):
        return None
    try:
        validate_repo_id(source)
    except HFValidationError:
        return None
    return source


def _front_matter(study: StudyRecord, selected: SelectedMask, license: str | None) -> ModelCardData:
    dataset = hub_id((selected.domain(study.domain).get("train") or {}).get("source"))
    results = _eval_results(study, selected)
    metric = results[0].metric_type if results else study.summary.metric_name
    return ModelCardData(base_model=hub_id(selected.backbone.source), license=license,
                         tags=[*TAGS, study.domain], metrics=[metric],
                         datasets=[dataset] if dataset else None,
                         model_name=_title(study) if results else None, eval_results=results or None)


def _eval_results(study: StudyRecord, selected: SelectedMask) -> list[EvalResult]:
    """The mask's test figure (the mean over seeds where several ran), as the Hub's model-index lists it."""
    best, test = study.summary.row("best_mft"), selected.domain(study.domain).get("test")
    spread = best.spread("test")
    value = spread[0] if spread else best.test
    if value is None or not test:
        return []
    # The summary names validation's metric, which is a loss where validation is; test's is the benchmark's.
    metric, percent = get_evaluator(test["evaluator"]).metric, study.metric_is_fraction()
    name = metric + (" (%)" if percent else "") + (", mean over seeds" if spread else "")
    return [EvalResult(task_type=TASK, metric_type=metric, metric_name=name,
                       metric_value=round(100 * value if percent else value, 4),
                       dataset_name=study.summary.test_benchmark or test["evaluator"], **_test_dataset(test))]


def _test_dataset(test: dict[str, Any]) -> dict[str, str | None]:
    """The test problems' Hub dataset: the spec's source, or the benchmark's default one."""
    default = BENCHMARK_DATA.get(test.get("evaluator"))
    source = test.get("source")
    if source is None and default is not None and default.source:
        return {"dataset_type": default.source, "dataset_config": default.config,
                "dataset_split": test.get("split") or default.split}
    return {"dataset_type": hub_id(source) or test.get("evaluator"), "dataset_split": test.get("split")}


def _title(study: StudyRecord) -> str:
    return f"{study.backbone}-mft-{study.domain}"


def _intro(study: StudyRecord, selected: SelectedMask, license: str | None) -> list[str]:
    source, revision = selected.backbone.source, selected.backbone.revision
    if hub_id(source):
        base = f"`{source}`" + (f" at revision `{revision}`." if revision else ".")
    else:
        base = (f"`{source}`, a local model: the front matter names no `base_model`; add `base_model: <hub id>` "
                "once the backbone is on the Hub.")
    terms = (f"`{license}`." if license else "none recorded, so the front matter names none. The mask is derived "
             "from the backbone: give it the backbone's license (`license:` in the front matter, or "
             "`python -m mft_search.export ... --license ID`) before uploading.")
    return [f"# {_title(study)}", "",
            f"A binary mask over the linear layers of the backbone below, learned by Mask Fine-Tuning (MFT) with "
            f"mft_search on the {study.domain} domain. It removes weights and changes none: applied, it gives a "
            "plain checkpoint of the same architecture.", "",
            f"- Backbone: {base}", f"- License: {terms}", ""]


def _mask(selected: SelectedMask) -> list[str]:
    meta, mask = selected.meta, selected.config.get("mask") or {}
    kept, total = selected.kept
    kinds = ", ".join(mask["kinds"]) if mask.get("kinds") else "every kind the architecture has"
    blocks = ", ".join(map(str, mask.get("blocks") or ())) or "not recorded"
    return ["## The mask", "",
            f"- Blocks {blocks}; module kinds {kinds}: {len(meta['modules'])} modules.",
            f"- Mode {meta['mode']}, {MODES[meta['mode']].format(**meta)}.",
            f"- Keeps {kept:,} of the {total:,} weights of those modules ({100 * kept / total:.2f}%).",
            f"- Learned on a {meta['model_type']} backbone loaded as {meta['dtype']}; applying it checks the "
            f"backbone's weights against the fingerprint `{meta['fingerprint'][:16]}…`.",
            f"- Files: `{BEST_MASK}` (the mask, at most one bit a weight, checked against its sha256 digest when "
            f"loaded), `{BEST_META}` (its metadata), `{BEST_CONFIG}` (the selected trial's exact configuration "
            "and the sweep's).", ""]


def _selection(study: StudyRecord, selected: SelectedMask) -> list[str]:
    config, best = selected.config, study.summary.row("best_mft")
    stage = config.get("stage")
    trials = study.trials
    among = trials[trials["stage"] == stage]["trial_id"].nunique() if stage and not trials.empty else 0
    out_of = (f", the best on validation of the {among} trials of its stage ({len(trials)} in the study)"
              if among else "")
    return ["## How it was selected", "",
            f"Trial {config.get('trial_id', best.trial_id)} of the {stage or '?'} stage{out_of}: "
            f"{selected_config(best) or 'parameters not recorded'}.", "",
            f"**Verdict:** {study.summary.verdict or 'none recorded'}", ""]


def _apply(selected: SelectedMask) -> list[str]:
    backbone = selected.backbone
    flags = (f" --revision {backbone.revision}" if backbone.revision else "") + \
        (" --trust-remote-code" if backbone.trust_remote_code else "")
    return ["## How to apply it", "",
            "With mft_search installed, in a copy of this repository (`hf download <user>/<repo> --local-dir .`):",
            "", "```bash",
            f"python -m mft_search.apply --backbone {selected.backbone_path()} --mask {BEST_MASK} --out masked/{flags}",
            "```", "",
            "`masked/` is then a plain Hugging Face checkpoint: `AutoModelForCausalLM.from_pretrained(\"masked/\")` "
            "loads it without mft_search. The mask applies only to the backbone it was learned on (checked by "
            "its fingerprint); where the backbone above is a local path, point `--backbone` at your copy of it.",
            ""]
