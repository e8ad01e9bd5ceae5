"""Run options declared once, on the field of the config dataclass that holds them.

`option(default, help, ...)` is a dataclass field whose metadata says what values the field takes (its type from
the annotation; a range, open or closed, or a list of choices), what it means, and, for the options a front end
shows, the command-line flag and the demo page's label. Everything else reads the declaration: `check_options`
(the dataclasses' `__post_init__`), the command line's typed options and their help, the demo's widgets and their
checks, and the run config's schema (the dataclass itself). Messages name the field, the value and what is
expected, in the same words everywhere (`Option.expected`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """What a field takes and how front ends show it. Bounds are inclusive unless marked open."""

    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    flag: str | None = None  # the command line's option for run commands (`--p`); None: config key only
    label: str | None = None  # the demo page's widget label; None: not on the page

    def expected(self, kind: type) -> str:
        """What a valid value is, in words: "a number > 0 and < 1", "an int >= 0", "one of ('a', 'b')"."""
        if self.choices is not None:
            return f"one of {self.choices}"
        if kind is bool:
            return "a bool"
        bounds = [
            f"{'>' if self.low_open else '>='} {_num(self.low)}" if self.low is not None else "",
            f"{'<' if self.high_open else '<='} {_num(self.high)}" if self.high is not None else "",
        ]
        what = {int: "an int", float: "a finite number", str: "a text"}.get(kind, kind.__name__)
        return " ".join([what, " and ".join(b for b in bounds if b)]).strip()

    def valid(self, value: Any, kind: type) -> bool:
        """Whether `value` (already of the field's Python type, not parsed) is acceptable."""
        if self.choices is not None:
            return value in self.choices
        if kind is bool:
            return isinstance(value, bool)
        if kind is str:
            return isinstance(value, str)
        if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float):
            return False
        if kind is float and not math.isfinite(value):
            return False
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return low_ok and high_ok

    def parse(self, name: str, value: Any, kind: type) -> Any:
        """A value typed on a command line (text) or sent by a form (a number, 10.0 for 10) as the field's type;
        raises ValueError("<name> must be <expected>, got <value>"). Never rounds: 10.5 is not an int."""
        parsed = value
        try:
            if kind is int and isinstance(value, str):
                parsed = int(value.strip())
            elif kind is int and isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                parsed = int(value)
            elif kind is float and isinstance(value, str | int) and not isinstance(value, bool):
                parsed = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{name} must be {self.expected(kind)}, got {_shown(value)}") from None
        if not self.valid(parsed, kind):
            raise ValueError(f"{name} must be {self.expected(kind)}, got {_shown(value)}")
        return parsed


def option(default: Any, help: str, **declared) -> Any:
    """A dataclass field carrying its `Option` (see the module docstring); `declared` are `Option`'s fields."""
    return dataclasses.field(default=default, metadata={"option": Option(help, **declared)})


def option_of(cls: type, name: str, default: Any) -> Any:
    """A subclass's field that keeps a parent's declared option with another default (LongLive's 12-frame cache)."""
    inherited = {f.name: f for f in dataclasses.fields(cls)}[name]
    return dataclasses.field(default=default, metadata=inherited.metadata)


def options(cls: type) -> dict[str, tuple[Option, type, Any]]:
    """The declared options of a dataclass: name -> (option, scalar type, default), in field order."""
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        if "option" in f.metadata:
            found[f.name] = (f.metadata["option"], scalar_type(hints[f.name]), f.default)
    return found


def scalar_type(hint: Any) -> type:
    """bool / int / float / str of an annotation (`X | None` counts as X)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    return hint if hint in (bool, int, float, str) else object


def nullable(cls: type, name: str) -> bool:
    """Whether the field's annotation allows None."""
    hint = typing.get_type_hints(cls)[name]
    return type(None) in typing.get_args(hint)


def check_options(obj: Any) -> None:
    """Raise ValueError naming the first declared field of `obj` whose value its option does not accept."""
    for name, (opt, kind, _) in options(type(obj)).items():
        value = getattr(obj, name)
        if value is None and nullable(type(obj), name):
            continue
        if not opt.valid(value, kind):
            raise ValueError(f"{name} must be {opt.expected(kind)}, got {_shown(value, typed=False)}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**63 else str(x)


def _shown(value: Any, typed: bool = True) -> str:
    """A value for a message, cut when long: what was typed (text as it is, unless empty), else its repr."""
    text = value if typed and isinstance(value, str) and value.strip() else repr(value)
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} characters)"
