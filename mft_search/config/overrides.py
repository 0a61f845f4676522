"""`--set key.path=value` overrides of a sweep YAML, applied before validation.

    sets = ["train.lr=1e-4", "domains.0.train.limit=200", "baselines=[unmasked, l1]"]
    apply_overrides(data, [parse_override(s) for s in sets])

The value is read as YAML (so 1e-4 is a number, [a, b] a list, null nothing) and replaces what
the path names; a mapping on the way that the YAML lacks is created, a list index must exist.
Validation then checks the result as if the user had written it, so a bad value is refused with
the same one-line error, which `blame` rewrites to name the option that set it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import yaml

from mft_search.errors import ConfigError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass(frozen=True)
class Override:
    """One --set: the path's parts (names, or list indices as ints) and the value it sets."""

    text: str
    path: tuple[str | int, ...]
    value: Any

    @property
    def field(self) -> str:
        """The path as validation errors write it: domains[0].train.limit."""
        return dotted(self.path)


def dotted(path) -> str:
    """A field's path as every config error names it: names joined by dots, list indices
    (ints or digit strings) in brackets, e.g. domains[0].train.limit."""
    out = ""
    for part in path:
        if isinstance(part, int) or str(part).isdigit():
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_override(text: str) -> Override:
    """'a.b.0.c=value' as an Override; a malformed one is a ConfigError naming it."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not key.strip() or not all(_KEY.fullmatch(p) for p in parts):
        raise ConfigError(f"--set {text}: give key.path=value, e.g. --set train.lr=1e-4 or "
                          "--set domains.0.train.limit=200 (names and list indices joined by dots)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; on a command line it means a number
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"--set {key}: the value is not valid YAML ({problem}); quote it") from None
    path = tuple(int(p) if p.isdigit() else p for p in parts)
    if isinstance(path[0], int):
        raise ConfigError(f"--set {key}: starts with a list index; start with a top-level key such as train")
    return Override(text, path, value)


def apply_overrides(data: dict[str, Any], overrides: list[Override]) -> dict[str, Any]:
    """A copy of `data` with each override applied, in order (a later one wins)."""
    out = copy.deepcopy(data)
    for override in overrides:
        node: Any = out
        for depth, part in enumerate(override.path[:-1]):
            node = _step(node, part, override, depth)
        _assign(node, override.path[-1], override)
    return out


def _step(node: Any, part: str | int, override: Override, depth: int) -> Any:
    at = dotted(override.path[: depth + 1])
    if isinstance(part, int):
        if not isinstance(node, list) or not -len(node) <= part < len(node):
            raise ConfigError(f"--set {override.field}: {at} is not an item of a list the config has; "
                              "an index must name an existing item")
        return node[part]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {override.field}: the parent of {at} is a {type(node).__name__}, not a mapping")
    if node.get(part) is None:
        node[part] = {}  # a section the YAML left to its defaults
    return node[part]


def _assign(node: Any, part: str | int, override: Override) -> None:
    if isinstance(part, int):
        if not isinstance(node, list) or not -len(node) <= part < len(node):
            raise ConfigError(f"--set {override.field}: no such list item in the config; "
                              "an index must name an existing item")
    elif not isinstance(node, dict):
        raise ConfigError(f"--set {override.field}: the parent is a {type(node).__name__}, not a mapping")
    node[part] = override.value


def blame(message: str, overrides: list[Override]) -> str | None:
    """The validation error `message` attributed to the last override whose field it names (or
    a field inside it), e.g. '--set train.lr=-1: train.lr: ...'; None when none set it."""
    for override in reversed(overrides):
        field = override.field
        if message.startswith(f"{field}:") or message.startswith(f"{field}.") or message.startswith(f"{field}["):
            return f"--set {override.text}: {message}"
    return None
