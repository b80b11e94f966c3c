"""Typed configs: each dataclass field declares its help and its valid range once, and the CLI flags, the validation
and the loading of a saved config.json all read that declaration.

    @dataclass
    class TrainConfig:
        lr: float = option(1e-3, "peak learning rate", gt=0)
        steps: int = option(600, "optimizer steps", ge=1, le=10**9)
        norm: str = option("pre", "LayerNorm placement", choices=("pre", "post", "none"))

    add_options(parser, TrainConfig)            # --lr, --steps, --norm with types, choices and help
    cfg = from_args(args, TrainConfig)          # the defaults, then what the user gave; checked
    cfg = load(TrainConfig, saved, "RUN/config.json")   # a saved config, checked the same way

Every bad value becomes one ``UserError`` that names the flag and the allowed range, raised before any folder is made.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import MISSING, fields, replace
from typing import Any, TypeVar

from nexttoken.errors import UserError

T = TypeVar("T")
BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def option(default: Any = MISSING, help: str = "", *, ge=None, gt=None, le=None, lt=None,
           choices: tuple | None = None, flag: bool = True, default_factory: Any = MISSING) -> Any:
    """A dataclass field with its help text and valid range; ``flag=False`` keeps it out of the CLI (derived fields)."""
    meta = {"help": help, "choices": choices, "flag": flag,
            **{k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---- numbers from the command line ----------------------------------------------------------------------------------
def number(text: str) -> float:
    """A finite float; 'inf' and 'nan' are refused.

    >>> number("3e-4")
    0.0003
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def integer(text: str) -> int:
    """An integer, also written as 1e5.

    >>> integer("1e5")
    100000
    """
    value = number(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---- the declared types and ranges ------------------------------------------------------------------------------------
def _kind(cls: type, f: dataclasses.Field) -> Any:
    """The field's type, resolved from the annotation string (``from __future__ import annotations``)."""
    hints = typing.get_type_hints(cls)
    return hints[f.name]


def _base(kind: Any) -> Any:
    """float | None -> float; list[str] stays as is."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind


def describe(f: dataclasses.Field) -> str:
    """The declared range in words, e.g. '> 0 and <= 1' or 'one of pre, post, none'."""
    m = f.metadata
    if m.get("choices"):
        return "one of " + ", ".join(map(str, m["choices"]))
    return " and ".join(f"{BOUNDS[k]} {m[k]:g}" if isinstance(m[k], float) else f"{BOUNDS[k]} {m[k]}"
                        for k in BOUNDS if k in m)


def check_field(cls: type, f: dataclasses.Field, value: Any, where: str = "") -> Any:
    """``value`` converted to the field's type and checked against its range; a UserError names the flag."""
    name = where or flag_name(f.name)
    kind = _base(_kind(cls, f))
    if value is None:
        if kind is not _kind(cls, f):  # Optional: None is a value
            return None
        raise UserError(f"{name} needs a value")
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
                raise TypeError
            value = int(value)
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError
            value = float(value)
        elif kind is str and not isinstance(value, str):
            raise TypeError
        elif typing.get_origin(kind) in (list, tuple) and not _sequence_of(kind, value):
            # a saved config.json edited by hand or damaged: caught here, not as a traceback deep in the model
            raise UserError(f"{name} must be a {str(kind).replace('typing.', '')}, not {value!r}")
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name} must be a finite {getattr(kind, '__name__', kind)}, not {value!r}") from None
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        raise UserError(f"{name} must be {describe(f)}, not {value!r}")
    ok = {"ge": lambda a, b: a >= b, "gt": lambda a, b: a > b, "le": lambda a, b: a <= b, "lt": lambda a, b: a < b}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for k, test in ok.items():
            if k in m and not test(value, m[k]):
                raise UserError(f"{name} must be {describe(f)}, not {value!r}")
    return value


def _sequence_of(kind: Any, value: Any) -> bool:
    """``value`` is a list or tuple of ``kind``'s items (``list[str]``, ``tuple[float, float]``, ``tuple[int, ...]``).

    >>> _sequence_of(tuple[float, float], (0.9, 0.95)), _sequence_of(tuple[float, float], [0.9])
    (True, False)
    >>> _sequence_of(list[str], ["a", 1]), _sequence_of(list[str], 5)
    (False, False)
    """
    if not isinstance(value, (list, tuple)):
        return False
    items = typing.get_args(kind)
    if typing.get_origin(kind) is tuple and items and items[-1] is not Ellipsis:
        if len(value) != len(items):
            return False
    else:
        items = items[:1] * len(value)
    numbers = (int, float)
    return all(item not in (str, int, float) or (isinstance(v, str) if item is str else
               isinstance(v, numbers) and not isinstance(v, bool) and (item is float or v == int(v)))
               for item, v in zip(items, value))


