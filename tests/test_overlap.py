"""Training and evaluation sets are checked to share no prompt."""

import pytest

from mft_search.core.data.overlap import check_disjoint, normalise, prompt_fingerprint, prompt_fingerprints
from mft_search.errors import DataError

TRAIN = [f"What is {i} + {i}?" for i in range(100)]
VALIDATION = [f"What is {i} times 3?" for i in range(20)]
TEST = [f"Name a prime above {i}." for i in range(20)]


def test_disjoint_sets_pass():
    check_disjoint({"train": TRAIN, "validation": VALIDATION, "test": TEST})


def test_overlap_between_splits_is_refused_naming_both_the_count_and_an_example():
    leaky = TEST + VALIDATION[:3]
    with pytest.raises(DataError) as error:
        check_disjoint({"train": TRAIN, "validation": VALIDATION, "test": leaky})
    message = str(error.value)
    assert "'validation' and 'test' share 3 prompts" in message and "'What is 0 times 3?'" in message
    assert "different splits or sources" in message and "also" not in message


def test_whitespace_variants_count_as_overlap():
    variant = "  What is 7 +\n\t7? "
    assert normalise(variant) == "What is 7 + 7?" and prompt_fingerprint(variant) == prompt_fingerprint(TRAIN[7])
    with pytest.raises(DataError, match="'train' and 'test' share 1 prompt "):
        check_disjoint({"train": TRAIN, "test": [variant]})
    check_disjoint({"train": TRAIN, "test": ["what is 7 + 7?"]})  # case is kept: another prompt


def test_a_training_set_fingerprinted_ahead_is_compared_without_its_texts():
    train = prompt_fingerprints(iter(TRAIN))  # a generator, read once
    assert len(train) == 100 and all(len(d) == 32 for d in train)
    long_prompt = TRAIN[0] + " and then " + "x" * 200
    train = prompt_fingerprints(TRAIN + [long_prompt])
    with pytest.raises(DataError) as error:
        check_disjoint({"train": train, "validation": iter(VALIDATION + [long_prompt]), "test": TEST + TRAIN[:2]})
    message = str(error.value)
    # the first pair in the caller's order, its example quoted from the side that had texts, truncated
    assert message.startswith("'train' and 'validation' share 1 prompt ") and "xxx...'" in message
    assert "also overlapping: 'train' and 'test' (2)" in message and len(message) < 400


def test_a_prompt_that_is_not_text_is_refused_with_its_set_and_index():
    with pytest.raises(DataError, match="test: prompt 1 is NoneType, not text"):
        check_disjoint({"train": TRAIN, "test": ["fine", None]})
