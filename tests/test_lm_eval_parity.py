"""Parity with lm-evaluation-harness itself, not with a copy of its rules.

lm-eval's own gsm8k.yaml is loaded from the installed package and built into its ConfigurableTask
(its filters, its exact_match with the YAML's arguments, its few-shot sampler), over the GSM8K
files on disk rather than the hub. The same outputs are scored by it and by the project, per item,
under both filters; the 5-shot prompts are compared as text and as chat turns. IFEval: lm-eval's
ifeval `process_results` against the project's checkers on the same responses.
"""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import pytest

from mft_search.core.evaluation.math import GSM8KEvaluator, gsm8k_reference, score_gsm8k
from real_data import GSM8K, IFEVAL, absent

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is a test dependency: pip install -e '.[test]'")

FILTERS = {"strict": "strict-match", "flexible": "flexible-extract"}  # ours: lm-eval's filter names


@pytest.fixture
def offline(monkeypatch):
    """Every socket refused: nothing here may reach the network."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def gsm8k_data(problems_dir) -> Path:
    """The real GSM8K files when present, else the generated problems (same format)."""
    return GSM8K if (GSM8K / "test.jsonl").is_file() else problems_dir


@pytest.fixture(scope="module")
def task(gsm8k_data):
    """lm-eval's gsm8k task, from its own YAML, reading the train and test files on disk."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", _refuse)
        return _lm_eval_gsm8k(gsm8k_data)


def _refuse(*args, **kwargs):
    raise OSError("network access attempted in an offline test")


def _lm_eval_gsm8k(data: Path):
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml")
    assert config["metadata"]["version"] == 3.0 and config["num_fewshot"] == 5
    files = {"train": str(data / "train.jsonl"), "test": str(data / "test.jsonl")}
    config.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files})
    return ConfigurableTask(config=config)


def _lm_eval_scores(task, rows: list[dict], outputs: list[str]) -> dict[str, list[float]]:
    """lm-eval's per-item exact_match of each output, under each of its filters."""
    from lm_eval.api.instance import Instance

    instances = []
    for i, (row, output) in enumerate(zip(rows, outputs)):
        instance = Instance(request_type="generate_until", doc=row, arguments=("", {}), idx=0,
                            metadata=("gsm8k", i, 1))
        instance.resps = [output]
        instances.append(instance)
    task._instances = instances
    task.apply_filters()
    return {ours: [float(task.process_results(x.doc, [x.filtered_resps[theirs]])["exact_match"]) for x in instances]
            for ours, theirs in FILTERS.items()}


def _variants(gold: str, rng: random.Random) -> list[str]:
    """Outputs that probe every rule: commas, $, trailing periods, negatives, decimals, several
    "####", text after the answer, leading zeros, no number at all."""
    n = int(gold)
    other = str(n + rng.randint(1, 9))
    commas = f"{n:,}"
    return [
        f"Step one.\n#### {gold}", f"#### {gold}.", f"#### ${gold}", f"####{gold}", f"#### {commas}",
        f"#### {gold}.00", f"#### {gold}.0.", f"#### {gold}.5", f"#### -{gold}", f"#### {gold}\n#### {other}",
        f"#### {other}\n#### {gold}", f"The answer is {gold}.", f"The answer is ${commas}.",
        f"{gold} apples and then {other} more", f"#### {gold} dollars, 7 cents", f"So {gold}.\n\nQuestion: x",
        f"#### 0{gold}", f"#### {gold},", f"#### {gold}.\nThe end.", "no number here", "", f"#### {gold}!",
        f"{other} + 1 = {gold}\n#### {gold}", f"{gold}%", f"#### 1,{gold}", f"# {gold}", f"#### {gold.upper()}x",
        f"#### -{other}\nso {gold}", f"$ {gold}", f"Answer: {gold}.\n", f"#### {gold[:-1] or '0'}",
    ]


def test_gsm8k_scores_equal_lm_evals_per_item_under_both_filters(offline, task, gsm8k_data):
    references = [json.loads(line) for line in (gsm8k_data / "test.jsonl").read_text().splitlines()[:40]]
    rng = random.Random(0)
    rows, outputs = [], []
    for row in references:
        for output in _variants(gsm8k_reference(row["answer"]), rng):
            rows.append(row)
            outputs.append(output)
    theirs = _lm_eval_scores(task, rows, outputs)
    for name in FILTERS:
        ours = [score_gsm8k(o, r["answer"], name) for o, r in zip(outputs, rows)]
        disagree = [(o, r["answer"][-20:]) for o, r, a, b in zip(outputs, rows, ours, theirs[name]) if a != b]
        assert not disagree, f"{name}: {len(disagree)} of {len(ours)} differ, e.g. {disagree[:3]}"
        # Neither all right nor all wrong: the outputs exercise both verdicts.
        assert 0.2 < sum(ours) / len(ours) < 0.8
    assert len(outputs) == 31 * len(references) == 1240


MODEL_OUTPUTS = Path(__file__).parent / "data" / "gsm8k_model_outputs.jsonl"  # tests/make_model_outputs.py