def changed(cfg: T, base: T) -> dict:
    """The settings of ``cfg`` that differ from ``base``'s (what a preset changes, for ``add_options(presets=...)``).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     steps: int = 10
    ...     lr: float = 0.1
    >>> changed(C(steps=20), C())
    {'steps': 20}
    """
    return {f.name: getattr(cfg, f.name) for f in fields(cfg) if getattr(cfg, f.name) != getattr(base, f.name)}


def check(cfg: T) -> T:
    """Check every field of a config dataclass against its declaration; returns the config."""
    for f in fields(cfg):
        setattr(cfg, f.name, check_field(type(cfg), f, getattr(cfg, f.name)))
    return cfg


def load(cls: type[T], data: Any, source: str) -> T:
    """A config from a saved dict (config.json): fields it lacks take their defaults, keys no longer declared are
    ignored, and a wrong value is one UserError that names ``source``."""
    if not isinstance(data, dict):
        raise UserError(f"{source} is damaged: expected a JSON object of settings")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in data.items():
        if key in known:
            kind = _base(_kind(cls, known[key]))
            if typing.get_origin(kind) is tuple and isinstance(value, list):
                value = tuple(value)
            values[key] = value
    try:
        cfg = cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(f"{source} is damaged: {e}") from None
    except UserError as e:  # a config that checks itself on creation: say which file holds the value
        raise UserError(f"{source}: {e}") from None
    for f in fields(cfg):
        setattr(cfg, f.name, check_field(cls, f, getattr(cfg, f.name), where=f"{source}: {f.name}"))
    return cfg


# ---- the command line -----------------------------------------------------------------------------------------------
def add_options(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                presets: dict[str, dict] | None = None, defaults: dict | None = None) -> None:
    """One flag per field of ``cls`` (except ``skip`` and fields declared with ``flag=False``). Every flag defaults to
    None, so ``from_args`` can tell what the user gave; the help shows the dataclass default (overridden by
    ``defaults``) and any preset that changes it."""
    defaults = defaults or {}
    for f in fields(cls):
        if f.name in skip or not f.metadata.get("flag", True):
            continue
        kind = _base(_kind(cls, f))
        default = defaults.get(f.name, f.default if f.default is not MISSING else None)
        shown = f"default {default}" if default not in (None, "", []) else ""
        varied = [f"{name}: {p[f.name]}" for name, p in (presets or {}).items() if f.name in p]
        extra = "; ".join(x for x in [shown, *varied, describe(f) if not f.metadata.get("choices") else ""] if x)
        text = f.metadata.get("help", "")
        text = f"{text} ({extra})" if extra else text
        if kind is bool:
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag_name(f.name), type=_comma_list, default=None, metavar="A,B", help=text)
        else:
            parse = {int: integer, float: number}.get(kind, str)
            parser.add_argument(flag_name(f.name), type=parse, default=None, help=text,
                                metavar=f.name.upper() if not f.metadata.get("choices") else None,
                                choices=f.metadata.get("choices") if kind is str else None)


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def given(args: argparse.Namespace, cls: type) -> dict:
    """The fields of ``cls`` that the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


def from_args(args: argparse.Namespace, cls: type[T], base: T | None = None) -> T:
    """``base`` (default: the dataclass defaults) with the flags the user gave; checked."""
    return check(replace(base if base is not None else cls(), **given(args, cls)))


def resumed(saved: T, requested: dict, adjustable: tuple[str, ...] = (), trained: int = 0) -> T:
    """The saved config of a run being resumed, with the ``requested`` changes that are safe (``adjustable``: e.g.
    more steps). Any other flag that differs from the saved run is refused: a resumed run keeps its course. A step
    count (``steps``, ``iterations``) below the ``trained`` ones is refused too: they cannot be untrained, and the
    run's config and summary would count steps it did not take.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     steps: int = option(10, ge=1)
    ...     lr: float = option(0.1, gt=0)
    >>> resumed(C(), {"steps": 20}, adjustable=("steps",)).steps
    20
    """
    changes = {k: v for k, v in requested.items() if getattr(saved, k) != v}
    refused = [k for k in changes if k not in adjustable]
    if refused:
        k = refused[0]
        if isinstance(requested[k], bool):
            asked = flag_name(k) if requested[k] else "--no-" + flag_name(k)[2:]
            raise UserError(f"{asked} differs from the resumed run; a resumed run keeps its settings (start a new "
                            f"run to change it)")
        def shown(v) -> str:  # as it is typed on the command line
            return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

        raise UserError(f"{flag_name(k)} {shown(requested[k])} differs from the resumed run's "
                        f"{shown(getattr(saved, k))}; a resumed run keeps its settings (start a new run to change it)")
    for k in ("steps", "iterations"):
        if k in changes and changes[k] < trained:
            raise UserError(f"{flag_name(k)} {changes[k]:,} is fewer than the {trained:,} {k} the resumed run has "
                            f"trained; give {trained:,} or more, or leave it out")
    return check(replace(saved, **changes))
