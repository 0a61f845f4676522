"""The search space of a sweep: its YAML schema, without Optuna (mft_search.tune.sampling samples it).

    space = SearchSpace.model_validate({"layer_group": {"size": 4, "start": {"low": 0, "high": 28, "step": 4}},
                                        "mode": ["local", "global"], "ratio": {"low": 0.02, "high": 0.4, "log": True},
                                        "threshold": {"low": -0.06, "high": -0.01}})

Every dimension is written one way in YAML: a scalar is fixed, a list is a categorical choice, a
mapping {low, high, step, log} is a range. `ratio` is sampled only under local mode and
`threshold` only under global mode, so neither pollutes the other's trials. Layer groups and kind
sets reach Optuna as strings ("20-23", "q,k,v") because its categorical values must be scalars.
"""

from __future__ import annotations

import contextlib
import importlib.util
import typing
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from mft_search.core.architectures import KINDS
from mft_search.core.masking import Init, Mode
from mft_search.core.topk import CUT_SETTING
from mft_search.errors import ConfigError, did_you_mean
from mft_search.train.step import TrainSettings

# The search algorithms' names; tune.sampling.SAMPLERS builds each (Optuna stays out of this layer).
ALGORITHMS = ("tpe", "gp", "random", "grid")
Algorithm = Literal[ALGORITHMS]
TRAIN_FIELDS = tuple(TrainSettings.model_fields)
MASK_PARAMS = ("layer_group", "kinds", "mode", "ratio", "threshold", "init", "init_std")
PARAMS = MASK_PARAMS + TRAIN_FIELDS
# Pydantic puts the tag of a tagged union in an error's location; error messages leave it out.
UNION_TAGS = frozenset({"value", "choices", "range"})
_STRICT = ConfigDict(extra="forbid")


class FieldIssue(ValueError):
    """A validation failure at `field`, below the model being validated.

    Pydantic adds the model's own location; the config loader appends `field` to it, so a
    cross-field check can still name the exact key (search.space.threshold) and not its parent.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@contextlib.contextmanager
def _as_config_error(prefix: str) -> Iterator[None]:
    """Turn a FieldIssue raised outside pydantic into a ConfigError at `prefix`.field."""
    try:
        yield
    except FieldIssue as issue:
        raise ConfigError(f"{prefix}.{issue.field}: {issue}") from None


# ---------------------------------------------------------------- ranges and dimensions


class FloatRange(BaseModel):
    """A continuous range; with `step`, the grid low, low + step, ..., high."""

    model_config = _STRICT
    low: float = Field(description="smallest value (inclusive)")
    high: float = Field(description="largest value (inclusive)")
    step: float | None = Field(None, gt=0, description="spacing of a discrete range; null = continuous")
    log: bool = Field(False, description="sample uniformly in log space (needs low > 0, no step)")

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        _check_range(self.low, self.high, self.step, self.log, int_range=False)
        return self


class IntRange(BaseModel):
    """An integer range low, low + step, ..., high."""

    model_config = _STRICT
    low: int = Field(description="smallest value (inclusive)")
    high: int = Field(description="largest value (inclusive)")
    step: int = Field(1, ge=1, description="spacing between values")
    log: bool = Field(False, description="sample uniformly in log space (needs low >= 1, step 1)")

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        _check_range(self.low, self.high, self.step, self.log, int_range=True)
        return self


def _check_range(low: float, high: float, step: float | None, log: bool, int_range: bool) -> None:
    if low > high:
        raise FieldIssue("high", f"{high} is below low {low}: the range is inverted; swap low and high")
    if low == high:
        raise FieldIssue("high", f"equals low ({low}): the range is empty; write a fixed value as a scalar")
    if log and (low < 1 if int_range else low <= 0):
        raise FieldIssue("low", f"{low}: a log range needs low {'>= 1' if int_range else '> 0'}")
    if log and step != (1 if int_range else None):
        raise FieldIssue("log", "log and step exclude each other (Optuna's rule); drop one of them")
    if step is not None:
        n = (high - low) / step
        if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
            raise FieldIssue("step", f"high - low = {high - low:g} is not a multiple of step {step}; adjust high")


def _shape(value: Any) -> str:
    if isinstance(value, (dict, BaseModel)):
        return "range"
    return "choices" if isinstance(value, list) else "value"


def _tagged(value_type: Any, tag: str, range_type: type[BaseModel], shapes: str) -> Any:
    """`value_type` (tagged value or choices) or `range_type` (a mapping), chosen by the input's shape."""
    return Annotated[Union[Annotated[value_type, Tag(tag)], Annotated[range_type, Tag("range")]],
                     Discriminator(_shape, custom_error_type="dimension", custom_error_message=f"give {shapes}")]


