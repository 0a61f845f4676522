"""`maskfile` suite: mask-file bytes against numel/8 and the entropy bound numel * H(ratio) / 8,
for the bit-packed body and the Rice-coded one (the writer keeps the smaller), and the time to
encode and decode a 7B-sized module."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mft_search.bench.core import BENCH_MODEL
from mft_search.core import mask_codec
from mft_search.core.maskfile import load_mask_file, save_mask_file
from mft_search.core.topk import local_mask

RATIOS = (0.02, 0.05, 0.1, 0.2, 0.4)
BIG_MODULE = (11008, 4096)  # a LLaMA-7B MLP projection


def entropy_bits(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def group_shapes() -> dict[str, tuple[int, int]]:
    """The linear layers of a 4-block group of the core suite's model."""
    h, i = BENCH_MODEL["hidden"], BENCH_MODEL["intermediate"]
    per_block = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h), "self_attn.v_proj": (h, h),
                 "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}
    return {f"model.layers.{b}.{k}": s for b in range(4) for k, s in per_block.items()}


def run(quick: bool = False) -> None:
    shapes = group_shapes()
    numel = sum(math.prod(s) for s in shapes.values())
    print(f"# mask file bytes: a 4-block group of the core model ({numel / 1e6:.2f}M weights), local top-k masks")
    print(f"{'ratio':>6} {'bitpacked':>10} {'rice':>10} {'file':>10} {'chosen':>10} {'x numel/8':>10} {'x entropy':>10}")
    for ratio in RATIOS:
        masks = {n: local_mask(torch.randn(s), ratio) for n, s in shapes.items()}
        flat = np.concatenate([m.reshape(-1).numpy() for m in masks.values()])
        rice = mask_codec.rice(flat)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_mask_file(Path(tmp) / "m.safetensors", masks, fingerprint="0" * 64, model_type="llama",
                                  dtype=torch.float32, mode="local", ratio=ratio)
            size, chosen = path.stat().st_size, load_mask_file(path).meta["body"]["encoding"]
        bound = numel * entropy_bits(ratio) / 8
        print(f"{ratio:>6} {math.ceil(numel / 8):>10} {rice.body.size if rice else '-':>10} {size:>10} {chosen:>10} "
              f"{size / (numel / 8):10.3f} {size / bound:10.3f}")
    _timing(quick)


def _timing(quick: bool) -> None:
    shape = (BIG_MODULE[0] // 8, BIG_MODULE[1]) if quick else BIG_MODULE
    bits = local_mask(torch.randn(shape), 0.1).reshape(-1).numpy()
    print(f"\n# encode + decode one {shape[0]}x{shape[1]} module at ratio 0.1 (median of 3)")
    for name, encode in (("bitpacked", mask_codec.bitpack), ("rice", mask_codec.rice)):
        enc_s, dec_s = [], []
        for _ in range(3):
            start = time.perf_counter()
            encoded = encode(bits)
            enc_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert np.array_equal(mask_codec.decode(encoded.body, encoded.header, bits.size), bits)
            dec_s.append(time.perf_counter() - start)
        print(f"{name:>10}: {encoded.body.size / 1e6:6.2f} MB, encode {sorted(enc_s)[1]:.3f} s, "
              f"decode {sorted(dec_s)[1]:.3f} s")
