"""Cross-domain guards (domains[].guard) without Ray: the config, Optuna's constraint on a trial,
and selection's refusal of a mask that breaks one. The sweep end to end: tests/test_sweep.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import FloatDistribution

from mft_search.cli import run
from mft_search.config.schema import GuardSpec, parse_config
from mft_search.core.evaluation.spec import EvalSpec
from mft_search.core.statistics import POINTS, guard_decision, paired_gain
from mft_search.errors import ConfigError
from mft_search.experiment.guards import GuardLimit, guard_metric, guard_split
from mft_search.experiment.items import add_items, items_path
from mft_search.sweep import main as sweep_main
from mft_search.tune.evaluate import best_candidates, verdict
from mft_search.tune.guards import guard_checks, guard_limits
from mft_search.tune.searcher import PrunedAwareOptunaSearch

IFEVAL = {"evaluator": "ifeval", "source": "ifeval.jsonl", "limit": 100}


def _config(guard: list) -> dict:
    return {
        "name": "g", "backbones": [{"source": "tiny", "name": "tiny"}],
        "domains": [{"name": "math", "train": {"source": "t.jsonl", "prompt_field": "q", "response_field": "a"},
                     "validation": {"evaluator": "gsm8k", "source": "val.jsonl"},
                     "test": {"evaluator": "gsm8k", "source": "test.jsonl"}, "guard": guard}],
        "search": {"space": {"layer_group": [[0, 1]], "mode": "local", "ratio": 0.1}},
    }


@pytest.mark.parametrize("guard, expected", [
    ([{"benchmark": IFEVAL, "max_drop": -1}], "domains[0].guard[0].max_drop: Input should be greater than or equal"),
    ([{"benchmark": IFEVAL}], "domains[0].guard[0].max_drop: required; add it"),
    ([{"benchmark": IFEVAL, "max_drop": 1, "drop": 2}], "domains[0].guard[0].drop: unknown key"),
    ([{"benchmark": {"evaluator": "ifevl"}, "max_drop": 1}], "domains[0].guard[0].benchmark.evaluator: unknown"),
    ([{"benchmark": {"evaluator": "gsm8k", "source": "./test.jsonl"}, "max_drop": 1}],
     "domains[0].guard[0].benchmark: reads the same problems as test; a guard must judge other data"),
    ([{"benchmark": {"evaluator": "gsm8k", "source": "val.jsonl"}, "max_drop": 1}],
     "domains[0].guard[0].benchmark: reads the same problems as validation"),
    ([{"benchmark": IFEVAL, "max_drop": 1}, {"benchmark": {**IFEVAL, "limit": 50}, "max_drop": 2}],
     "domains[0].guard[1].name: 'ifeval' repeats guard[0]; outputs are named by it"),
    ([{"benchmark": IFEVAL, "max_drop": 1, "name": "if/eval"}], "domains[0].guard[0].name: 'if/eval' is not usable"),
])
def test_a_bad_guard_is_one_line_naming_the_field(guard, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(_config(guard))
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_the_cli_refuses_a_bad_guard_with_exit_2_and_one_line(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(_config([{"benchmark": IFEVAL, "max_drop": -1}])))
    assert run(sweep_main, ["--config", str(path), "--dry-run"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: {path}: domains[0].guard[0].max_drop:")


def test_a_guard_is_named_by_its_evaluator_unless_named():
    cfg = parse_config(_config([{"benchmark": IFEVAL, "max_drop": 1}, {"benchmark": IFEVAL | {"limit": 5},
                                                                      "max_drop": 0, "name": "ifeval_small"}]))
    assert [g.label for g in cfg.domains[0].guard] == ["ifeval", "ifeval_small"]


def _guarded_searcher(name: str):
    """The sweep's searcher on an in-memory study, one guard: reference 0.60, 2 points tolerated."""
    storage = optuna.storages.InMemoryStorage()
    search = PrunedAwareOptunaSearch(space={"x": FloatDistribution(0.0, 1.0)}, metric="metric", mode="max",
                                     study_name=name, storage=storage)
    search._guards = [GuardLimit("ifeval", 0.60, 2.0)]
    return search, storage