def _dim(value_type: Any, range_type: type[BaseModel] | None = None) -> Any:
    """YAML dimension: a scalar (fixed), a non-empty list (choices) or, if given, a range mapping."""
    members = [Annotated[value_type, Tag("value")], Annotated[list[value_type], Field(min_length=1), Tag("choices")]]
    shapes = "one value or a list of choices"
    if range_type is not None:
        members.append(Annotated[range_type, Tag("range")])
        shapes += " or a range {low, high, step, log}"
    return Annotated[Union[tuple(members)], Discriminator(
        _shape, custom_error_type="dimension", custom_error_message=f"give {shapes}")]


FloatDim = _dim(float, FloatRange)
IntDim = _dim(int, IntRange)
ModeDim = _dim(Mode)
InitDim = _dim(Init)


StartDim = _tagged(int, "value", IntRange, "one block index or a range {low, high, step}")


class LayerRange(BaseModel):
    """Contiguous groups of `size` blocks whose first block is `start`."""

    model_config = _STRICT
    size: int = Field(ge=1, description="blocks per group (paper: 4)")
    start: StartDim = Field(
        description="first block of the group: an index, or a range such as {low: 0, high: 28, step: 4}")

    @model_validator(mode="after")
    def _check(self) -> LayerRange:
        low = self.start if isinstance(self.start, int) else self.start.low
        if low < 0:
            raise FieldIssue("start", f"{low} is negative; blocks are numbered from 0")
        return self


GroupsDim = _tagged(list[list[int]], "choices", LayerRange, "a list of groups or {size, start}")


def _train_dim(name: str) -> Any:
    """The YAML dimension of a TrainSettings field, typed after that field."""
    info = TrainSettings.model_fields[name]
    annotation = info.annotation
    if typing.get_origin(annotation) is typing.Literal:  # a choice among names (loss_reduction)
        dim = _dim(annotation)
    else:
        base = next(a for a in typing.get_args(annotation) or (annotation,) if a is not type(None))
        dim = {bool: _dim(bool), int: IntDim, float: FloatDim}[base]
    return (dim | None, Field(None, description=f"{info.description} (searched; null = the train section's value)"))


