"""Parameter importances of one study, read from its Optuna journal without writing to it."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from mft_search.report.experiment import first_line


@dataclass(frozen=True)
class Importances:
    """Normalised importances, largest first; empty with a `note` saying why when skipped.

    With values, `note` carries Optuna's caveats (too few trials in some regime), if any.
    """

    values: dict[str, float]
    note: str | None = None


def param_importances(journal: Path, study_name: str) -> Importances:
    """Optuna's importances over the study's completed trials (pruned ones stopped early)."""
    # JournalFileBackend creates a missing file: look first, so that the report never writes one.
    if not journal.is_file():
        return Importances({}, f"no {journal.name} for this study yet")
    try:
        storage = JournalStorage(JournalFileBackend(str(journal)))
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return Importances({}, f"{journal.name} holds no study named '{study_name}'")
    except ValueError as exc:  # a corrupt journal costs the figure, not the whole report
        return Importances({}, f"{journal.name} is unreadable ({first_line(exc)})")
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(completed) < 2:
        return Importances({}, f"needs at least 2 completed trials, the study has {len(completed)}")
    varying = _varying_params(completed)
    if len(varying) < 2:
        return Importances({}, f"needs at least 2 varying parameters, only {len(varying)} varied "
                               f"({', '.join(varying) or 'none'})")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Constant parameters are left out: PED-ANOVA can give them spurious weight.
        values = optuna.importance.get_param_importances(study, params=varying)
    return Importances(values, _caveat([str(w.message) for w in caught]))


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