def test_the_constraint_is_the_guards_drop_beyond_the_tolerated_one_at_the_best_report():
    # Reference 0.60, 2 points tolerated. Reports: 0.3 (guard 0.59), 0.5 (guard 0.55: 5 down, 3 too many),
    # 0.5 again (a tie: the earlier report stays the best) and 0.4. The trial's constraint is its best
    # report's, as its value is: +0.03 > 0, infeasible, which TPE reads from the trial.
    search, storage = _guarded_searcher("guarded")
    search.suggest("t1")
    for step, (metric, guard) in enumerate(((0.3, 0.59), (0.5, 0.55), (0.5, 0.60), (0.4, 0.61)), start=1):
        search.on_trial_result("t1", {"metric": metric, guard_metric("ifeval"): guard, "training_iteration": step})
    search.on_trial_complete("t1", {"metric": 0.4, guard_metric("ifeval"): 0.61, "training_iteration": 4})
    (trial,) = optuna.load_study(study_name="guarded", storage=storage).trials
    assert trial.value == 0.5 and trial.constraints == {"ifeval": pytest.approx(0.03)}
    assert GuardLimit("ifeval", 0.60, 2.0).violation(0.58) == 0.0  # exactly the tolerated drop: kept


def test_a_pruned_trial_carries_its_constraint_and_a_failed_one_none():
    search, storage = _guarded_searcher("pruned")
    for trial_id in ("pruned", "failed"):
        search.suggest(trial_id)
        search.on_trial_result(trial_id, {"metric": 0.2, guard_metric("ifeval"): 0.60, "training_iteration": 1})
    search.on_trial_complete("pruned", {"metric": 0.2, guard_metric("ifeval"): 0.60, "step": 1, "total_steps": 4})
    search.on_trial_complete("failed", error=True)
    pruned, failed = optuna.load_study(study_name="pruned", storage=storage).trials
    assert pruned.state.name == "PRUNED" and pruned.constraints == {"ifeval": pytest.approx(-0.02)}
    assert failed.state.name == "FAIL" and failed.constraints == {}


def test_a_trial_stopped_at_its_first_report_carries_that_reports_constraint():
    # Ray Tune gives the report that stops a trial to on_trial_complete alone, not on_trial_result
    search, storage = _guarded_searcher("stopped")
    search.suggest("stopped")
    search.on_trial_complete("stopped", {"metric": 0.2, guard_metric("ifeval"): 0.55, "step": 1, "total_steps": 4})
    (stopped,) = optuna.load_study(study_name="stopped", storage=storage).trials
    assert stopped.state.name == "PRUNED" and stopped.constraints == {"ifeval": pytest.approx(0.03)}


def _frame(rows: list[tuple[str, int, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"study": "b/d", "stage": "probe", "trial_id": t, "report": r, "status": "completed",
                          "metric": m, guard_metric("ifeval"): g, "mask_path": f"{t}-{r}"} for t, r, m, g in rows])


def test_selection_skips_a_trial_whose_best_report_breaks_a_guard():
    # t1 is best on validation but its best report drops the guard 10 points; its earlier,
    # guard-keeping report is not taken instead: a trial is its best report.
    frame = _frame([("t1", 1, 0.6, 0.60), ("t1", 2, 0.8, 0.50), ("t2", 1, 0.7, 0.59)])
    limits = [GuardLimit("ifeval", 0.60, 2.0)]
    assert [c.trial_id for c in best_candidates(frame, "b/d", "probe", 2)] == ["t1", "t2"]
    assert [(c.trial_id, c.mask_path) for c in best_candidates(frame, "b/d", "probe", 2, limits)] == [("t2", "t2-1")]


def _study(tmp_path, max_drop: float) -> SimpleNamespace:
    guard = GuardSpec(benchmark=EvalSpec(**IFEVAL), max_drop=max_drop)
    return SimpleNamespace(exp_dir=tmp_path, name="b/d", domain=SimpleNamespace(guard=[guard]))


