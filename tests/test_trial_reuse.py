"""A reused trial actor must not drop the next trial while the last one's thread winds down.

Ray Tune (reuse_actors) waits TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s by default) for a function
trial's thread before reusing its actor, then errors the next trial: a trial lost on a loaded
machine (seen in the kill-and-resume test at a load of 18). The trial driver raises the wait; these
checks fail if Ray stops reading the variable there, or the driver stops setting it.
"""

import inspect

from ray.tune.trainable.function_trainable import FunctionTrainable

from mft_search.tune import stage


def test_ray_reads_the_reuse_wait_at_each_reset():
    assert "TUNE_FUNCTION_THREAD_TIMEOUT_S" in inspect.getsource(FunctionTrainable.reset_config)


def test_the_trial_driver_raises_it_before_it_does_anything_else():
    source = inspect.getsource(stage._trial_driver)
    body = source.split('"""')[2]  # after the docstring
    first_statement = next(line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#"))
    assert first_statement.startswith('os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S"')
    assert stage.REUSE_WAIT_S >= 60
