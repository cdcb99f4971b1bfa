"""Strict conversion of nested dicts (YAML, JSON, papermill parameters) into frozen dataclasses.

The machinery behind :mod:`fasterseg_core.config`: every key must be a field, every value must have the
field's type, and a value outside its range fails with one line naming the key, the value, the rule and a
valid example. Ranges are carried in ``typing.Annotated`` metadata (``Annotated[int, AtLeast(1)]``), so the
same objects serve validation and the widget form (:func:`fields_of`).

Nothing here knows FasterSeg; it is the configurator nanoGPT calls "poor man's", made strict.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal


class ConfigError(ValueError):
    """A profile or override that does not fit the typed configuration (the message says how to fix it)."""


@dataclass(frozen=True)
class Range:
    """``lo ≤ value ≤ hi`` (either bound open or absent); with ``length`` the rule is on ``len(value)``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    length: bool = False

    def describe(self) -> str:
        what = "its length" if self.length else "it"
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '≥'} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '≤'} {self.hi:g}")
        return f"{what} must be {' and '.join(parts)}"

    def holds(self, value: Any) -> bool:
        v = len(value) if self.length else value
        if isinstance(v, float) and math.isnan(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))


def AtLeast(lo: float) -> Range:
    """``value ≥ lo``."""
    return Range(lo=lo)


def Positive() -> Range:
    """``value > 0``."""
    return Range(lo=0, lo_open=True)


@dataclass(frozen=True)
class Sides:
    """Image sides (H, W) that are multiples of ``multiple`` and at least ``minimum``."""

    multiple: int
    minimum: int

    def describe(self) -> str:
        return f"both sides must be multiples of {self.multiple} and at least {self.minimum}"

    def holds(self, value: Sequence[int]) -> bool:
        return all(d % self.multiple == 0 and d >= self.minimum for d in value)

    def fix(self, value: Sequence[int]) -> list[int]:
        return [max(self.minimum, self.multiple * math.ceil(d / self.multiple)) for d in value]


Constraint = Range | Sides


def _yaml(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check(value: Any, rules: Sequence[Constraint], where: str, example: Any) -> None:
    for rule in rules:
        if not rule.holds(value):
            good = rule.fix(value) if isinstance(rule, Sides) else example
            hint = f"; e.g. {where.split('[')[0]}: {_yaml(good)}" if good is not None else ""
            raise ConfigError(f"{where}: {_yaml(value)} is out of range: {rule.describe()}{hint}")


def convert(value: Any, tp: Any, where: str, example: Any = None) -> Any:
    """``value`` as type ``tp`` (strict: no silent casts but int → float), its constraints checked.

    Args:
        where: the dotted key, for messages.
        example: a valid value of the field (its default), shown when a range fails.
    """
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *rules = typing.get_args(tp)
        out = convert(value, base, where, example)
        _check(out, [r for r in rules if isinstance(r, (Range, Sides))], where, example)
        return out
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (section), got {type(value).__name__}")
        return build(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return convert(value, arg, where, example)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is tuple:
        return _convert_tuple(value, typing.get_args(tp), where, example)
    return _convert_scalar(value, tp, where)


def _convert_tuple(value: Any, args: tuple[Any, ...], where: str, example: Any) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(v, args[0], f"{where}[{i}]", example) for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
    return tuple(convert(v, a, f"{where}[{i}]", example) for i, (v, a) in enumerate(zip(value, args)))


def _convert_scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - programming error


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instance of dataclass ``cls`` from ``values``; unknown keys fail naming the valid ones."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {[prefix + k for k in unknown]}; valid keys in "
            f"{where or 'the top level'}: {list(fields)}"
        )
    kwargs = {
        k: convert(v, hints[k], f"{where}.{k}" if where else k, _default(fields[k])) for k, v in values.items()
    }
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return None if f.default_factory is dataclasses.MISSING else f.default_factory()


@dataclass(frozen=True)
class FieldInfo:
    """One config key as a form shows it: dotted name, base type, default, choices and range."""

    key: str
    base: Any
    default: Any
    choices: tuple[Any, ...] = ()
    rules: tuple[Constraint, ...] = ()


def fields_of(cls: type, prefix: str = "") -> list[FieldInfo]:
    """Every leaf key of a config dataclass (nested sections flattened to dotted keys), in order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: list[FieldInfo] = []
    for f in dataclasses.fields(cls):
        tp, rules = hints[f.name], ()
        if typing.get_origin(tp) is typing.Annotated:
            tp, *extra = typing.get_args(tp)
            rules = tuple(r for r in extra if isinstance(r, (Range, Sides)))
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            out += fields_of(tp, f"{key}.")
            continue
        choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else ()
        out.append(FieldInfo(key, tp, _default(f), choices, rules))
    return out