class _MaskSpace(BaseModel):
    """What to mask; TrainSettings fields are added below, each searchable the same way."""

    model_config = _STRICT
    layer_group: GroupsDim = Field(
        description="the blocks masked: a list of explicit groups [[0,1,2,3],[20,21,22,23]], "
        "or {size: 4, start: {low: 0, high: 28, step: 4}}")
    kinds: list[list[str]] | None = Field(
        None, description="choices of module-kind sets among q,k,v,o,gate,up,down, e.g. [[q,k,v,o,gate,up,down]]; "
        "null = every kind the architecture has")
    mode: ModeDim = Field("local", description="local (per-module top-k by ratio) or global (score threshold)")
    ratio: FloatDim | None = Field(
        None, description="fraction of weights masked per module, in (0, 1); sampled only when mode is local (default 0.1)")
    threshold: FloatDim | None = Field(
        None, description="scores below it are masked; sampled only when mode is global (default -0.035)")
    init: InitDim = Field("normal", description="score init: normal N(0, init_std), magnitude |W| or kaiming")
    init_std: FloatDim = Field(0.02, description="standard deviation of the normal score init")

    @field_validator("layer_group", "kinds", mode="before")
    @classmethod
    def _list_of_lists(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not any(isinstance(v, list) for v in value):
            raise ValueError(f"expects a list of choices, each a list: write [[{_yaml(value)}]] for this one choice")
        return value

    @field_validator("layer_group")
    @classmethod
    def _groups(cls, value: list[list[int]] | LayerRange) -> list[list[int]] | LayerRange:
        if isinstance(value, list):
            _check_sets(value, "block group", lambda b: f"block {b} is negative" if b < 0 else None)
        return value

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: list[list[str]] | None) -> list[list[str]] | None:
        if value is not None:
            _check_sets(value, "kind set", _unknown_kind)
        return value

    @model_validator(mode="after")
    def _conditional(self) -> _MaskSpace:
        modes = choices_of(self.mode)
        for mode, name in CUT_SETTING.items():
            if getattr(self, name) is not None and mode not in modes:
                raise FieldIssue(name, f"given but mode is only {', '.join(modes)}, so it would never be used; "
                                 f"remove {name} or add {mode} to mode")
        for name, inside in (("ratio", lambda v: 0 < v < 1), ("init_std", lambda v: v > 0)):
            for where, value in _values(getattr(self, name)):
                if not inside(value):
                    raise FieldIssue(name + where, f"{value} is outside {'(0, 1)' if name == 'ratio' else '(0, inf)'}")
        for name in TRAIN_FIELDS:
            for where, value in _values(getattr(self, name)):
                _check_train_value(name, where, value)
        _check_distinct(self)
        return self


def _check_sets(sets: list[list[Any]], what: str, bad: Callable[[Any], str | None]) -> None:
    for i, items in enumerate(sets):
        if not items:
            raise FieldIssue(str(i), f"empty {what}; list at least one")
        if len(set(items)) != len(items):
            raise FieldIssue(str(i), f"{items} repeats an entry; list each once")
        for item in items:
            if message := bad(item):
                raise FieldIssue(str(i), message)


def _unknown_kind(kind: str) -> str | None:
    if kind in KINDS:
        return None
    return f"'{kind}' is not a module kind{did_you_mean(kind, KINDS)}; choose from {', '.join(KINDS)}"


def _check_train_value(name: str, where: str, value: Any) -> None:
    try:
        TrainSettings.model_validate({name: value})
    except ValidationError as exc:
        raise FieldIssue(name + where, f"{value}: {exc.errors()[0]['msg']}") from None


def _check_distinct(space: _MaskSpace) -> None:
    for name in PARAMS:
        dim = getattr(space, name)
        if isinstance(dim, list):
            keys = [tuple(v) if isinstance(v, list) else v for v in dim]
            if len(set(keys)) != len(keys):
                raise FieldIssue(name, f"{_yaml(dim)} lists a choice twice; list each once")


