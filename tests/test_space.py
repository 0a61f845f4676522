"""The search space: conditional sampling, samplers, grid, enqueued points, and trials from points."""

import importlib.util

import optuna
import pytest

from mft_search.config.schema import parse_config
from mft_search.errors import ConfigError
from mft_search.core.masking import MaskSpec
from mft_search.config.space import ALGORITHMS, SearchSpace, decode_blocks, encode_blocks, enqueue_points, grid_size
from mft_search.tune.sampling import SAMPLERS, define_by_run, make_sampler, params_to_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "layer_group": {"size": 4, "start": {"low": 0, "high": 28, "step": 4}},
    "mode": ["local", "global"],
    "ratio": {"low": 0.02, "high": 0.4, "log": True},
    "threshold": {"low": -0.06, "high": -0.01},
    "init": ["normal", "magnitude"],
    "lr": {"low": 1e-6, "high": 1e-4, "log": True},
}
GRID = {"layer_group": [[0, 1, 2, 3], [20, 21, 22, 23]], "mode": ["local", "global"], "ratio": [0.05, 0.1, 0.2],
        "threshold": {"low": -0.05, "high": -0.03, "step": 0.01}, "kinds": [["q", "v"], ["up", "down"]], "epochs": 2}


def space(**changes):
    return SearchSpace.model_validate({**SPACE, **changes})


def run(sampler, sp, n):
    study = optuna.create_study(direction="maximize", sampler=sampler)
    sample, points = define_by_run(sp), []
    for _ in range(n):
        trial = study.ask()
        points.append(sample(trial))
        study.tell(trial, points[-1].get("ratio", 0.1) - abs(points[-1].get("threshold", 0)))
    return study, points


def test_conditional_parameters_never_cross_modes():
    study, points = run(make_sampler("tpe", 0, space()), space(), 50)
    assert {p["mode"] for p in points} == {"local", "global"}
    for point, trial in zip(points, study.trials):
        present = {"ratio"} if point["mode"] == "local" else {"threshold"}
        assert present <= set(trial.params) and not ({"ratio", "threshold"} - present) & set(trial.params)
        assert not ({"ratio", "threshold"} - present) & set(point)
        assert point["layer_group"] in {encode_blocks(range(s, s + 4)) for s in range(0, 29, 4)}
        assert 1e-6 <= point["lr"] <= 1e-4


def test_samplers_are_seeded_and_reproducible():
    first = run(make_sampler("tpe", 7, space()), space(), 12)[1]
    assert first == run(make_sampler("tpe", 7, space()), space(), 12)[1]
    assert first != run(make_sampler("tpe", 8, space()), space(), 12)[1]


@pytest.mark.parametrize("algorithm, kind", [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
                                             ("grid", optuna.samplers.BruteForceSampler)])
def test_each_algorithm_samples(algorithm, kind):
    sp = SearchSpace.model_validate(GRID)
    sampler = make_sampler(algorithm, 0, sp)
    assert isinstance(sampler, kind)
    assert len(run(sampler, sp, 6)[1]) == 6


def test_gp_needs_scipy():
    if importlib.util.find_spec("scipy") is None:
        with pytest.raises(ConfigError, match="search.algorithm: gp needs scipy"):
            make_sampler("gp", 0, space())
    else:
        assert isinstance(make_sampler("gp", 0, space()), optuna.samplers.GPSampler)


def test_unknown_algorithm():
    with pytest.raises(ConfigError, match="search.algorithm: unknown 'tp' .*did you mean 'tpe'"):
        make_sampler("tp", 0, space())


def test_every_configurable_algorithm_has_a_sampler():
    # The config layer names the algorithms without Optuna; the tune layer builds them.
    assert set(SAMPLERS) == set(ALGORITHMS)


def test_grid_walks_every_distinct_point_once():
    sp = SearchSpace.model_validate(GRID)
    # 2 groups x 2 kind sets x (3 local ratios + 3 global thresholds); thresholds do not multiply local points
    assert grid_size(sp) == 2 * 2 * (3 + 3)
    study, points = run(make_sampler("grid", 0, sp), sp, grid_size(sp))  # ask/tell: must not raise on the last
    keys = {tuple(sorted(p.items())) for p in points}
    assert len(keys) == grid_size(sp)
    assert {p["threshold"] for p in points if p["mode"] == "global"} == {-0.05, -0.04, -0.03}


