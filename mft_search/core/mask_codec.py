"""How a mask file's body encodes the concatenated bits of all its masks.

Two encodings; the writer takes the smaller:
- "bitpacked": 1 bit a weight (numpy packbits, little bit order). Best near ratio 0.5.
- "rice": the positions of the minority bit (the masked-out weights at the paper's small
  ratios) as gaps, each gap Golomb-Rice coded with parameter k: its quotient gap >> k in unary,
  its remainder in k bits. Gaps between the rare bits of a mask are close to geometric, for which
  Rice codes come within a few percent of the entropy bound numel * H(p) / 8.
The two parts of a Rice code are stored as two bit streams, one after the other (all unary
quotients, then all remainders), so that both directions are vectorised numpy with no loop over
the millions of gaps of a 7B model's masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_K = 40
HEADER_BYTES = 96  # what Rice's fields add to the file's JSON header: a near tie stays bitpacked


@dataclass(frozen=True)
class Encoded:
    body: np.ndarray  # uint8
    header: dict[str, Any]  # {"encoding": ...} and what decoding needs


def encode(bits: np.ndarray) -> Encoded:
    """The smaller of the two encodings of a flat bool array."""
    packed, coded = bitpack(bits), rice(bits)
    smaller = coded is not None and coded.body.size + HEADER_BYTES < packed.body.size
    return coded if smaller else packed


def bitpack(bits: np.ndarray) -> Encoded:
    return Encoded(np.packbits(bits, bitorder="little"), {"encoding": "bitpacked"})


def body_size(header: dict[str, Any], total: int) -> int:
    """The body bytes a header promises for `total` bits (a truncated body fails this)."""
    if header.get("encoding", "bitpacked") == "bitpacked":
        return (total + 7) // 8
    return (header["unary_bits"] + 7) // 8 + (header["count"] * header["k"] + 7) // 8


def decode(body: np.ndarray, header: dict[str, Any], total: int) -> np.ndarray:
    """The flat bool array of `total` bits; ValueError if the body contradicts the header."""
    encoding = header.get("encoding", "bitpacked")
    if encoding == "bitpacked":
        return np.unpackbits(body, count=total, bitorder="little").astype(np.bool_)
    if encoding == "rice":
        return _rice_decode(body, header, total)
    raise ValueError(f"unknown encoding {encoding!r}")


def rice(bits: np.ndarray) -> Encoded | None:
    """The Rice encoding, or None when every bit is the same (nothing to code)."""
    minority = bool(bits.mean() <= 0.5)  # the rarer value: fewer gaps to code
    positions = np.flatnonzero(bits == minority)
    if positions.size == 0:
        return None  # all one value: bitpacked is tiny anyway
    gaps = np.diff(positions, prepend=-1) - 1
    k = _best_k(gaps)
    quotients = gaps >> k
    # unary stream: each quotient as that many 1s closed by a 0
    unary_bits = int(quotients.sum()) + gaps.size
    unary = np.ones(unary_bits, dtype=np.bool_)
    unary[np.cumsum(quotients + 1) - 1] = False
    remainders = (gaps[:, None] >> np.arange(k - 1, -1, -1)) & 1 if k else np.zeros((gaps.size, 0), np.int64)
    body = np.concatenate([np.packbits(unary, bitorder="little"),
                           np.packbits(remainders.astype(np.bool_).reshape(-1), bitorder="little")])
    header = {"encoding": "rice", "k": k, "count": int(gaps.size), "minority": int(minority),
              "unary_bits": unary_bits}
    return Encoded(body, header)


def _best_k(gaps: np.ndarray) -> int:
    """The Rice parameter of the fewest bits: sum(gap >> k) + count * (1 + k)."""
    start = max(0, int(np.log2(max(gaps.mean(), 1.0))) - 2)
    sizes = {k: int((gaps >> k).sum()) + gaps.size * (1 + k) for k in range(start, min(start + 6, MAX_K))}
    return min(sizes, key=sizes.get)


def _rice_decode(body: np.ndarray, header: dict[str, Any], total: int) -> np.ndarray:
    k, count, unary_bits = int(header["k"]), int(header["count"]), int(header["unary_bits"])
    split = (unary_bits + 7) // 8
    unary = np.unpackbits(body[:split], count=unary_bits, bitorder="little")
    ends = np.flatnonzero(unary == 0)
    if ends.size != count:
        raise ValueError(f"the body codes {ends.size} gaps, its header {count}")
    quotients = np.diff(ends, prepend=-1) - 1
    remainder_bits = np.unpackbits(body[split:], count=count * k, bitorder="little").reshape(count, k)
    remainders = remainder_bits.astype(np.int64) @ (1 << np.arange(k - 1, -1, -1, dtype=np.int64))
    positions = np.cumsum((quotients.astype(np.int64) << k) + remainders + 1) - 1
    if count and positions[-1] >= total:
        raise ValueError(f"a coded position {positions[-1]} lies beyond the {total} bits")
    minority = bool(header["minority"])
    bits = np.full(total, not minority, dtype=np.bool_)
    bits[positions] = minority
    return bits
