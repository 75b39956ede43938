"""Parsing what users type: ``KEY=VALUE`` options, comma-separated lists and ``HxW`` pairs.

One syntax for every command: option values are YAML scalars (``true``/``false``, ``null``,
ints, floats, ``[1, 2]`` lists, anything else a string; quotes keep a string, ``'3'``), so
``-o rpb=false`` is ``False`` in ``profile``, ``run`` and ``eval`` alike. One addition to YAML 1.1:
floats in exponent notation that PyYAML reads as strings (``1e-3``, ``2.5e2``) are floats.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

import yaml

from .errors import UsageError


def parse_options(pairs: Iterable[str] | Mapping[str, Any] | None, option: str = "--option") -> dict[str, Any]:
    """``["k_u=5", "rpb=false"]`` -> ``{"k_u": 5, "rpb": False}``; a mapping is taken as it is.

    ``option`` names the command-line option in error messages.
    """
    if pairs is None:
        return {}
    if isinstance(pairs, Mapping):
        return dict(pairs)
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} expects KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = parse_value(value)
        except UsageError as exc:
            raise UsageError(f"{option} {pair!r}: {exc}") from None
    return options


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of what JSON reports hold: null, bools, numbers, strings, lists."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def parse_value(text: str) -> Any:
    """One option value: a YAML scalar or flow list (see the module docstring); empty -> ``""``."""
    if not text.strip():
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"the value is not a YAML scalar or flow list ({problem}); quote it to pass a string") from None
    if isinstance(value, dict):
        raise UsageError("the value is a mapping; options take scalars and lists") from None
    if not _plain(value):  # YAML timestamps and the like: keep what was typed
        return text.strip()
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(text.strip()):
        return float(text)
    return value


def split_list(value: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b,c"]`` -> ``["a", "b", "c"]``; None or nothing -> None."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out = [part.strip() for item in items for part in item.split(",") if part.strip()]
    return out or None


_PAIR = re.compile(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*")


def parse_pair(value: str | Sequence[int], option: str, example: str) -> tuple[int, int]:
    """``"104x168"`` (also ``104X168``, ``104,168``) or ``(104, 168)`` -> (104, 168), both positive.

    The error says ``{option} must look like {example}``.
    """
    parts: list[int] = []
    if isinstance(value, str):
        match = _PAIR.fullmatch(value)
        if match:
            parts = [int(match.group(1)), int(match.group(2))]
    else:
        try:
            parts = [int(v) for v in value]
        except (TypeError, ValueError):
            parts = []
    if len(parts) != 2 or min(parts) < 1:
        raise UsageError(f"{option} must look like {example}, got {value!r}")
    return parts[0], parts[1]


_BYTES = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*")
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str, option: str) -> int:
    """``"8G"``, ``"512MiB"``, ``"1.5g"``, ``"1000000"`` -> bytes (binary units; positive)."""
    match = _BYTES.fullmatch(text)
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()]) if match else 0
    if value <= 0:
        raise UsageError(f"{option} must be a positive size such as 8G, 512M or 1000000 (bytes), got {text!r}")
    return value
