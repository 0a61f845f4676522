"""Where the maskable linear layers live in each supported Hugging Face architecture.

MFT masks the attention q/k/v/o and MLP gate/up/down projections of chosen transformer blocks.
Each architecture names them differently; this table is the only place that knows how.
"""

from __future__ import annotations

from dataclasses import dataclass

from mft_search.errors import ArchitectureError, ConfigError, did_you_mean

KINDS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class Layout:
    """Block container path, and for each module kind its path inside a block."""

    blocks: str
    kinds: dict[str, str]
    fused: tuple[tuple[str, ...], ...] = ()  # kinds that share one module: all or none
    depth_field: str = "num_hidden_layers"


_LLAMA_LIKE = Layout(
    blocks="model.layers",
    kinds={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    },
)

# GPT-2 fuses q, k and v into one Conv1D (c_attn) and has no gated MLP.
_GPT2 = Layout(
    blocks="transformer.h",
    kinds={"q": "attn.c_attn", "k": "attn.c_attn", "v": "attn.c_attn", "o": "attn.c_proj",
           "up": "mlp.c_fc", "down": "mlp.c_proj"},
    fused=(("q", "k", "v"),),
    depth_field="n_layer",
)

LAYOUTS: dict[str, Layout] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gpt2": _GPT2,
}


def layout_for(model_type: str) -> Layout:
    """The layout of a `config.model_type`, or an ArchitectureError listing what is supported."""
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise ArchitectureError(
            f"backbone: architecture '{model_type}' has no known mapping of module kinds; "
            f"supported: {', '.join(sorted(LAYOUTS))}"
        ) from None


def model_depth(config) -> int:
    """Number of transformer blocks declared by a model config."""
    return int(getattr(config, layout_for(config.model_type).depth_field))


def resolve_kinds(model_type: str, kinds: tuple[str, ...] | None) -> tuple[str, ...]:
    """Validated kinds for this architecture; None means every kind it has."""
    layout = layout_for(model_type)
    if kinds is None:
        return tuple(k for k in KINDS if k in layout.kinds)
    for kind in kinds:
        if kind not in layout.kinds:
            raise ConfigError(
                f"mask.kinds: '{kind}' is not a module kind of {model_type}{did_you_mean(kind, layout.kinds)}; "
                f"choose from {', '.join(layout.kinds)}"
            )
    for group in layout.fused:
        chosen = [k for k in group if k in kinds]
        if chosen and len(chosen) != len(group):
            raise ConfigError(
                f"mask.kinds: {model_type} fuses {'/'.join(group)} into one module; "
                f"select all of them or none"
            )
    return tuple(k for k in KINDS if k in kinds)


def module_names(model_type: str, blocks: tuple[int, ...], kinds: tuple[str, ...]) -> list[str]:
    """Full module names (as in `model.named_modules()`) for the chosen blocks and kinds."""
    layout = layout_for(model_type)
    names: list[str] = []
    for block in blocks:
        for kind in kinds:
            name = f"{layout.blocks}.{block}.{layout.kinds[kind]}"
            if name not in names:  # fused kinds map to one module
                names.append(name)
    return names


def check_blocks(model_type: str, depth: int, blocks: tuple[int, ...]) -> None:
    """ConfigError when a block index is outside the backbone's depth."""
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise ConfigError(
            f"mask.blocks: block(s) {bad} outside the {model_type} backbone's depth of {depth} "
            f"(valid: 0..{depth - 1}); choose a layer group within it"
        )
    if len(set(blocks)) != len(blocks):
        raise ConfigError(f"mask.blocks: {list(blocks)} repeats a block; list each block once")
