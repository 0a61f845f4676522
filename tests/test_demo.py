"""The embedded demo: seeded correct problems, disjoint splits, demo.yaml, and a cache that never lies."""

import json
import os
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mft_search.config.schema import load_config_file
from mft_search.demo import DemoSize, PretrainSettings, build_demo, default_cache_dir, sft_data_spec
from mft_search.demo.problems import ALL_PHRASINGS, TRAIN_PHRASINGS, make_splits
from mft_search.core.evaluation.math import GSM8KEvaluator, gsm8k_reference

DEMO_YAML = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"
MICRO = DemoSize(train=16, fft_selection=8, validation=8, test=8, documents=200, vocab_size=300, hidden=32, layers=2,
                 intermediate=64, pretrain=PretrainSettings(steps=3, batch_size=4, seq_len=64), max_new_tokens=4,
                 instruct=0)  # the pre-trained base alone: the instruction-tuning test adds its own


def _pattern(template: str) -> re.Pattern:
    text = re.escape(template).replace(r"\{n\}", r"(\d+)")
    return re.compile(re.sub(r"\\\{\w+\\\}", r"\\w+", text) + "$")


def recompute(question: str, phrasings) -> int:
    """The answer read off the question alone: start, then each sentence's signed change."""
    sentences = re.findall(r"[^.?]+[.?]", question)
    total = int(re.search(r"has (\d+)", sentences[0]).group(1))
    for sentence in sentences[1:-1]:
        (sign, n), = [(s, int(m.group(1))) for t, s in phrasings if (m := _pattern(t).match(sentence.strip()))]
        total += sign * n
    return total


def test_the_generator_is_seeded_and_deterministic():
    assert make_splits(3, 20, 10, 10, 10) == make_splits(3, 20, 10, 10, 10)
    assert make_splits(3, 20, 10, 10, 10).train != make_splits(4, 20, 10, 10, 10).train


def test_every_answer_is_the_arithmetic_of_its_question_and_its_steps_are_right():
    splits = make_splits(0, 256, 500, 500, 500)
    held_out = splits.fft_selection + splits.validation + splits.test
    for phrasings, problems in ((TRAIN_PHRASINGS, splits.train), (ALL_PHRASINGS, held_out)):
        for p in problems:
            assert int(gsm8k_reference(p.answer)) == recompute(p.question, phrasings) == p.value
            for a, op, d, b in re.findall(r"(\d+) ([+-]) (\d+) = (\d+)\.", p.answer):
                assert int(b) == int(a) + (int(d) if op == "+" else -int(d)) and 0 <= int(b)
            assert p.answer.startswith(" ")  # prompt + answer tokenise as prompt then completion


def test_splits_are_disjoint_and_held_out_problems_are_broader():
    splits = make_splits(0, 256, 500, 500, 500)
    questions = [{p.question for p in s} for s in (splits.train, splits.fft_selection, splits.validation, splits.test)]
    assert [len(q) for q in questions] == [256, 500, 500, 500]
    assert not any(a & b for i, a in enumerate(questions) for b in questions[i + 1:])
    assert {len(p.steps) for p in splits.train} == {2}
    assert {len(p.steps) for p in splits.test} == {2, 3}


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    logged = []
    assets = build_demo(tmp_path_factory.mktemp("cache") / "v1", size=MICRO, log=logged.append)
    return assets, logged


def test_a_micro_build_writes_every_asset_and_its_facts(micro):
    assets, logged = micro
    assert (assets.pretrained / "model.safetensors").exists() and (assets.pretrained / "tokenizer.json").exists()
    assert not (assets.root / "backbone").exists()  # the sweep's fft stage fine-tunes, not the build
    assert len(assets.fft_selection.read_text().splitlines()) == MICRO.fft_selection
    facts = assets.facts()
    assert facts["pretrain"]["steps"] == 3 and facts["seed"] == 0 and "fft" not in facts
    assert any("Pre-training" in line for line in logged)
    problems = GSM8KEvaluator(num_fewshot=0).load(str(assets.test))  # the demo evaluates 0-shot
    assert [gsm8k_reference(p.reference) for p in problems] == [json.loads(r)["answer"].rsplit("#### ", 1)[1]
                                                for r in assets.test.read_text().splitlines()]


