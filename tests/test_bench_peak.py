"""The peak benchmark's verdict on made-up per-item scores (no training): paired differences,
the sweep's pick of the best point, and a pass only when the peak holds on both splits."""

import math

import pytest

from mft_search.bench.peak import Curve, Paired, report


def items(*scores: float) -> dict:
    return {str(i): s for i, s in enumerate(scores)}


def test_the_paired_difference_is_the_mean_of_per_item_differences_with_their_standard_error():
    diff = Paired.of(items(1, 1, 0, 1), items(0, 1, 0, 0))  # differences 1, 0, 0, 1
    assert diff.mean == 0.5 and diff.se == pytest.approx(math.sqrt(1 / 3) / 2)
    assert diff.z == pytest.approx(0.5 / diff.se)
    assert Paired.of(items(1, 0), items(1, 0)).z == 0.0  # no difference at all: no evidence


def curve(*accuracies: float, validation: tuple[float, float] = (1.0, 0.0), n: int = 100) -> Curve:
    """Points whose first round(a * n) items are right; validation at best and final likewise."""
    def scored(a: float) -> dict:
        return items(*[1.0 if i < round(a * n) else 0.0 for i in range(n)])
    return Curve([2.0 * (i + 1) for i in range(len(accuracies))], [scored(a) for a in accuracies],
                 scored(validation[0]), scored(validation[1]), 1.0)


def test_the_best_point_is_the_earliest_of_the_highest_as_the_sweep_picks_it():
    c = curve(0.1, 0.4, 0.2, 0.4, 0.3)
    assert c.best == 1 and c.accuracy == pytest.approx([0.1, 0.4, 0.2, 0.4, 0.3])
    assert c.last_quarter() == pytest.approx(0.3)  # 5 points: the last one


def test_a_peak_passes_only_when_best_beats_final_by_two_standard_errors_on_both_splits():
    row, ok = report(0, curve(0.1, 0.5, 0.2, validation=(0.5, 0.2)))
    assert ok and row.startswith("| 0 | 50.0 (4) | 20.0 | +30.0")
    assert not report(0, curve(0.1, 0.5, 0.2, validation=(0.3, 0.3)))[1]  # gone on validation: selection's luck
    assert not report(0, curve(0.1, 0.5, 0.49, validation=(0.5, 0.2)))[1]  # a plateau on selection


def test_problems_are_sorted_by_what_the_fine_tuning_data_lacks(tmp_path):
    import json
    import random

    from mft_search.bench.peak import by_kind, problem_kinds
    from mft_search.demo.problems import OTHER_PHRASINGS, TRAIN_PHRASINGS, word_problem

    rng = random.Random(0)
    problems = [word_problem(rng, 2, TRAIN_PHRASINGS), word_problem(rng, 2, OTHER_PHRASINGS),
                word_problem(rng, 3, TRAIN_PHRASINGS), word_problem(rng, 2, TRAIN_PHRASINGS)]
    path = tmp_path / "selection.jsonl"
    path.write_text("".join(json.dumps(p.record()) + "\n" for p in problems))
    kinds = problem_kinds(path)
    assert kinds == {"0": "2 steps, fine-tuning phrasings", "1": "2 steps, other phrasings", "2": "3 steps",
                     "3": "2 steps, fine-tuning phrasings"}
    assert problem_kinds(path, limit=2).keys() == {"0", "1"}
    lines = by_kind(Curve([1.0, 2.0], [items(0, 1, 0, 1), items(1, 1, 0, 1)], {}, {}, 1.0), kinds)
    assert lines == ["  2 steps, fine-tuning phrasings (2): 50.0 100.0", "  2 steps, other phrasings (1): 100.0 100.0",
                     "  3 steps (1): 0.0 0.0"]


def test_a_config_without_an_fft_stage_is_refused_naming_it():
    from mft_search.bench.peak import run

    with pytest.raises(SystemExit) as stop:
        run(argv=["--config", "search_spaces/llama3_1_8b_math.yaml"])
    assert stop.value.code == 2
