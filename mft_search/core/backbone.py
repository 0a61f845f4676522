"""Loading the backbone a sweep masks: local directory or hub id, safetensors only."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from mft_search.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackboneSpec(BaseModel):
    """A fully fine-tuned causal LM to mask."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="local directory or Hugging Face hub id")
    name: str | None = Field(None, description="short name used in outputs; defaults to the source's last part")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on GPU, float32 on CPU")
    trust_remote_code: bool = Field(False, description="run the model repository's own code; off unless you trust it")

    @property
    def label(self) -> str:
        return self.name or self.source.rstrip("/").split("/")[-1]

    def torch_dtype(self, on_gpu: bool) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if on_gpu else torch.float32
        return DTYPES[self.dtype]


def load_config(spec: BackboneSpec) -> PretrainedConfig:
    """The model config alone (what --dry-run needs: no weights)."""
    try:
        return AutoConfig.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"backbone.source: cannot read a model config from '{spec.source}' ({_first_line(exc)}); "
                          "give a local model directory or a reachable hub id") from None


def load_model(spec: BackboneSpec, dtype: torch.dtype):
    """The causal LM, safetensors weights only: a pickled checkpoint is refused, never loaded."""
    try:
        return AutoModelForCausalLM.from_pretrained(
            spec.source, dtype=dtype, revision=spec.revision, trust_remote_code=spec.trust_remote_code,
            use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"backbone.source: cannot load '{spec.source}' as a causal LM with safetensors weights "
                          f"({_first_line(exc)})") from None


def load_tokenizer(spec: BackboneSpec):
    try:
        return AutoTokenizer.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception on a bad file
        raise ConfigError(f"backbone.source: cannot read a tokenizer from '{spec.source}' ({_first_line(exc)}); "
                          "the backbone directory must hold its tokenizer") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
