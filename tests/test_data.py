"""The SFT data layer on generated GSM8K-format files (and the real GSM8K, where present) and the offline
tiny tokenizer: no hub, no Ray."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
import torch
from pydantic import ValidationError

from mft_search.core.data import (
    IGNORE,
    DataSpec,
    collate,
    fingerprint,
    iterate_batches,
    load_examples,
    select_examples,
    shard_indices,
    split_train_validation,
    tokenize_examples,
    tokenized_dataset,
    tokenizer_fingerprint,
)
from mft_search.core.data import cache as cache_module
from mft_search.core.data import load as load_module
from mft_search.errors import ConfigError, DataError
from mft_search.demo.tiny import tiny_llama, tiny_tokenizer
from real_data import GSM8K, absent

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}</s>{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

needs_real_gsm8k = pytest.mark.skipif(not (GSM8K / "train.jsonl").exists(), reason=absent(GSM8K, "GSM8K"))


def question_answer_spec(source: Path, **kw) -> DataSpec:
    """A DataSpec on GSM8K's columns; `kw` may name another source."""
    return DataSpec(**{"source": str(source), "prompt_field": "question", "response_field": "answer", **kw})


@pytest.fixture(scope="module")
def sft_spec(problems_dir):
    """DataSpec(**kw) on the generated train.jsonl (conftest.py): question/answer columns, as GSM8K's."""
    return lambda **kw: question_answer_spec(**{"source": problems_dir / "train.jsonl", **kw})


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def rows(sft_spec) -> datasets.Dataset:
    return load_examples(sft_spec(limit=64))


def labelled(row) -> list[int]:
    return [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE]


# --- spec and loading ------------------------------------------------------------------------


@needs_real_gsm8k
def test_load_gsm8k_jsonl():
    assert len(load_examples(question_answer_spec(GSM8K / "train.jsonl"))) == 7473
    rows = load_examples(question_answer_spec(GSM8K / "train.jsonl", limit=64))
    assert rows.column_names == ["question", "answer"] and len(rows) == 64
    assert rows[0]["question"].startswith("Natalia sold clips")


def test_directory_source_picks_split_by_file_name(problems_dir):
    spec = DataSpec(source=str(problems_dir), split="test", prompt_field="question", response_field="answer")
    lines = {split: len((problems_dir / f"{split}.jsonl").read_text().splitlines()) for split in ("train", "test")}
    assert lines["test"] != lines["train"]  # the count tells which file was read
    assert len(load_examples(spec)) == lines["test"]
    with pytest.raises(DataError, match="data.split: 'dev' not in"):
        load_examples(spec.model_copy(update={"split": "dev"}))


def test_missing_column_names_the_field_and_the_choices(sft_spec):
    with pytest.raises(DataError) as err:
        load_examples(sft_spec(prompt_field="prompt", limit=4))
    assert "data.prompt_field: column 'prompt' not in ['question', 'answer']" in str(err.value)
    with pytest.raises(DataError, match="data.response_field: column 'output'"):
        load_examples(sft_spec(response_field="output", limit=4))


