"""Parameter importances of one study, read from its Optuna journal without writing to it."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import optuna
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from mft_search.core.files import Location, location
from mft_search.report.experiment import first_line
from mft_search.tune.duplicates import REPEAT_OF

# PED-ANOVA (named here, not left to Optuna's default, because the thresholds below rest on it)
# contrasts the parameter distribution of the best TARGET_QUANTILE of the completed trials with
# that of all of them.
TARGET_QUANTILE = 0.1  # Optuna's default
# Below 2 completed trials there is nothing to contrast (PED-ANOVA warns and returns zeros): withheld.
WITHHELD_BELOW = 2
# Up to 10 trials the best 10% is one trial (ceil(0.1 n) = 1), so the importances only say where
# that single trial lies: noise. From 11 it holds 2, the fewest PED-ANOVA fits a density on within
# a regime; still few, which the count beside the values says. Between the two thresholds the
# values are shown but flagged: a small sweep's probe ends there, and a flagged ranking with its
# count says more than none.
FLAGGED_BELOW = 11


@dataclass(frozen=True)
class Importances:
    """Normalised importances, largest first; empty with a `note` saying why when withheld.

    With values, `note` carries Optuna's caveats (too few trials in some regime), if any, and
    `flag` says when they rest on too few trials to be read as a ranking.
    """

    values: dict[str, float]
    note: str | None = None
    trials: int = 0  # the completed trials they rest on

    @property
    def flag(self) -> str | None:
        """Why the values are no ranking yet, where shown on fewer than FLAGGED_BELOW trials."""
        if not self.values or self.trials >= FLAGGED_BELOW:
            return None
        return (f"rests on only {self.trials} completed trials; the best {TARGET_QUANTILE:.0%} that PED-ANOVA "
                f"contrasts with the rest is a single trial until there are {FLAGGED_BELOW}, so read it as noise")


def param_importances(journal: str | os.PathLike | Location, study_name: str) -> Importances:
    """Optuna's importances over the study's completed trials (pruned ones stopped early)."""
    journal = location(journal)
    # JournalFileBackend creates a missing file: look first, so that the report never writes one.
    if not journal.is_file():
        return Importances({}, f"no {journal.name} for this study yet")
    with journal.local_copy() as local:  # a bucket's copy is downloaded: optuna opens local files (and lazily)
        try:
            storage = JournalStorage(JournalFileBackend(str(local)))
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            return Importances({}, f"{journal.name} holds no study named '{study_name}'")
        except ValueError as exc:  # a corrupt journal costs the figure, not the whole report
            return Importances({}, f"{journal.name} is unreadable ({first_line(exc)})")
        return _importances(study)


def _importances(study: optuna.Study) -> Importances:
    everything = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    # A repeat (tune.duplicates) never ran: it would count a point twice and weigh it double.
    completed = [t for t in everything if REPEAT_OF not in t.user_attrs]
    if len(completed) < len(everything):
        study = _study_of(completed, study.direction)
    n = len(completed)
    if n < WITHHELD_BELOW:
        return Importances({}, f"needs at least {WITHHELD_BELOW} completed trials, the study has {n}", n)
    varying = _varying_params(completed)
    if len(varying) < 2:
        return Importances({}, f"needs at least 2 varying parameters, only {len(varying)} varied "
                               f"({', '.join(varying) or 'none'})", n)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Constant parameters are left out: PED-ANOVA can give them spurious weight.
        values = optuna.importance.get_param_importances(
            study, params=varying, evaluator=PedAnovaImportanceEvaluator(target_quantile=TARGET_QUANTILE))
    return Importances(values, _caveat([str(w.message) for w in caught]), n)


def _study_of(trials: list[FrozenTrial], direction: optuna.study.StudyDirection) -> optuna.Study:
    """An in-memory study of `trials` (importances read a study's trials; the journal is not written)."""
    storage = optuna.storages.InMemoryStorage()  # created through the storage: create_study logs a line
    storage.create_new_study([direction], "ran")
    study = optuna.Study("ran", storage)
    study.add_trials(trials)
    return study


def _caveat(messages: list[str]) -> str | None:
    """Optuna's warnings that too few trials back an estimate, in one short clause."""
    if not messages:
        return None
    thin = sorted(set(re.findall(r"parameter `([^`]+)` have less than 2 trials", " ".join(messages))))
    if thin:
        return f"few trials behind {', '.join(thin)}, so these may be inaccurate"
    return "; ".join(sorted(set(messages)))


def _varying_params(trials: list[FrozenTrial]) -> list[str]:
    # A conditional parameter (ratio only under local mode) varies by being absent, too.
    names = sorted({name for t in trials for name in t.params})
    return [n for n in names if len({repr(t.params.get(n)) for t in trials}) > 1]
