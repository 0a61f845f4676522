"""A masked Hugging Face checkpoint: a mask file multiplied into its backbone, saved plainly.

The output loads with `AutoModelForCausalLM.from_pretrained(out)` without mft_search installed:
the masked weights are simply zero. It is written to a temporary directory next to `out` and
renamed into place, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mft_search.core import files
from mft_search.core.backbone import DTYPES, BackboneSpec, load_model, load_tokenizer
from mft_search.core.maskfile import load_mask_file, verify_for_model
from mft_search.core.masking import multiply_masks_in
from mft_search.errors import ConfigError


def apply_mask(backbone: str, mask_path: str | Path, out: str | Path, *, revision: str | None = None,
               trust_remote_code: bool = False) -> Path:
    """Write `backbone` with the mask multiplied in to `out`; returns `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out: {out} exists and is not empty; choose a new directory")
    mask_file = load_mask_file(mask_path)
    spec = BackboneSpec(source=backbone, revision=revision, trust_remote_code=trust_remote_code)
    model = load_model(spec, DTYPES[mask_file.meta["dtype"]])
    verify_for_model(mask_file, model)
    multiply_masks_in(model, mask_file.masks)
    with files.atomic_directory(out) as staging:  # `out` is absent or empty (checked above)
        model.save_pretrained(staging, safe_serialization=True)
        _save_tokenizer(spec, staging)
    return out


def _save_tokenizer(spec: BackboneSpec, dest: Path) -> None:
    # A backbone without a tokenizer is still a valid checkpoint: the user brings their own.
    try:
        tokenizer = load_tokenizer(spec)
    except ConfigError:
        print(f"note: no tokenizer found with {spec.source}; the checkpoint has weights only", file=sys.stderr)
        return
    tokenizer.save_pretrained(dest)