def test_grid_expands_int_ranges_and_rejects_continuous_ones():
    assert grid_size(space(ratio=[0.1], threshold=[-0.03], init="normal", lr=1e-5)) == 8 * 2
    with pytest.raises(ConfigError, match="search.space.ratio: grid search needs choices or a step"):
        grid_size(space())


def test_enqueued_points_become_optuna_params():
    points = enqueue_points(space(), [{"layer_group": [20, 21, 22, 23], "mode": "local", "ratio": 0.1},
                                      {"layer_group": "0-3", "mode": "global", "threshold": "-3.5e-2", "lr": "1e-5"}])
    assert points == [{"layer_start": 20, "mode": "local", "ratio": 0.1},
                      {"layer_start": 0, "mode": "global", "threshold": -0.035, "lr": 1e-5}]
    study = optuna.create_study(sampler=make_sampler("tpe", 0, space()))
    study.enqueue_trial(points[0])
    assert define_by_run(space())(study.ask())["layer_group"] == "20-23"


@pytest.mark.parametrize("point, expected", [
    ({"layer_group": [1, 2, 3, 4]}, "search.enqueue[0].layer_group: 1 is outside the range 0..28 with step 4"),
    ({"mode": "local", "ratio": 0.5}, "search.enqueue[0].ratio: 0.5 is outside the range 0.02..0.4"),
    ({"ratio": 0.1}, "search.enqueue[0].ratio: used only when mode is local"),
    ({"init": "kaiming"}, "search.enqueue[0].init: kaiming is not among the choices normal, magnitude"),
    ({"epochs": 3}, "search.enqueue[0].epochs: is not searched"),
    ({"lr": "fast"}, "search.enqueue[0].lr: 'fast' is not a number"),
    ({"mod": "local"}, "search.enqueue[0].mod: unknown parameter (did you mean 'mode'?)"),
])
def test_enqueued_points_outside_the_space(point, expected):
    with pytest.raises(ConfigError) as info:
        enqueue_points(space(), [point])
    assert expected in str(info.value)


def test_fixed_values_may_be_restated_but_not_changed():
    sp = space(init="magnitude")
    assert enqueue_points(sp, [{"init": "magnitude"}]) == [{}]
    with pytest.raises(ConfigError, match=r"search.enqueue\[0\].init: normal is not among the choices magnitude"):
        enqueue_points(sp, [{"init": "normal"}])


def test_params_to_trial_merges_over_train_defaults():
    cfg = parse_config({
        "name": "t", "seed": 5, "backbones": [{"source": "x"}], "train": {"lr": 2e-5, "epochs": 3, "warmup_ratio": 0.1},
        "domains": [{"name": "d", "train": {"source": "t.jsonl", "prompt_field": "q", "response_field": "a"},
                     "validation": {"evaluator": "gsm8k", "split": "train", "num_fewshot": 0}}],
        "search": {"space": {**SPACE, "kinds": [["q", "v"]], "epochs": 1}}})
    params = define_by_run(cfg.search.space)(optuna.create_study(sampler=make_sampler("tpe", 0, cfg.search.space)).ask())
    mask, train = params_to_trial(params, cfg)
    MaskSpec(**mask)
    assert mask["blocks"] == decode_blocks(params["layer_group"]) and len(mask["blocks"]) == 4
    assert mask["kinds"] == ("q", "v") and mask["seed"] == 5 and mask["init"] == params["init"]
    assert ("ratio" in mask) == (mask["mode"] == "local") and ("threshold" in mask) == (mask["mode"] == "global")
    assert train.lr == params["lr"] and train.epochs == 1 and train.warmup_ratio == 0.1 and train.seed == 5


@pytest.mark.parametrize("blocks, text", [((20, 21, 22, 23), "20-23"), ((0, 5, 9), "0,5,9"), ((7,), "7"), ((3, 2), "3,2")])
def test_layer_group_encoding_round_trips(blocks, text):
    assert encode_blocks(blocks) == text and decode_blocks(text) == blocks