def test_gsm8k_scores_of_real_models_outputs_equal_lm_evals(offline, task):
    """Real greedy outputs (the demo's best FFT on its test problems, SmolLM2-135M-Instruct 5-shot
    on GSM8K): run-on text, repeated questions and numbers in the working, as a sweep meets them."""
    records = [json.loads(line) for line in MODEL_OUTPUTS.read_text().splitlines()]
    rows = [{"question": "", "answer": r["answer"]} for r in records]
    outputs = [r["output"] for r in records]
    theirs = _lm_eval_scores(task, rows, outputs)
    for name in FILTERS:
        ours = [score_gsm8k(o, r["answer"], name) for o, r in zip(outputs, rows)]
        disagree = [(o[-60:], r["answer"][-12:]) for o, r, a, b in zip(outputs, rows, ours, theirs[name]) if a != b]
        assert not disagree, f"{name}: {len(disagree)} of {len(ours)} differ, e.g. {disagree[:3]}"
        right = {m: sum(s for s, r in zip(ours, records) if r["model"] == m) for m in {r["model"] for r in records}}
        # both verdicts occur; the README quotes these counts
        assert right == {"demo tiny-llama, best FFT": 59, "SmolLM2-135M-Instruct": 0}
    assert len(records) == 240


def test_gsm8k_5_shot_prompts_equal_lm_evals(offline, task, gsm8k_data):
    """The same test items get the same 5 examples in the same words, as text and as chat turns."""
    data = gsm8k_data
    docs = list(task.test_docs())[:20]
    ours = GSM8KEvaluator(num_fewshot=5, fewshot_source=str(data / "train.jsonl")).load(str(data / "test.jsonl"),
                                                                                        limit=20)
    task.set_fewshot_seed(1234)  # lm-eval's default fewshot_random_seed
    assert [task.fewshot_context(doc, 5) for doc in docs] == [p.prompt for p in ours]
    turns = []
    task.set_fewshot_seed(1234)
    for doc in docs:
        task.fewshot_context(doc, 5, apply_chat_template=True, fewshot_as_multiturn=True,
                             chat_template=lambda messages, **_: turns.append(messages) or "")
    assert turns == [list(p.turns) for p in ours]
    assert ours[0].prompt.count("Question:") == 6


def _responses(prompt: str) -> list[str]:
    """Responses that pass some checkers and fail others: case, commas, sections, JSON, endings."""
    return [
        prompt.lower().replace(",", ""),
        f"<<Title>>\n\n*highlighted* part\n\nSECTION 1\n{prompt.upper()}\n\nP.S. done.\n***\nIs there anything else I can help with?",
        json.dumps({"answer": prompt[:80]}),
        "* one\n* two\n* three\n\n" + " ".join(["word"] * 320),
    ]


def _draws_a_letter(doc: dict) -> bool:
    letters = [kw.get("letter") for kw in doc["kwargs"]]
    return any(letter is not None and not (len(letter) == 1 and letter.isascii() and letter.isalpha())
               for letter in letters)


def test_ifeval_verdicts_equal_lm_evals(offline):
    if not IFEVAL.is_file():
        pytest.skip(absent(IFEVAL, "IFEval"))
    from mft_search.core.evaluation.instruction import check_response, prepare_offline_checkers

    prepare_offline_checkers()  # lm-eval's import looks for punkt_tab first, and downloads only when absent
    from lm_eval.tasks.ifeval.utils import process_results

    docs = [json.loads(line) for line in IFEVAL.read_text().splitlines()]
    compared = 0
    for i, doc in enumerate(docs):
        kinds = _responses(doc["prompt"])  # two of the four per prompt: lm-eval's scoring is slow
        for response in (kinds[i % 4], kinds[(i + 2) % 4]):
            # A letter_frequency checker whose letter is not one ("#" in 1122, "!" in 1129) draws a
            # random letter: ours once from random.seed(0), lm-eval once for strict, again for loose.
            random.seed(0)
            theirs = process_results(doc, [response])
            ours = check_response(doc["prompt"], doc["instruction_id_list"], doc["kwargs"], response)
            assert list(ours.strict) == theirs["inst_level_strict_acc"], (doc["key"], response)
            assert all(ours.strict) == theirs["prompt_level_strict_acc"]
            if not _draws_a_letter(doc):
                assert list(ours.loose) == theirs["inst_level_loose_acc"], (doc["key"], response)
                assert all(ours.loose) == theirs["prompt_level_loose_acc"]
            compared += 1
    assert compared == 2 * len(docs) == 1082 and sum(map(_draws_a_letter, docs)) == 2


def test_defaults_are_lm_evals_task_definitions():
    """What an EvalSpec leaves out is what lm-eval's installed task YAMLs say."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from mft_search.core.evaluation.spec import EvalSpec

    tasks = Path(lm_eval.__file__).parent / "tasks"
    gsm8k = load_yaml(tasks / "gsm8k" / "gsm8k.yaml")
    spec = EvalSpec(evaluator="gsm8k")
    assert (spec.shots(), spec.fewshot_split) == (gsm8k["num_fewshot"], gsm8k["fewshot_split"])
    assert spec.generation().stop == tuple(gsm8k["generation_kwargs"]["until"])
    assert spec.filters() == ("strict", "flexible") and [f["name"] for f in gsm8k["filter_list"]] == list(FILTERS.values())
    ifeval = load_yaml(tasks / "ifeval" / "ifeval.yaml", resolve_func=False)
    assert EvalSpec(evaluator="ifeval").generation().max_new_tokens == ifeval["generation_kwargs"]["max_gen_toks"]
    humaneval = load_yaml(tasks / "humaneval" / "humaneval.yaml", resolve_func=False)
    from mft_search.core.evaluation.conventions import CODE_STOP

    assert CODE_STOP == tuple(humaneval["generation_kwargs"]["until"])
    assert EvalSpec(evaluator="humaneval").generation().max_new_tokens == humaneval["generation_kwargs"]["max_gen_toks"]
