"""The mask file: one learned mask, at most 1 bit a weight, safe to load from anyone.

Layout: a safetensors file holding one uint8 tensor `mask`: the masks of all modules flattened
in metadata order, concatenated and encoded by mask_codec, bit-packed (ceil(numel / 8) bytes)
or, where smaller (small ratios), Rice-coded gaps between the masked-out weights. Its
`__metadata__` holds one JSON document:

    version, model_type, dtype, fingerprint   the backbone the mask was learned on
    mode, ratio | threshold                   how it was selected
    modules: [[name, shape, kept], ...]       in packing order
    body                                      the encoding and what decoding it needs
    digest                                    sha256 over the body and the rest of the metadata

Version 1 files are bit-packed (older ones have no `body`); version 2 files are Rice-coded.
Loading refuses a truncated body, a tampered header (digest or kept counts off), and, against
a model, other shapes or another backbone's fingerprint. safetensors never unpickles.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mft_search.core import files, mask_codec
from mft_search.core.topk import cut_of
from mft_search.errors import MaskFileError

FORMAT = "mft_search.mask"
# The format version a file gets for its body's encoding: bit-packed files keep 1, so that older
# readers still load them; they refuse a Rice-coded body by its version.
VERSIONS = {"bitpacked": 1, "rice": 2}
READS = tuple(VERSIONS.values())
# what to do about a damaged file: the sweep keeps the original in two places
DAMAGED_FIX = "copy the mask again from the experiment's best/ directory or the trial's artifacts/"


@dataclass(frozen=True)
class MaskFile:
    """A loaded, integrity-checked mask and its metadata."""

    masks: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def kept(self) -> dict[str, int]:
        return {name: kept for name, _, kept in self.meta["modules"]}


def backbone_fingerprint(model: nn.Module, names: list[str]) -> str:
    """sha256 of the architecture and of the weights of the named modules, in their dtype.

    Hashing only the masked modules keeps this cheap on a 7B model (4 blocks ~ 1.6 GB in bf16)
    while still telling a base model from its fine-tune, or one fine-tune from another.
    """
    cfg = model.config
    h = hashlib.sha256()
    arch = {k: getattr(cfg, k, None) for k in ("model_type", "hidden_size", "n_embd", "vocab_size")}
    h.update(json.dumps(arch, sort_keys=True).encode())
    for name in names:
        w = model.get_submodule(name).weight.detach()
        h.update(f"{name}:{tuple(w.shape)}:{w.dtype}".encode())
        h.update(w.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def pack(masks: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Concatenate flattened bool masks and encode them (the smaller of mask_codec's two)."""
    flat = np.concatenate([m.detach().cpu().reshape(-1).numpy().astype(np.bool_) for m in masks])
    encoded = mask_codec.encode(flat)
    return torch.from_numpy(encoded.body), encoded.header


def unpack(packed: torch.Tensor, shapes: list[tuple[int, ...]], body: dict[str, Any]) -> list[torch.Tensor]:
    """Inverse of `pack` for the given shapes and body header."""
    total = sum(int(np.prod(s)) for s in shapes)
    bits = mask_codec.decode(packed.numpy(), body, total)
    out, start = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(torch.from_numpy(bits[start : start + n].copy()).view(shape))
        start += n
    return out


def _digest(body: bytes, meta: dict[str, Any]) -> str:
    rest = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(body + json.dumps(rest, sort_keys=True).encode()).hexdigest()


def save_mask_file(path: str | Path | files.Location, masks: dict[str, torch.Tensor], *, fingerprint: str,
                   model_type: str, dtype: torch.dtype, mode: str, ratio: float | None = None,
                   threshold: float | None = None, extra: dict[str, Any] | None = None) -> Path | files.Location:
    """Write `masks` atomically (core.files: a rename on disk, one upload to a bucket): a reader never sees
    half a file."""
    names = list(masks)
    packed, body = pack([masks[n] for n in names])
    meta: dict[str, Any] = {
        "version": VERSIONS[body["encoding"]],
        "body": body,
        "model_type": model_type,
        "dtype": str(dtype).removeprefix("torch."),
        "fingerprint": fingerprint,
        "mode": mode,
        **dict([cut_of(mode, ratio, threshold)]),
        "modules": [[n, list(masks[n].shape), int(masks[n].sum())] for n in names],
        **(extra or {}),
    }
    meta["digest"] = _digest(packed.numpy().tobytes(), meta)
    with files.atomic_path(path) as temporary:
        save_file({"mask": packed}, temporary, metadata={"format": FORMAT, "meta": json.dumps(meta)})
    where = files.location(path)
    return Path(where.path) if where.is_local else where  # a Path, as the public API always returned, on disk