def test_an_instruction_tuned_build_fine_tunes_the_base_on_broad_problems_and_keeps_the_other_splits(micro,
                                                                                                    tmp_path):
    import dataclasses

    from safetensors.torch import load_file

    plain, _ = micro
    logged = []
    size = dataclasses.replace(MICRO, instruct=24, instruct_epochs=1)
    tuned = build_demo(tmp_path / "instruct", size=size, log=logged.append)
    rows = [json.loads(line) for line in tuned.instruct.read_text().splitlines()]
    held_out = {json.loads(line)["question"] for split in (tuned.train, tuned.fft_selection, tuned.validation,
                                                          tuned.test) for line in split.read_text().splitlines()}
    assert len(rows) == 24 and not {r["question"] for r in rows} & held_out
    steps = {r["answer"].count(" = ") for r in rows}
    assert steps <= {1, 2, 3} and len(steps) > 1  # broad: more than the fine-tuning data's two steps
    for split in ("train", "fft_selection", "validation", "test"):  # drawn before it: the same problems
        assert getattr(tuned, split).read_text() == getattr(plain, split).read_text()
    # the fft stage's start is the instruction-tuned model: the same pre-training and tokenizer, other weights
    assert tuned.facts()["pretrain"]["final_loss"] == plain.facts()["pretrain"]["final_loss"]
    assert (tuned.pretrained / "tokenizer.json").read_text() == (plain.pretrained / "tokenizer.json").read_text()
    before, after = load_file(plain.pretrained / "model.safetensors"), load_file(tuned.pretrained / "model.safetensors")
    assert before.keys() == after.keys() and any(not before[k].equal(after[k]) for k in before)
    facts = tuned.facts()
    assert facts["instruct"]["problems"] == 24 and facts["instruct"]["final_train_loss"] > 0
    assert any(line.startswith("Instruction-tuning") for line in logged)
    assert any(line.startswith("  instruction-tuning epoch 1/1: training loss ") for line in logged)  # progress
    assert sorted(p.name for p in tuned.root.iterdir()) == sorted(
        [".complete", "facts.json", "fft_selection.jsonl", "instruct.jsonl", "pretrained", "test.jsonl",
         "train.jsonl", "validation.jsonl"])  # the tuning run's own files are gone


def test_the_build_command_refuses_a_cache_built_otherwise(micro, capsys):
    from mft_search import cli
    from mft_search.demo.__main__ import main

    plain, _ = micro  # instruction-tuned on 0 problems; the command's default is the demo's 2000
    assert DemoSize().instruct == 2000
    assert cli.run(main, [str(plain.root)]) == 2
    assert "--instruct 2000: " in capsys.readouterr().err and (plain.root / ".complete").exists()
    assert cli.run(main, [str(plain.root), "--instruct", "0"]) == 0


def test_prompt_and_answer_tokenise_as_at_evaluation(micro):
    assets, _ = micro
    tokenizer = AutoTokenizer.from_pretrained(assets.pretrained)
    for row in map(json.loads, assets.validation.read_text().splitlines()):
        prompt = sft_data_spec(assets.train).template.format(prompt=row["question"])
        assert tokenizer(prompt).input_ids + tokenizer(row["answer"]).input_ids == \
            tokenizer(prompt + row["answer"]).input_ids


def test_a_complete_build_is_reused_and_an_unmarked_one_rebuilt(micro, tmp_path):
    assets, _ = micro
    logged = []
    assert build_demo(assets.root, size=MICRO, log=logged.append) == assets and logged == []
    root = tmp_path / "v1"
    root.mkdir()
    (root / "leftover").write_text("half a build")
    abandoned = tmp_path / "v1.building-999999999"  # no such process: a killed build
    abandoned.mkdir()
    rebuilt = build_demo(root, size=MICRO, log=logged.append)
    assert (rebuilt.root / ".complete").exists() and not (root / "leftover").exists()
    assert not abandoned.exists() and logged


def test_a_failed_build_leaves_nothing_that_looks_built(tmp_path):
    def fail_at_pre_training(line):
        if line.startswith("Pre-training"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_demo(tmp_path / "v2", size=MICRO, log=fail_at_pre_training)
    assert os.listdir(tmp_path) == []


def test_demo_yaml_fine_tunes_the_pretrained_base_and_masks_on_the_same_data():
    cfg = load_config_file(DEMO_YAML)
    cache = default_cache_dir()
    domain = cfg.domains[0]
    assert Path(cfg.backbones[0].source) == cache / "pretrained" and cfg.stages.fft.train.epochs == 16
    assert cfg.stages.fft.train.lr == 1e-4  # a tenth of the rate that plateaus from the plain base (README)
    assert Path(domain.fft_selection.source) == cache / "fft_selection.jsonl"
    assert cfg.caveats(domain) == []
    assert domain.train == sft_data_spec(cache / "train.jsonl").model_copy(update={"source": domain.train.source})
    assert Path(domain.train.source) == cache / "train.jsonl"
    assert Path(domain.validation.source) == cache / "validation.jsonl"
    assert Path(domain.test.source) == cache / "test.jsonl"
    assert domain.validation.max_new_tokens == MICRO.__class__().max_new_tokens
    assert set(cfg.baselines) == {"unmasked", "random", "l1", "wanda", "revert", "lora", "continued_fft"}
    assert cfg.lora.train.epochs == 16 and cfg.pretrained_missing(cfg.backbones[0]) is None
