"""The mask body's two encodings: exact round trips, the smaller one chosen, near the entropy bound."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mft_search.core import mask_codec
from mft_search.errors import MaskFileError
from mft_search.core.maskfile import FORMAT, _digest, load_mask_file, save_mask_file
from mft_search.core.topk import local_mask


def entropy_bytes(numel: int, p: float) -> float:
    return 0.0 if p in (0, 1) else numel * -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) / 8


@pytest.mark.parametrize("size", [1, 7, 8, 9, 1000, 100_003])
@pytest.mark.parametrize("p", [0.0, 0.001, 0.02, 0.1, 0.5, 0.9, 0.98, 1.0])
def test_every_mask_round_trips_exactly(size, p):
    bits = np.random.default_rng(size).random(size) < p
    encoded = mask_codec.encode(bits)
    assert encoded.body.size == mask_codec.body_size(encoded.header, size)
    assert np.array_equal(mask_codec.decode(encoded.body, encoded.header, size), bits)


def test_the_smaller_encoding_is_chosen():
    rng = np.random.default_rng(0)
    sparse, dense = rng.random(80_000) < 0.02, rng.random(80_000) < 0.5
    assert mask_codec.encode(sparse).header["encoding"] == "rice"
    assert mask_codec.encode(~sparse).header["encoding"] == "rice"  # rare kept bits code as well
    assert mask_codec.encode(dense).header["encoding"] == "bitpacked"


@pytest.mark.parametrize("ratio", [0.02, 0.1])
def test_a_learned_style_mask_file_is_within_1_2x_of_the_entropy_bound(tmp_path, ratio):
    shapes = {f"m{i}": s for i, s in enumerate([(384, 384)] * 4 + [(1024, 384)] * 2 + [(384, 1024)])}
    masks = {n: local_mask(torch.randn(s), ratio) for n, s in shapes.items()}
    path = save_mask_file(tmp_path / "m.safetensors", masks, fingerprint="0" * 64, model_type="llama",
                          dtype=torch.float32, mode="local", ratio=ratio)
    numel = sum(math.prod(s) for s in shapes.values())
    assert path.stat().st_size <= 1.2 * entropy_bytes(numel, ratio)
    loaded = load_mask_file(path)
    assert loaded.meta["version"] == 2 and all(torch.equal(loaded.masks[n], masks[n]) for n in masks)


@pytest.fixture
def rice_file(tmp_path):
    masks = {"a": local_mask(torch.randn(256, 256), 0.05)}
    return save_mask_file(tmp_path / "m.safetensors", masks, fingerprint="0" * 64, model_type="llama",
                          dtype=torch.float32, mode="local", ratio=0.05)


def test_a_truncated_rice_file_is_refused(rice_file):
    rice_file.write_bytes(rice_file.read_bytes()[:-50])
    with pytest.raises(MaskFileError, match="not a readable mask file|bytes of mask"):
        load_mask_file(rice_file)


def test_a_flipped_bit_in_a_rice_body_is_refused(rice_file):
    data = bytearray(rice_file.read_bytes())
    data[-10] ^= 0x10
    rice_file.write_bytes(bytes(data))
    with pytest.raises(MaskFileError, match="fails its digest check"):
        load_mask_file(rice_file)


def test_a_version_1_file_without_a_body_header_still_loads(tmp_path):
    mask = torch.rand(40, 24) > 0.3
    packed = torch.from_numpy(np.packbits(mask.reshape(-1).numpy(), bitorder="little"))
    meta = {"version": 1, "model_type": "llama", "dtype": "float32", "fingerprint": "0" * 64, "mode": "local",
            "ratio": 0.3, "modules": [["a", [40, 24], int(mask.sum())]]}
    meta["digest"] = _digest(packed.numpy().tobytes(), meta)
    save_file({"mask": packed}, str(tmp_path / "old.safetensors"), metadata={"format": FORMAT, "meta": json.dumps(meta)})
    assert torch.equal(load_mask_file(tmp_path / "old.safetensors").masks["a"], mask)
