"""A sampled point that a finished trial already ran is told that trial's outcome, not run again.

The sweep gives every trial the sweep's seed (tune.sampling.params_to_trial: trials differ only
by what was searched), so running a finished point again reproduces its result and costs a whole
trial. TPE, GP and random search draw with replacement, and on a discrete space they repeat
points. Optuna's FAQ ("How to ignore duplicated samples") hands the study the earlier trial's
value instead; here the new Optuna trial gets the earlier trial's whole outcome:

    twin = finished_twin(study, trial)        # a COMPLETE or PRUNED trial with the same params
    if twin is not None:
        tell_as_twin(study, trial, twin)      # same state, value, reports and constraints; ask again

A point is its params: the fixed values of the space come from the experiment's config, which a
resumed sweep must keep (experiment.config_record), so within a study equal params are equal
points, fixed values included. FAIL and RUNNING trials are no twins: a failed point is tried
again, and a running one has no outcome yet (TPE's constant liar already steers away from it).

The copy's reports are its twin's intermediate values, which TPE reads to rank PRUNED trials.
They are not rung results of Optuna's SuccessiveHalvingPruner (those are system attrs written
when a trial asks `should_prune`): the copy never ran, so successive halving does not count it,
as Ray's ASHA never hears of it in the sweep.

MAX_REPEATS draws in a row that all repeat finished points end the search: the space is
exhausted, or so nearly that the sampler keeps returning to what it ran (with one point of n
left, uniform draws miss it MAX_REPEATS times with probability (1 - 1/n)^MAX_REPEATS: 0.12 for
the demo's 48 points), or the sampler has settled on what it ran (GPSampler proposes its
acquisition's optimum again and again: a repeat's outcome does not move its model).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

MAX_REPEATS = 100
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
REPEAT_OF = "repeat_of"  # the copy's user attribute: the number of the trial it repeats


def finished_twin(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """The first COMPLETE or PRUNED trial of `study` with `trial`'s params, or None."""
    for past in study.get_trials(deepcopy=False, states=FINISHED):
        if past.number != trial.number and past.params == trial.params:
            return past
    return None


def tell_as_twin(study: optuna.Study, trial: optuna.Trial, twin: FrozenTrial) -> None:
    """Finish `trial` as `twin` finished: its reports, constraints, state and value."""
    for step, value in sorted(twin.intermediate_values.items()):
        trial.report(value, step)
    for name, value in twin.constraints.items():
        trial.set_constraint(name, value)
    trial.set_user_attr(REPEAT_OF, twin.number)
    if twin.state == TrialState.COMPLETE:
        study.tell(trial, twin.values)
    else:  # PRUNED: Optuna takes the last report as its value, the twin's too
        study.tell(trial, state=TrialState.PRUNED)