def test_missing_path_and_empty_glob_are_data_errors(tmp_path, sft_spec):
    with pytest.raises(DataError, match="data.source: '.*nope.jsonl' does not exist"):
        load_examples(sft_spec(source=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match="data.source: glob"):
        load_examples(sft_spec(source=str(tmp_path / "*.parquet")))


def test_hub_ids_go_to_load_dataset_with_subset_split_revision(monkeypatch, rows, sft_spec):
    calls = []
    monkeypatch.setattr(load_module.datasets, "load_dataset", lambda *a, **kw: calls.append((a, kw)) or rows)
    spec = sft_spec(source="openai/gsm8k", subset="main", split="test", revision="abc123")
    assert len(load_examples(spec)) == 64
    assert calls == [(("openai/gsm8k", "main"), {"split": "test", "revision": "abc123"})]


def test_spec_rejects_unknown_keys_and_bad_formats(sft_spec):
    with pytest.raises(ValidationError, match="extra"):
        sft_spec(prompt_column="question")
    with pytest.raises(ValidationError, match="prompt_field and response_field"):
        DataSpec(source="x", prompt_field="question")
    with pytest.raises(ValidationError, match="not both"):
        sft_spec(messages_field="messages")
    with pytest.raises(ValidationError, match="data.template"):
        sft_spec(template="Q: {question}\nA: ")
    with pytest.raises(ValidationError, match="keep one"):
        sft_spec(validation_split="test", validation_fraction=0.1)


def test_parquet_arrow_and_saved_directory_inputs(tmp_path, rows, sft_spec):
    rows.to_parquet(tmp_path / "part.parquet")
    with pa.OSFile(str(tmp_path / "part.arrow"), "wb") as sink:  # datasets' .arrow: an IPC stream
        with pa.ipc.new_stream(sink, rows.data.table.schema) as writer:
            writer.write_table(rows.data.table)
    rows.save_to_disk(str(tmp_path / "saved"))
    for source in ("part.parquet", "part.arrow", "saved", "*.parquet"):
        loaded = load_examples(sft_spec(source=str(tmp_path / source)))
        assert loaded.to_dict() == rows.to_dict(), source


def test_fraction_and_validation_carve_out_are_seeded(rows, sft_spec):
    spec = sft_spec(validation_fraction=0.25, fraction=0.5, seed=3)
    train, val = split_train_validation(rows, spec)
    again_train, again_val = split_train_validation(rows, spec)
    assert (len(train), len(val)) == (24, 16)
    assert train["question"] == again_train["question"] and val["question"] == again_val["question"]
    assert not set(train["question"]) & set(val["question"])
    _, full_val = split_train_validation(rows, spec.model_copy(update={"fraction": 1.0}))
    assert full_val["question"] == val["question"]  # validation does not move with fraction
    other, _ = split_train_validation(rows, spec.model_copy(update={"seed": 4}))
    assert other["question"] != train["question"]
    with pytest.raises(DataError, match="data.validation_fraction"):
        select_examples(sft_spec(limit=8), "validation")


# --- formatting and labels -------------------------------------------------------------------


def test_labels_cover_exactly_the_response_and_eos(tok, rows, sft_spec):
    spec = sft_spec(max_length=4096)
    ds = tokenize_examples(rows.select(range(8)), spec, tok)
    for row, source in zip(ds, rows):
        prompt = tok(spec.template.format(prompt=source["question"]))["input_ids"]
        assert row["input_ids"][: len(prompt)] == prompt
        assert row["labels"][: len(prompt)] == [IGNORE] * len(prompt)
        assert tok.decode(labelled(row)) == source["answer"] + "</s>"
        assert row["truncated"] == 0


def test_messages_use_the_chat_template(tmp_path, rows):
    chat_tok = tiny_tokenizer()
    chat_tok.chat_template = CHAT_TEMPLATE
    path = tmp_path / "chat.jsonl"
    conversations = [
        [
            {"role": "system", "content": "Solve it."},
            {"role": "user", "content": r["question"]},
            {"role": "assistant", "content": r["answer"]},
        ]
        for r in rows.select(range(4))
    ]
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    spec = DataSpec(source=str(path), messages_field="messages", max_length=4096)
    ds = tokenize_examples(load_examples(spec), spec, chat_tok)
    for row, conv in zip(ds, conversations):
        prompt = chat_tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab == IGNORE])
        assert prompt == f"<|system|>Solve it.\n<|user|>{conv[1]['content']}\n<|assistant|>"
        assert chat_tok.decode(labelled(row)) == conv[2]["content"] + "</s>\n"  # template's own eos
    plain = spec.model_copy(update={"use_chat_template": False})
    row = tokenize_examples(load_examples(plain), plain, chat_tok)[0]
    assert chat_tok.decode(row["input_ids"]).startswith(f"Question: Solve it.\n{conversations[0][1]['content']}")


