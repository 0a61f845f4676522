"""The sweep's stages in order, per study, with what has finished recorded in state.json so
that --resume skips it: the fft stage (when configured), probe search, refine re-runs, then
selection and evaluation."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mft_search.config.schema import SweepConfig
from mft_search.core.files import Location
from mft_search.experiment import layout
from mft_search.experiment.config_record import save_config
from mft_search.experiment.fft_record import load_fft_record
from mft_search.experiment.results import ResultsTable
from mft_search.experiment.storage import Storage
from mft_search.train.spec import EvalVariant
from mft_search.tune.budget import budget_stop
from mft_search.tune.evaluate import (
    FftCurve,
    best_candidates,
    continued_fft,
    export_best,
    lora_baseline,
    paired_gains,
    row_and_seed,
    run_evaluation,
    verdict,
    write_summary,
)
from mft_search.tune.fft_stage import fine_tuned_study, run_fft_stage
from mft_search.tune.guards import check_winner, guard_limits, measure_references
from mft_search.tune.replicates import fft_replicates, lora_replicates, mask_replicates, mft_replicates
from mft_search.tune.stage import run_stage
from mft_search.tune.study import Study, discard_journal_copies


class SweepState:
    """Which (study, step) pairs are done; written atomically after each."""

    def __init__(self, path: Location) -> None:
        self.path = path
        self.done: dict[str, bool] = json.loads(path.read_text()) if path.exists() else {}

    def finished(self, study: Study, step: str) -> bool:
        return self.done.get(f"{study.name}:{step}", False)

    def mark(self, study: Study, step: str) -> None:
        self.done[f"{study.name}:{step}"] = True
        self.path.write_text(json.dumps(self.done, indent=2))


def run_sweep(cfg: SweepConfig, exp_dir: Location, *, resume: bool, finish: Callable[[Location], Any], log=print) -> str:
    """Every study of the sweep, then `finish(exp_dir)` (the entry point's report); returns the
    leaderboard text. The report is passed in because it sits above the tune layer."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    storage = Storage(exp_dir)
    storage.claim()
    if not resume:
        save_config(exp_dir, cfg.model_dump(mode="json"))
    try:
        _run_studies(cfg, exp_dir, storage, resume, log)
        finish(exp_dir)  # inside the guard: a full disk while writing the report is a storage failure too
        if cfg.tracking is not None:
            from mft_search.tune.tracking import log_summary  # imports mlflow and wandb: seconds, only if used

            log_summary(cfg, exp_dir, log)  # the leaderboard finish wrote and the best masks, as artefacts
        discard_journal_copies(exp_dir)
    except Exception as exc:  # storage that filled or vanished, however deep Ray wrapped it
        failure = storage.failure(exc)
        if failure is None:
            raise
        raise failure from None
    return (exp_dir / layout.LEADERBOARD).read_text()


def _relative_best_mask(study: Study) -> str:
    return f"{layout.BEST}/{study.backbone.label}/{study.domain.name}/{layout.BEST_MASK}"


def _run_studies(cfg: SweepConfig, exp_dir: Location, storage: Storage, resume: bool, log) -> None:
    state = SweepState(exp_dir / layout.STATE)
    results = layout.results_path(exp_dir)
    for backbone in cfg.backbones:
        for domain in cfg.domains:
            study = _fine_tune(Study(cfg, backbone, domain, exp_dir, storage), state, log)
            _guard_references(study, state, log)
            _search(study, state, results, resume, log)
            if not state.finished(study, "evaluation"):
                storage.check()
                _evaluate(study, ResultsTable(results), log)
                state.mark(study, "evaluation")


def _fine_tune(study: Study, state: SweepState, log) -> Study:
    """With stages.fft, the study masks its best FFT checkpoint; fine-tuned once, read back on --resume."""
    if study.cfg.stages.fft is None:
        return study
    record = load_fft_record(study.dir) if state.finished(study, "fft") else None
    if record is None:
        study.storage.check()
        record = run_fft_stage(study, log)
        state.mark(study, "fft")
    return fine_tuned_study(study, record)


def _guard_references(study: Study, state: SweepState, log) -> None:
    """The unmasked backbone on each guard, once, before the probe: every trial is held to it."""
    if study.domain.guard and not state.finished(study, "guards"):
        study.storage.check()
        measure_references(study, log)
        state.mark(study, "guards")


def _search(study: Study, state: SweepState, results: Location, resume: bool, log) -> None:
    """Probe, then refine; the Tune callbacks write results.parquet, read back here from disk."""
    if not state.finished(study, "probe"):
        study.storage.check()
        log(f"[{study.name}] probe: {study.cfg.search.trials} trials on "
            f"{study.cfg.stages.probe.data_fraction:.0%} of the training data")
        run_stage(study, "probe", results, resume=resume, log=log)
        _close_stage(study, "probe", results, log)
        stopped = budget_message(study, ResultsTable(results))
        if stopped:
            log(f"[{study.name}] {stopped}")
        state.mark(study, "probe")
    k = study.cfg.stages.refine.top_k
    if k and not state.finished(study, "refine"):
        frame = ResultsTable(results).frame()
        points = [c.params for c in best_candidates(frame, study.name, "probe", k, guard_limits(study))]
        log(f"[{study.name}] refine: the best {len(points)} probe point(s) on all the training data")
        if points:
            study.storage.check()
            run_stage(study, "refine", results, resume=resume, points=points, log=log)
            _close_stage(study, "refine", results, log)
        state.mark(study, "refine")


def budget_message(study: Study, table: ResultsTable) -> str | None:
    """'the probe search stopped early: <budget> spent, after N of M trials', or None."""
    stop = budget_stop(study.dir)
    if stop is None:
        return None
    frame = table.frame()
    ran = 0 if frame.empty else frame[(frame["study"] == study.name) & (frame["stage"] == "probe")]["trial_id"].nunique()
    return (f"the probe search stopped early: {stop['reason']}, after {ran} of {study.cfg.search.trials} trials; "
            "refine and selection used those")


def _close_stage(study: Study, stage: str, results: Location, log) -> None:
    table = ResultsTable(results)
    lost = table.close_stage(study.name, stage)
    if lost:
        table.flush()
        log(f"[{study.name} {stage}] {len(lost)} trial(s) left running by the earlier stop, marked interrupted: "
            f"{', '.join(lost)}")


def _evaluate(study: Study, table: ResultsTable, log) -> None:
    """Select on validation, then score the selection and the baselines on test."""
    frame = table.frame()
    stage = "refine" if study.cfg.stages.refine.top_k and (frame["stage"] == "refine").any() else "probe"
    winners = best_candidates(frame, study.name, stage, 1, guard_limits(study))
    budget = budget_message(study, table)
    if not winners:
        curve = FftCurve.of("fft stage", study.fft) if study.fft else None
        why = ("every trial's best report broke a guard on validation" if best_candidates(frame, study.name, stage, 1)
               else "no trial finished with a validation metric")
        write_summary(study, [], f"{why}; nothing to select", curve=curve, budget=budget)
        log(f"[{study.name}] {why}: nothing selected")
        return
    winner = winners[0]
    study.prepare_data("refine")  # the baselines train and score on all the data: tokenised here, once
    compared = _compared(study, winner, log)
    log(f"[{study.name}] validation: the best mask, the unmasked backbone and the baselines, item by item")
    # The best mask is scored again beside the others: its search report has no per-item scores.
    scored = {"validation": run_evaluation(study, compared.scored, study.domain.validation, "validation")}
    validation = {**scored["validation"].metric, **compared.own_validation}
    gains, unit = paired_gains(study, "validation")  # the unit the items were scored in: points or nats
    candidates = frame[(frame["study"] == study.name) & (frame["stage"] == stage)]["trial_id"].nunique()
    guards = check_winner(study, winner.mask_path, log)
    selected, text = verdict(gains.get("unmasked"), study.cfg.selection.min_gain, unit, candidates,
                             [g.broken for g in guards if g.broken])
    if selected:
        export_best(study, winner)
    test: dict[str, float] = {}
    if study.domain.test is not None:
        log(f"[{study.name}] test: the selected mask and every baseline")
        scored["test"] = run_evaluation(study, compared.scored + compared.test_only, study.domain.test, "test")
        test = scored["test"].metric
    rows = _rows(study, validation, test)
    for row in rows:
        row["label"] = _label(row["name"], compared.fft) or _label(row["name"], compared.lora)
        # every metric each split's benchmark reported (both gsm8k filters, ...), of the row's first seed
        row["reported"] = {split: s.reported[row["name"]] for split, s in scored.items() if s.reported.get(row["name"])}
        if row["name"] == "best_mft":
            row.update(trial_id=winner.trial_id, params=winner.params, selected=selected,
                       mask=_relative_best_mask(study) if selected else None)
    write_summary(study, rows, text, curve=compared.fft, lora=compared.lora, budget=budget,
                  guards=[g.as_json() for g in guards])
    log(f"[{study.name}] {text}")


@dataclass(frozen=True)
class Compared:
    """The models a study's Table 1 compares, those that need training trained."""

    scored: list[EvalVariant]  # scored item by item on validation and test
    test_only: list[EvalVariant]  # the continued-FFT control from the user's backbone: scored on test ...
    own_validation: dict[str, float]  # ... its validation figures taken from its own runs
    fft: FftCurve | None  # the fft stage's or the control's curve
    lora: FftCurve | None


def _compared(study: Study, winner, log) -> Compared:
    references = _references(study, winner)
    learned = EvalVariant(name="best_mft", mask="learned", mask_file=winner.mask_path)
    extra, curve = _continued_fft(study, winner, log)
    lora, lora_curve = _lora(study, log)
    learned_seeds = mft_replicates(study, winner, log)  # after their first seed, which the search ran
    seeded = [*learned_seeds, *mask_replicates(study, winner, learned_seeds), *lora_replicates(study, log)]
    fft_seeded, fft_seeded_validation = fft_replicates(study, winner, log)
    scored = [EvalVariant(name="unmasked"), *references, *lora, learned, *seeded]
    if study.fft is not None:  # the fft stage's final point is Continued FFT: scored like the others
        return Compared(scored + extra, [], {}, curve, lora_curve)
    own = {}
    if curve is not None:
        own["continued_fft"] = curve.final.metric
        if curve.best.report != curve.final.report:
            own["continued_fft_best"] = curve.best.metric
    return Compared(scored, extra + fft_seeded, {**own, **fft_seeded_validation}, curve, lora_curve)


def _rows(study: Study, validation: dict[str, float], test: dict[str, float]) -> list[dict]:
    """Table 1's rows from the evaluated variants' metrics: a row's `validation` and `test` are
    its first seed's (the run the search and the paired intervals use); `seeds`,
    `validation_seeds` and `test_seeds` list every seed's, replicates included."""
    rows: dict[str, dict] = {}
    for name in validation:
        row, seed = row_and_seed(name, study.cfg.seed)
        entry = rows.setdefault(row, {"name": row, "seeds": [], "validation_seeds": [], "test_seeds": []})
        entry["seeds"].append(seed)
        entry["validation_seeds"].append(validation[name])
        entry["test_seeds"].append(test.get(name))
    for entry in rows.values():
        entry["validation"], entry["test"] = entry["validation_seeds"][0], entry["test_seeds"][0]
    return list(rows.values())


def _references(study: Study, winner) -> list[EvalVariant]:
    """The rows scored beside the best mask that need no training: the pretrained model (after the
    fft stage), and the baseline masks at the winner's modules and kept counts."""
    baselines, mask_file = study.cfg.baselines, winner.mask_path
    rows = [EvalVariant(name="pretrained", pretrained=study.pretrained)] if study.fft is not None else []
    rows += [EvalVariant(name=b, mask=b, mask_file=mask_file, seed=study.cfg.seed)
             for b in ("random", "l1", "wanda") if b in baselines]
    if "revert" in baselines and study.pretrained_backbone is not None:  # else summary.json says why not
        rows.append(EvalVariant(name="revert", mask="revert", mask_file=mask_file, pretrained=study.pretrained_backbone))
    return rows


def _continued_fft(study: Study, winner, log) -> tuple[list[EvalVariant], FftCurve | None]:
    """The Continued FFT rows and the FFT curve behind them. After the fft stage: its final
    point (the paper's row) and its curve. Otherwise, with the baseline: FFT continued from the
    user's checkpoint at the selected rate, its final point and, when earlier, its best one."""
    if study.fft is not None:
        curve = FftCurve.of("fft stage", study.fft)
        wanted = "continued_fft" in study.cfg.baselines
        return ([EvalVariant(name="continued_fft", weights=curve.final.checkpoint)] if wanted else []), curve
    if "continued_fft" not in study.cfg.baselines:
        return [], None
    log(f"[{study.name}] continued FFT control at the selected learning rate")
    curve = continued_fft(study, winner)
    variants = [EvalVariant(name="continued_fft", weights=curve.final.checkpoint)]
    if curve.best.report != curve.final.report:
        variants.append(EvalVariant(name="continued_fft_best", weights=curve.best.checkpoint))
    return variants, curve


def _lora(study: Study, log) -> tuple[list[EvalVariant], FftCurve | None]:
    """Best and Continued LoRA, trained from the pretrained model; none without one (summary.json says why)."""
    if "lora" not in study.cfg.baselines or study.pretrained_backbone is None:
        return [], None
    log(f"[{study.name}] LoRA baseline from the pretrained model, rank {study.cfg.lora.rank}")
    curve = lora_baseline(study)
    return [EvalVariant(name="best_lora", weights=curve.best.checkpoint),
            EvalVariant(name="continued_lora", weights=curve.final.checkpoint)], curve


def _label(name: str, curve: FftCurve | None) -> str | None:
    """The leaderboard's name of a row whose meaning depends on where the backbone came from."""
    if curve is None:
        return None
    best, final = f"{curve.best.epoch:g}", f"{curve.final.epoch:g}"
    if curve.origin == "LoRA":
        return {"best_lora": f"Best LoRA (epoch {best} of {final})",
                "continued_lora": f"Continued LoRA (final, epoch {final})"}.get(name)
    if curve.origin == "fft stage":
        return {"unmasked": f"Best FFT (epoch {best} of {final})",
                "continued_fft": f"Continued FFT (final, epoch {final})"}.get(name)
    return {"continued_fft": f"More FFT from the backbone, final (epoch {final})",
            "continued_fft_best": f"More FFT from the backbone, best epoch ({best}, picked on validation)"}.get(name)