def _yaml(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


SearchSpace = create_model(
    "SearchSpace", __base__=_MaskSpace, __doc__="What a sweep searches: the mask and any training setting.",
    **{name: _train_dim(name) for name in TRAIN_FIELDS})


# ---------------------------------------------------------------- reading a space


def choices_of(dim: Any) -> list[Any]:
    """The values a categorical dimension can take (a scalar is its only choice)."""
    return list(dim) if isinstance(dim, list) else [dim]


def _values(dim: Any) -> list[tuple[str, Any]]:
    """(location suffix, value) of every value a dimension names: range ends or choices."""
    if dim is None:
        return []
    if isinstance(dim, (FloatRange, IntRange)):
        return [(".low", dim.low), (".high", dim.high)]
    if isinstance(dim, list):
        return [(f"[{i}]", v) for i, v in enumerate(dim)]
    return [("", dim)]


def encode_blocks(blocks: tuple[int, ...] | list[int]) -> str:
    """Optuna's name for a layer group: "20-23" when contiguous and ascending, else "0,5,9"."""
    blocks = list(blocks)
    if len(blocks) > 1 and blocks == list(range(blocks[0], blocks[0] + len(blocks))):
        return f"{blocks[0]}-{blocks[-1]}"
    return ",".join(map(str, blocks))


def decode_blocks(text: str) -> tuple[int, ...]:
    if "-" in text:
        first, last = text.split("-")
        return tuple(range(int(first), int(last) + 1))
    return tuple(int(b) for b in text.split(","))


def layer_groups(space: SearchSpace) -> list[tuple[int, ...]]:
    """Every layer group the space can pick, in order."""
    lg = space.layer_group
    if isinstance(lg, list):
        return [tuple(g) for g in lg]
    starts = [lg.start] if isinstance(lg.start, int) else range(lg.start.low, lg.start.high + 1, lg.start.step)
    return [tuple(range(s, s + lg.size)) for s in starts]


def is_conditional(space: SearchSpace) -> bool:
    """True when trials differ in which parameters exist (both local and global modes)."""
    return len(set(choices_of(space.mode))) > 1


def check_algorithm_available(algorithm: str) -> None:
    if algorithm == "gp" and importlib.util.find_spec("scipy") is None:
        raise FieldIssue("algorithm", "gp needs scipy, which is not installed; pip install scipy, or use tpe")


# ---------------------------------------------------------------- grid and enqueued points


def grid_size(space: SearchSpace) -> int:
    """Distinct points of a finite space; ConfigError naming a continuous dimension."""
    with _as_config_error("search.space"):
        return _grid_size(space)


def finite_size(space: SearchSpace) -> int | None:
    """Distinct points of the space, or None when a dimension is continuous."""
    try:
        return _grid_size(space)
    except FieldIssue:
        return None


def _grid_size(space: SearchSpace) -> int:
    size = len(layer_groups(space)) * len(space.kinds or [None])
    branches = {mode: _count(name, getattr(space, name)) for mode, name in CUT_SETTING.items()}
    size *= sum(branches[mode] for mode in set(choices_of(space.mode)))
    for name in ("init", "init_std", *TRAIN_FIELDS):
        size *= _count(name, getattr(space, name))
    return size


def _count(name: str, dim: Any) -> int:
    if isinstance(dim, list):
        return len(dim)
    if isinstance(dim, IntRange):
        return len(range(dim.low, dim.high + 1, dim.step))
    if isinstance(dim, FloatRange):
        if dim.step is None:
            raise FieldIssue(name, "grid search needs choices or a step; give a list or add step to the range")
        return round((dim.high - dim.low) / dim.step) + 1
    return 1


def enqueue_points(space: SearchSpace, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Optuna parameters of user-given first points (Ray's points_to_evaluate).

    Each point names values as the YAML does (layer_group: [20, 21, 22, 23]); names it leaves out
    are sampled. ConfigError names search.enqueue[i].<param> when a value lies outside the space.
    """
    with _as_config_error("search"):
        return [_encode_point(space, point, f"enqueue[{i}]") for i, point in enumerate(points)]


def _encode_point(space: SearchSpace, point: dict[str, Any], at: str) -> dict[str, Any]:
    for name in point:
        if name not in PARAMS:
            raise FieldIssue(f"{at}.{name}", f"unknown parameter{did_you_mean(name, PARAMS)}; "
                             f"use the names of search.space: {', '.join(MASK_PARAMS)} or a train setting")
    modes = [point["mode"]] if "mode" in point else choices_of(space.mode)
    for needs, name in CUT_SETTING.items():
        if name in point and modes != [needs]:
            raise FieldIssue(f"{at}.{name}", f"used only when mode is {needs}; give this point mode: {needs}")
    encoded: dict[str, Any] = {}
    if "layer_group" in point:
        encoded.update(_encode_layer_group(space.layer_group, point["layer_group"], f"{at}.layer_group"))
    if "kinds" in point:
        value = point["kinds"] if isinstance(point["kinds"], str) else ",".join(point["kinds"])
        options = None if space.kinds is None else [",".join(k) for k in space.kinds]
        encoded.update(_encode_value(options, "kinds", value, f"{at}.kinds"))
    for name in ("mode", "ratio", "threshold", "init", "init_std", *TRAIN_FIELDS):
        if name in point:
            encoded.update(_encode_value(getattr(space, name), name, point[name], f"{at}.{name}"))
    return encoded


def _encode_layer_group(lg: list[list[int]] | LayerRange, value: Any, where: str) -> dict[str, Any]:
    blocks = decode_blocks(value) if isinstance(value, str) else tuple(value)
    if isinstance(lg, list):
        return _encode_value([encode_blocks(g) for g in lg], "layer_group", encode_blocks(blocks), where)
    start = blocks[0] if blocks else -1
    if blocks != tuple(range(start, start + lg.size)):
        raise FieldIssue(where, f"{list(blocks)} is not {lg.size} contiguous ascending blocks, as layer_group.size asks")
    return _encode_value(lg.start, "layer_start", start, where)


def _encode_value(dim: Any, name: str, value: Any, where: str) -> dict[str, Any]:
    """{Optuna name: value} when `value` lies in the dimension; {} when the dimension fixes it to `value`."""
    if dim is None:
        raise FieldIssue(where, "is not searched (search.space does not name it); remove it from this point")
    if isinstance(dim, (FloatRange, IntRange)):
        value = _number(value, int if isinstance(dim, IntRange) else float, where)
        if not dim.low <= value <= dim.high or (dim.step is not None and not _on_step(value, dim)):
            step = f" with step {dim.step}" if dim.step is not None else ""
            raise FieldIssue(where, f"{value} is outside the range {dim.low}..{dim.high}{step}")
        return {name: value}
    options = choices_of(dim)
    if all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in options):
        value = _number(value, float, where)
    if value not in options:
        raise FieldIssue(where, f"{value} is not among the choices {_yaml(options)}")
    return {name: value} if len(options) > 1 else {}


def _number(value: Any, kind: type, where: str) -> float | int:
    """`value` as an int or float; YAML 1.1 reads 1e-6 (no dot) as a string, so strings count."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or (kind is int and not number.is_integer()):
        raise FieldIssue(where, f"{value!r} is not a{'n integer' if kind is int else ' number'}")
    return int(number) if kind is int else number


def _on_step(value: float, dim: FloatRange | IntRange) -> bool:
    k = (value - dim.low) / dim.step
    return abs(k - round(k)) < 1e-8


def describe_space(space: SearchSpace) -> list[str]:
    """One line per dimension, for --dry-run."""
    lg = space.layer_group
    lines = [f"layer_group: {'; '.join(encode_blocks(g) for g in layer_groups(space))}"
             + (f" (size {lg.size})" if isinstance(lg, LayerRange) else "")]
    when = {name: f" (when {mode})" for mode, name in CUT_SETTING.items()}
    for name in ("kinds", "mode", "ratio", "threshold", "init", "init_std", *TRAIN_FIELDS):
        dim = getattr(space, name)
        if dim is not None:
            lines.append(f"{name}: {_describe(dim)}{when.get(name, '') if is_conditional(space) else ''}")
    return lines


def _describe(dim: Any) -> str:
    if isinstance(dim, (FloatRange, IntRange)):
        extra = (f" step {dim.step}" if dim.step and not (isinstance(dim, IntRange) and dim.step == 1) else "")
        return f"{dim.low}..{dim.high}{extra}{' log' if dim.log else ''}"
    if isinstance(dim, list) and len(dim) > 1:
        return " | ".join(",".join(v) if isinstance(v, list) else str(v) for v in dim)
    value = dim[0] if isinstance(dim, list) else dim
    return f"{','.join(value) if isinstance(value, list) else value} (fixed)"
