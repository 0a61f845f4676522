"""IFEval: every prompt's checkers run offline, and each of the 25 instruction types scores right."""

from __future__ import annotations

import socket

import pytest

from mft_search.core.evaluation.base import GenerationSettings
from mft_search.core.evaluation.instruction import (
    Following,
    IFEvalEvaluator,
    check_response,
    ifeval_metrics,
    prepare_offline_checkers,
)
from mft_search.demo.tiny import tiny_llama, tiny_tokenizer
from real_data import IFEVAL as DATA
from real_data import absent

DUMMY = [
    "",
    "Sure.\n\nHello WORLD, this is a reply. It has two sentences!\n***\n* a bullet\nP.S. done",
    '"<<Title>>\n{"json": [1, 2]}\nSECTION 1 end. Is there anything else I can help with?"',
]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import nltk

    monkeypatch.setattr(nltk, "download", refuse)


def test_all_prompts_load_and_every_checker_runs_offline(no_network):
    if not DATA.is_file():
        pytest.skip(absent(DATA, "IFEval"))
    prepare_offline_checkers.cache_clear()
    problems = IFEvalEvaluator().load(str(DATA))
    assert len(problems) == 541
    for response in DUMMY:
        results = [IFEvalEvaluator.score(p, response) for p in problems]
        metrics = ifeval_metrics(results)
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["prompt_strict_accuracy"] <= metrics["prompt_loose_accuracy"]


GERMAN = "Das Wetter ist heute sehr schön und wir gehen am Nachmittag mit den Kindern in den Park spazieren."
ENGLISH = "The weather is very nice today and we are going for a walk in the park with the children."
CASES = {
    "keywords:existence": (
        {"keywords": ["correlated", "experiencing"]},
        "Prices correlated while experiencing growth.",
        "Prices rose.",
    ),
    "keywords:frequency": (
        {"relation": "at least", "keyword": "story", "frequency": 2}, "A story in a story.", "One story."
    ),
    "keywords:forbidden_words": ({"forbidden_words": ["rock"]}, "I like jazz.", "I like rock music."),
    "keywords:letter_frequency": (
        {"let_relation": "at least", "letter": "z", "let_frequency": 3}, "zebra zoo zig", "zebra"
    ),
    "language:response_language": ({"language": "de"}, GERMAN, ENGLISH),
    "length_constraints:number_sentences": (
        {"relation": "less than", "num_sentences": 3}, "One. Two.", "One. Two. Three. Four."
    ),
    "length_constraints:number_paragraphs": ({"num_paragraphs": 2}, "First part.\n***\nSecond part.", "Only one part."),
    "length_constraints:number_words": ({"relation": "at least", "num_words": 5}, "one two three four five", "one two"),
    "length_constraints:nth_paragraph_first_word": (
        {"first_word": "weekend", "num_paragraphs": 2, "nth_paragraph": 2},
        "Intro here.\n\nWeekend plans are fun.",
        "Intro here.\n\nMonday plans are dull.",
    ),
    "detectable_content:number_placeholders": ({"num_placeholders": 2}, "Meet [name] at [address].", "Meet [name]."),
    "detectable_content:postscript": ({"postscript_marker": "P.S."}, "Hi there.\nP.S. See you.", "Hi there."),
    "detectable_format:number_bullet_lists": ({"num_bullets": 2}, "* apples\n* pears", "* apples\n* pears\n* plums"),
    "detectable_format:constrained_response": ({}, "My answer is yes.", "Perhaps."),
    "detectable_format:number_highlighted_sections": ({"num_highlights": 2}, "*one* and *two*", "*one* only"),
    "detectable_format:multiple_sections": (
        {"section_spliter": "SECTION", "num_sections": 2},
        "SECTION 1\nalpha\nSECTION 2\nbeta",
        "SECTION 1\nalpha",
    ),
    "detectable_format:json_format": ({}, '```json\n{"a": 1}\n```', "a: 1"),
    "detectable_format:title": ({}, "<<Ode to Rain>>\nIt rains.", "Ode to Rain\nIt rains."),
    "combination:two_responses": ({}, "Answer one.\n******\nAnswer two.", "Answer one."),
    "combination:repeat_prompt": ({"prompt_to_repeat": "Say hi to Bob."}, "Say hi to Bob. Hi, Bob!", "Hi, Bob!"),
    "startend:end_checker": (
        {"end_phrase": "Any other questions?"}, "Done. Any other questions?", "Any other questions? Done."
    ),
    "change_case:capital_word_frequency": (
        {"capital_relation": "less than", "capital_frequency": 2},
        "we are FINE today.",
        "WE ARE FINE TODAY.",
    ),
    "change_case:english_capital": ({}, ENGLISH.upper(), ENGLISH),
    "change_case:english_lowercase": ({}, ENGLISH.lower(), ENGLISH),
    "punctuation:no_comma": ({}, "No commas here.", "Yes, one comma."),
    "startend:quotation": ({}, '"All quoted."', "Not quoted."),
}


def test_cases_cover_all_25_types():
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    assert set(CASES) == set(INSTRUCTION_DICT) and len(CASES) == 25


@pytest.mark.parametrize("compliant", [True, False], ids=["compliant", "violating"])
@pytest.mark.parametrize("instruction_id", sorted(CASES))
def test_instruction_type_scored_right(instruction_id, compliant):
    kwargs, good, bad = CASES[instruction_id]
    following = check_response("", [instruction_id], [kwargs], good if compliant else bad)
    assert following.strict == (compliant,)
    if compliant:
        assert following.loose == (True,)


def test_loose_forgives_a_trailing_line_and_asterisks():
    end = check_response("", ["startend:end_checker"], [{"end_phrase": "Bye."}], "Done. Bye.\nThanks for asking")
    quote = check_response("", ["startend:quotation"], [{}], '**"All quoted."**')
    assert end == quote == Following(strict=(False,), loose=(True,))


def test_empty_response_fails_every_instruction():
    result = check_response("", ["punctuation:no_comma", "startend:quotation"], [{}, {}], "  ")
    assert result == Following(strict=(False, False), loose=(False, False))
    metrics = ifeval_metrics([result, Following(strict=(True,), loose=(True,))])
    assert metrics["instruction_strict_accuracy"] == pytest.approx(1 / 3)
    assert metrics["prompt_strict_accuracy"] == 0.5


def test_evaluator_end_to_end_on_a_tiny_model():
    if not DATA.is_file():
        pytest.skip(absent(DATA, "IFEval"))
    evaluator = IFEvalEvaluator()
    problems = evaluator.load(str(DATA), limit=6)
    settings = GenerationSettings(max_new_tokens=8, batch_size=3)
    result = evaluator.evaluate(tiny_llama(layers=2), tiny_tokenizer(), problems, settings)
    assert evaluator.metric in result.metrics and all(0.0 <= v <= 1.0 for v in result.metrics.values())
    assert [i for i, _ in result.items] == [p.id for p in problems]
    assert sum(s for _, s in result.items) / 6 == result.metrics[evaluator.metric]
    assert result.settings.startswith("IFEval input_data.jsonl, 0-shot, prompt-level strict")