def test_conversation_must_end_with_the_assistant(tmp_path, tok):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    spec = DataSpec(source=str(path), messages_field="messages")
    with pytest.raises(DataError, match="data.messages_field: .* ends with role 'user'"):
        tokenize_examples(load_examples(spec), spec, tok)


def test_truncation_keeps_the_prompt_start_and_counts(tok, rows, sft_spec):
    cut_at = 100  # the generated prompts run 42-113 tokens: some are dropped, some cut, some fit whole
    long = tokenize_examples(rows, sft_spec(max_length=4096), tok)
    short = tokenize_examples(rows, sft_spec(max_length=cut_at), tok)
    prompt_lengths = [row["labels"].index(next(x for x in row["labels"] if x != IGNORE)) for row in long]
    kept = [row for row, p in zip(long, prompt_lengths) if p < cut_at]
    assert len(short) == len(kept) < len(long)  # prompts of cut_at+ tokens are dropped
    for cut, full in zip(short, kept):
        assert cut["input_ids"] == full["input_ids"][:cut_at] and cut["labels"] == full["labels"][:cut_at]
        assert cut["truncated"] == (len(full["input_ids"]) > cut_at)
    assert 0 < sum(short["truncated"]) < len(short)


def test_packing_keeps_labels_and_isolates_examples(tok, rows, sft_spec):
    spec = sft_spec(max_length=1024)
    plain = tokenize_examples(rows, spec, tok)
    packed = tokenize_examples(rows, spec.model_copy(update={"packing": True}), tok)
    assert len(packed) < len(plain) and max(len(r["input_ids"]) for r in packed) <= 1024
    assert [t for r in packed for t in r["input_ids"]] == [t for r in plain for t in r["input_ids"]]
    assert [t for r in packed for t in r["labels"]] == [t for r in plain for t in r["labels"]]
    starts = [i for r in packed for i, p in enumerate(r["position_ids"]) if p == 0]
    assert len(starts) == len(plain)
    assert all(r["labels"][i] == IGNORE for r in packed for i, p in enumerate(r["position_ids"]) if p == 0)
    # A packed row gives each example the logits it gets alone: no attention across boundaries
    # (with use_cache=False: transformers skips the per-example mask when it builds a cache).
    model = tiny_llama(vocab_size=len(tok))
    first = packed[0]
    with torch.no_grad():
        logits = model(**collate([first, packed[1]], tok.pad_token_id), use_cache=False).logits[0]
        offset = 0
        for example in plain.select(range(first["position_ids"].count(0))):
            alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
            n = len(example["input_ids"])
            torch.testing.assert_close(logits[offset : offset + n], alone, atol=1e-4, rtol=1e-4)
            offset += n


# --- tokenise once ---------------------------------------------------------------------------


def test_ensuring_the_cache_builds_once_and_never_reads_it_back(tmp_path, tok, monkeypatch, sft_spec):
    spec = sft_spec(limit=32, max_length=512)
    first = cache_module.ensure_tokenized(spec, tok, tmp_path)
    monkeypatch.setattr(cache_module.pq, "read_table", lambda *a: pytest.fail("the driver read the cache back"))
    assert cache_module.ensure_tokenized(spec, tok, tmp_path) == first
    monkeypatch.undo()
    assert len(tokenized_dataset(spec, tok, tmp_path)) == 32
    assert len((tmp_path / cache_module.BUILD_LOG).read_text().splitlines()) == 1


