"""mft_search: find, on a Ray cluster, the binary mask that makes a fine-tuned LLM better (MFT).

The public API, for use without a sweep (the core needs neither Ray nor Optuna):

    from transformers import AutoModelForCausalLM
    import torch
    from mft_search import MaskSpec, attach_masks, score_parameters, refresh_masks, materialize

    model = AutoModelForCausalLM.from_pretrained("path/to/fine-tuned")
    attach_masks(model, MaskSpec(blocks=(20, 21, 22, 23), ratio=0.1))
    optimizer = torch.optim.AdamW(score_parameters(model), lr=2e-5, weight_decay=0.0)
    ...  # the SFT loop: loss.backward(); optimizer.step(); refresh_masks(model)
    masks = materialize(model)   # W *= M in place: a plain Hugging Face model again

Sweeps run from the command line: `python -m mft_search.sweep --config search_spaces/X.yaml`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mft_search.config.schema import SweepConfig, load_config_file
    from mft_search.core.evaluation import get_evaluator
    from mft_search.core.masked_checkpoint import apply_mask
    from mft_search.core.maskfile import load_mask_file, save_mask_file
    from mft_search.core.masking import (
        MaskSpec,
        attach_masks,
        current_masks,
        materialize,
        refresh_masks,
        score_parameters,
    )

# Each public name and the module that defines it, imported on first use (PEP 562): every Ray
# worker and command line imports this package first, and the eager imports cost it torch,
# transformers, datasets and the config schema, more than 10 s per process on 2 busy cores,
# whether or not it used any of them.
_EXPORTS = {
    "SweepConfig": "mft_search.config.schema",
    "load_config_file": "mft_search.config.schema",
    "get_evaluator": "mft_search.core.evaluation",
    "apply_mask": "mft_search.core.masked_checkpoint",
    "load_mask_file": "mft_search.core.maskfile",
    "save_mask_file": "mft_search.core.maskfile",
    **dict.fromkeys(["MaskSpec", "attach_masks", "current_masks", "materialize", "refresh_masks",
                     "score_parameters"], "mft_search.core.masking"),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__version__ = "0.1.0"

__all__ = [
    "MaskSpec",
    "SweepConfig",
    "apply_mask",
    "attach_masks",
    "current_masks",
    "get_evaluator",
    "load_config_file",
    "load_mask_file",
    "materialize",
    "refresh_masks",
    "save_mask_file",
    "score_parameters",
]