def load_mask_file(path: str | Path | files.Location) -> MaskFile:
    """Read and integrity-check a mask file (a local path or a bucket's URI); MaskFileError says
    what is wrong with it."""
    path = files.location(path)
    if not path.is_file():
        raise MaskFileError(f"mask: no file at {path}; give the path of a mask .safetensors file")
    try:
        with path.local_copy() as local, safe_open(str(local), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise MaskFileError(f"mask: {path} is not an mft_search mask file (format {header.get('format')!r}); "
                                    f"{DAMAGED_FIX}")
            packed = f.get_tensor("mask")
    except MaskFileError:
        raise
    except Exception as exc:  # safetensors reports truncation and bad headers in several ways
        raise MaskFileError(f"mask: {path} is not a readable mask file (truncated or corrupt: {exc}); {DAMAGED_FIX}") from None
    try:
        meta = json.loads(header["meta"])
        if meta["version"] not in READS:
            raise MaskFileError(f"mask: {path} has format version {meta['version']}; this mft_search reads "
                                f"{', '.join(map(str, READS))}: upgrade mft_search")
        shapes = [tuple(shape) for _, shape, _ in meta["modules"]]
        body = meta.get("body", {"encoding": "bitpacked"})
        _check_integrity(path, packed, meta, shapes, body)
        masks = dict(zip((n for n, _, _ in meta["modules"]), unpack(packed, shapes, body)))
    except MaskFileError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        raise MaskFileError(f"mask: {path} has a malformed header ({exc}); {DAMAGED_FIX}") from None
    for name, _, kept in meta["modules"]:
        if int(masks[name].sum()) != kept:
            raise MaskFileError(f"mask: {path}: {name} keeps {int(masks[name].sum())} weights, header says {kept}; {DAMAGED_FIX}")
    return MaskFile(masks=masks, meta=meta)


def _check_integrity(path: Path, packed: torch.Tensor, meta: dict[str, Any], shapes: list[tuple[int, ...]],
                     body: dict[str, Any]) -> None:
    expected = mask_codec.body_size(body, sum(int(np.prod(s)) for s in shapes))
    if packed.dtype != torch.uint8 or packed.numel() != expected:
        raise MaskFileError(f"mask: {path} holds {packed.numel()} bytes of mask, its header needs {expected}; {DAMAGED_FIX}")
    if _digest(packed.numpy().tobytes(), meta) != meta.get("digest"):
        raise MaskFileError(f"mask: {path} fails its digest check: the file was modified after it was written; {DAMAGED_FIX}")


def verify_for_model(mask_file: MaskFile, model: nn.Module) -> None:
    """Refuse a mask whose modules, shapes or backbone fingerprint do not match `model`."""
    meta = mask_file.meta
    if meta["model_type"] != model.config.model_type:
        raise MaskFileError(f"mask: learned on a {meta['model_type']} backbone, not {model.config.model_type}")
    names = [n for n, _, _ in meta["modules"]]
    for name, shape, _ in meta["modules"]:
        try:
            weight = model.get_submodule(name).weight
        except AttributeError:
            raise MaskFileError(f"mask: module {name} does not exist in this backbone") from None
        if tuple(weight.shape) != tuple(shape):
            raise MaskFileError(f"mask: {name} is {tuple(shape)} in the mask, {tuple(weight.shape)} in this backbone")
    if backbone_fingerprint(model, names) != meta["fingerprint"]:
        raise MaskFileError(
            "mask: this mask was learned on another backbone (weight fingerprint differs); "
            f"use the backbone it was learned on (loaded as {meta['dtype']})"
        )