def _guard_items(tmp_path, unmasked: list[float], best: list[float]) -> None:
    for variant, scores in (("unmasked", unmasked), ("best_mft", best)):
        add_items(items_path(tmp_path), "b/d", guard_split("ifeval"), variant, 0, "fraction", "IFEval, strict",
                  [(f"p{i}", s) for i, s in enumerate(scores)])


def test_selection_refuses_a_mask_that_breaks_a_guard_and_accepts_one_within_it(tmp_path):
    # 200 guard prompts, unmasked 60% right. One mask loses 20 of them (10 points, far beyond a
    # 2-point tolerance), the other loses 1 and gains 1 (no change): the same validation gain.
    unmasked = [1.0] * 120 + [0.0] * 80
    study = _study(tmp_path, max_drop=2.0)
    gain = paired_gain({i: 1.0 for i in range(300)}, {i: float(i >= 30) for i in range(300)}, seed=0)
    _guard_items(tmp_path, unmasked, [0.0] * 20 + [1.0] * 100 + [0.0] * 80)
    assert guard_limits(study) == [GuardLimit("ifeval", 0.6, 2.0)]
    (check,) = guard_checks(study)
    assert not check.kept and check.gain.high < -0.02
    selected, text = verdict(gain, 0.0, POINTS, 4, [check.broken])
    assert not selected and text.startswith("no mask selected, nothing exported as best: breaks guard ifeval: "
                                            "change -10.0 [")
    assert "is below -2 pts, the tolerated drop" in text and json.dumps(check.as_json())

    _guard_items(tmp_path, unmasked, [0.0] + [1.0] * 119 + [1.0] + [0.0] * 79)
    (check,) = guard_checks(study)
    assert check.kept and check.broken is None and "within the tolerated drop of 2 pts" in check.reason
    selected, text = verdict(gain, 0.0, POINTS, 4, [])
    assert selected and text.startswith("best MFT selected")


def test_a_guard_gain_without_an_interval_gives_no_assurance():
    one = paired_gain({"p": 1.0}, {"p": 1.0}, seed=0)
    kept, reason = guard_decision(one, 5.0, unit=POINTS)
    assert not kept and "gives no interval: score the guard on more items" in reason


def test_the_plan_lists_each_guard_and_counts_its_cost_per_report_and_in_evaluation():
    from transformers import LlamaConfig

    from mft_search.config.cost import DataSizes, cost_plan
    from mft_search.config.schema import describe_plan, load_config_file

    guard = "domains.0.guard=[{benchmark: {evaluator: ifeval}, max_drop: 1.5}]"
    llama = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=512, num_hidden_layers=32,
                        num_attention_heads=4, num_key_value_heads=4)
    plans = {}
    for sets, sizes in (([], DataSizes(6000, 120, 0, 1319)), ([guard], DataSizes(6000, 120, 0, 1319, (541,)))):
        cfg = load_config_file("search_spaces/llama3_1_8b_math.yaml", None, sets)
        study = cost_plan(cfg, {"llama3_1_8b_math_fft": llama}, {"math": sizes}, "h100").studies[0]
        plans[bool(sets)] = {run.kind: run for run in study.runs}
    text = describe_plan(cfg, {})
    assert "guard ifeval, domain math: ifeval (default data), tolerated drop 1.5 pts" in text
    assert "(one more benchmark per report); TPE and GP sample away from trials that break a guard" in text
    plain, guarded = plans[False], plans[True]
    extra = guarded["probe trial"].tokens_generated - plain["probe trial"].tokens_generated
    reports = 2  # one per epoch
    assert extra == reports * 541 * EvalSpec(evaluator="ifeval").generation().max_new_tokens
    assert guarded["seed re-run"].tokens_generated == plain["seed re-run"].tokens_generated  # unguarded
    assert guarded["evaluations"].tokens_generated - plain["evaluations"].tokens_generated == extra
    assert "1 guard(s) x2 models" in guarded["evaluations"].detail