def test_cache_hit_skips_tokenising_even_in_a_new_process(tmp_path, tok, monkeypatch, sft_spec):
    spec = sft_spec(limit=32, max_length=512, validation_fraction=0.25)
    calls = []
    real = cache_module.tokenize_examples
    monkeypatch.setattr(cache_module, "tokenize_examples", lambda *a: calls.append(1) or real(*a))
    first = tokenized_dataset(spec, tok, tmp_path)
    second = tokenized_dataset(spec, tok, tmp_path)
    assert len(calls) == 1 and first.to_dict() == second.to_dict()
    assert len(tokenized_dataset(spec, tok, tmp_path, part="validation")) == 8 and len(calls) == 2
    kept = [p.suffix for p in tmp_path.iterdir() if p.name != cache_module.BUILD_LOG]
    assert sorted(kept) == [".parquet", ".parquet"]  # no temp left
    builds = [json.loads(line)["file"] for line in (tmp_path / cache_module.BUILD_LOG).read_text().splitlines()]
    assert sorted(builds) == sorted(p.name for p in tmp_path.glob("*.parquet"))  # each build on record, once
    script = textwrap.dedent(
        f"""
        from mft_search.core.data import DataSpec, cache
        from mft_search.demo.tiny import tiny_tokenizer
        def refuse(*a):
            raise AssertionError("tokenised again")
        cache.tokenize_examples = refuse
        spec = DataSpec.model_validate_json({spec.model_dump_json()!r})
        print(len(cache.tokenized_dataset(spec, tiny_tokenizer(), {str(tmp_path)!r})))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == str(len(first))


def test_fingerprint_tracks_tokenizer_template_and_data(tmp_path, tok, rows, sft_spec):
    spec = sft_spec(limit=8)
    base = fingerprint(spec, tok)
    tok(["a b", "c"], padding=True, truncation=True, max_length=2)  # leaves state on the backend
    assert fingerprint(spec, tok) == base == fingerprint(spec, tiny_tokenizer())
    assert fingerprint(spec, tiny_tokenizer(["another corpus, other merges 123"])) != base
    chat_tok = tiny_tokenizer()
    chat_tok.chat_template = CHAT_TEMPLATE
    assert tokenizer_fingerprint(chat_tok) != tokenizer_fingerprint(tok)
    assert fingerprint(spec.model_copy(update={"template": "Q: {prompt}\nA: "}), tok) != base
    assert fingerprint(spec, tok, part="validation") != base
    rows.to_json(tmp_path / "a.jsonl")
    local = sft_spec(source=str(tmp_path / "a.jsonl"))
    before = fingerprint(local, tok)
    rows.select(range(4)).to_json(tmp_path / "a.jsonl")
    assert fingerprint(local, tok) != before


# --- batching --------------------------------------------------------------------------------


def test_shards_are_disjoint_and_cover():
    for n, world in [(10, 3), (7, 1), (2, 4)]:
        shards = [shard_indices(n, r, world) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))


def test_collate_pads_right():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [IGNORE]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def global_steps(ds, world, epoch, micro=2):
    """Per step, every micro-batch of every rank, in rank order."""
    per_rank = [list(iterate_batches(ds, 8, micro, r, world, epoch, seed=7)) for r in range(world)]
    return [[mb for rank in per_rank for mb in rank[step]] for step in range(len(per_rank[0]))]


def test_global_steps_do_not_depend_on_world_size(tok, rows, sft_spec):
    ds = tokenize_examples(rows.select(range(36)), sft_spec(max_length=256), tok)
    one = global_steps(ds, 1, epoch=0)
    assert len(one) == len(ds) // 8 and all(len(step) == 4 for step in one)
    for world in (2, 4):
        other = global_steps(ds, world, epoch=0)
        for a, b in zip(one, other, strict=True):
            for x, y in zip(a, b, strict=True):
                assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    seen = [tuple(row) for step in one for mb in step for row in mb["input_ids"].tolist()]
    assert len(set(seen)) == len(seen)  # no example twice in an epoch
    next_epoch = global_steps(ds, 1, epoch=1)
    assert not torch.equal(next_epoch[0][0]["input_ids"], one[0][0]["input_ids"])
    with pytest.raises(ConfigError, match="not a multiple of micro_batch_size"):
        next(iterate_batches(ds, 8, 3, 0, 2, 0, 0))
    with pytest.raises(ConfigError, match="exceeds the"):
        next(iterate_batches(ds, 64, 2, 0, 2, 0, 0))
