"""Sampling the search space with Optuna: the define-by-run function, samplers, and what a
sampled point means for a trial (its MaskSpec and TrainSettings).

    params = define_by_run(space)(study.ask())   # {"layer_group": "8-11", "mode": "local", "ratio": 0.07, ...}
    mask_kwargs, train = params_to_trial(params, cfg)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import optuna

from mft_search.config.space import (
    ALGORITHMS,
    TRAIN_FIELDS,
    FloatRange,
    IntRange,
    LayerRange,
    SearchSpace,
    _as_config_error,
    check_algorithm_available,
    decode_blocks,
    encode_blocks,
    grid_size,
    is_conditional,
)
from mft_search.core.masking import MaskSpec
from mft_search.core.topk import CUT_SETTING
from mft_search.errors import ConfigError, did_you_mean
from mft_search.train.step import TrainSettings

if TYPE_CHECKING:
    from mft_search.config.schema import SweepConfig


def define_by_run(space: SearchSpace) -> Callable[[optuna.Trial], dict[str, Any]]:
    """A function that samples one point of `space` on an Optuna trial.

    It returns the flat parameter dict, fixed values included (Ray's OptunaSearch merges the
    returned constants into the trial config); `params_to_trial` turns it into a trial.
    """
    return _DefineByRun(space)


class _DefineByRun:
    """A picklable sampler function: Tune pickles the searcher, with its space, at every save."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        space = self.space
        params = {"layer_group": _sample_layer_group(trial, space.layer_group)}
        if space.kinds is not None:
            params["kinds"] = _sample(trial, "kinds", [",".join(k) for k in space.kinds])
        mode = params["mode"] = _sample(trial, "mode", space.mode)
        for name in (CUT_SETTING[mode], "init", "init_std", *TRAIN_FIELDS):
            if getattr(space, name) is not None:
                params[name] = _sample(trial, name, getattr(space, name))
        return params


def _sample_layer_group(trial: optuna.Trial, lg: list[list[int]] | LayerRange) -> str:
    if isinstance(lg, list):
        return _sample(trial, "layer_group", [encode_blocks(g) for g in lg])
    start = _sample(trial, "layer_start", lg.start)
    return encode_blocks(range(start, start + lg.size))


def _sample(trial: optuna.Trial, name: str, dim: Any) -> Any:
    if isinstance(dim, list):
        return trial.suggest_categorical(name, dim) if len(dim) > 1 else dim[0]
    if isinstance(dim, FloatRange):
        return trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
    if isinstance(dim, IntRange):
        return trial.suggest_int(name, dim.low, dim.high, step=dim.step, log=dim.log)
    return dim


def params_to_trial(params: dict[str, Any], cfg: SweepConfig) -> tuple[dict[str, Any], TrainSettings]:
    """(MaskSpec keyword arguments, TrainSettings) of a point from `define_by_run`.

    Searched training values override `cfg.train`; mask values absent from `params` keep
    MaskSpec's defaults. The score-init seed is the sweep's seed, so trials differ only by
    what was searched.
    """
    mask: dict[str, Any] = {"blocks": decode_blocks(params["layer_group"]),
                            "kinds": tuple(params["kinds"].split(",")) if "kinds" in params else None,
                            "seed": cfg.seed}
    mask.update({k: params[k] for k in ("mode", "ratio", "threshold", "init", "init_std") if k in params})
    MaskSpec(**mask)  # fail here, in the driver, rather than on a GPU worker
    train = TrainSettings.model_validate({**cfg.train.model_dump(), **{k: params[k] for k in TRAIN_FIELDS if k in params}})
    return mask, train


def make_sampler(algorithm: str, seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of a search algorithm (one of config.space.ALGORITHMS)."""
    if algorithm not in SAMPLERS:
        raise ConfigError(f"search.algorithm: unknown '{algorithm}'{did_you_mean(algorithm, ALGORITHMS)}; "
                          f"choose one of {', '.join(ALGORITHMS)}")
    return SAMPLERS[algorithm](seed, space)


def _tpe(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    with _stable_since_years():
        # group=True models each set of co-occurring parameters apart (local vs global trials);
        # constant_liar keeps concurrent trials from being handed the same point.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=is_conditional(space),
                                          constant_liar=True)


def _gp(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    with _as_config_error("search"):
        check_algorithm_available("gp")
    return optuna.samplers.GPSampler(seed=seed)


def _grid(seed: int, space: SearchSpace) -> optuna.samplers.BaseSampler:
    grid_size(space)  # raises for a continuous dimension
    with _stable_since_years():
        return _ExhaustiveSampler(seed=seed)


# A new Optuna algorithm is an entry here plus its name in config.space.ALGORITHMS (the config
# layer validates names without importing Optuna; tests/test_space.py checks the two agree).
# A Tune-native searcher (ray.tune.search.*) would replace the searcher in tune.searcher.make_searcher.
SAMPLERS: dict[str, Callable[[int, SearchSpace], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "gp": _gp,
    "random": lambda seed, space: optuna.samplers.RandomSampler(seed=seed),
    "grid": _grid,
}


@contextlib.contextmanager
def _stable_since_years() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning for TPE's multivariate/group and BruteForceSampler (2.x, 3.1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


class _ExhaustiveSampler(optuna.samplers.BruteForceSampler):
    """Grid search that follows the conditional space.

    GridSampler takes the product of every dimension, so each local point would be run once per
    threshold value; BruteForceSampler walks the define-by-run tree instead. Its after_trial
    stops the study when the grid is exhausted, which raises under ask/tell (how Ray drives
    Optuna); the sweep runs exactly grid_size trials, so no stop is needed.
    """

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001 (Optuna's signature)
        pass


