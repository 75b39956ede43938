"""Suites: YAML files that say what to measure (upsamplers x inputs x dtypes x devices).

Built-in suites are the YAML files of the repository's top-level ``suites/`` folder (``ci``,
``fpn-coco``, ``segformer-ade``, ``smoke``), installed inside the package as ``lda_bench/suites/``;
any other suite is a path to a YAML file. Validation errors name the file and the bad key.

Format::

    name: my-suite                      # required
    description: free text
    upsamplers: [all]                   # or names / {name, options, label, inputs: [labels]} entries
    inputs:                             # required, non-empty
      - {label: "P3->P2", channels: 256, size: [104, 168], guide_channels: 256, count: 1, batch: 1}
    batch: 1
    scale: 2
    dtypes: [fp32]                      # fp32 | fp16 | bf16 | fp64
    devices: [auto]                     # auto | cpu | cuda | cuda:N
    metrics: [params, flops, latency, memory, accuracy]
    repeats: 10                         # optional timing settings
    min_time: 1.0
    max_time: 60.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lda_bench.core.devices import DTYPES
from lda_bench.core.errors import UsageError

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
METRICS = ("params", "flops", "latency", "memory", "accuracy")
_TOP_KEYS = ("name", "description", "upsamplers", "inputs", "batch", "scale", "dtypes", "devices", "metrics",
             "repeats", "min_time", "max_time")
_INPUT_KEYS = ("label", "channels", "size", "guide_channels", "count", "batch")
_UPSAMPLER_KEYS = ("name", "options", "label", "inputs")


class SuiteError(UsageError):
    """A suite file is missing or invalid."""


def suite_dir() -> Path:
    """Where the built-in suites are: ``lda_bench/suites/`` in an installed wheel, the checkout's
    top-level ``suites/`` otherwise (an editable install or a source tree)."""
    packaged = _PACKAGE_ROOT / "suites"
    return packaged if packaged.is_dir() else _PACKAGE_ROOT.parent / "suites"


@dataclass(frozen=True)
class SuiteInput:
    label: str
    channels: int
    height: int
    width: int
    batch: int
    guide_channels: int | None = None
    count: int = 1


@dataclass(frozen=True)
class SuiteUpsampler:
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    inputs: tuple[str, ...] | None = None  # restrict to these input labels (None: all inputs)


@dataclass
class Suite:
    name: str
    description: str
    upsamplers: list[SuiteUpsampler]
    inputs: list[SuiteInput]
    scale: int = 2
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    devices: list[str] = field(default_factory=lambda: ["auto"])
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    repeats: int | None = None
    min_time: float | None = None
    max_time: float | None = None
    source: str = ""


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in suite_dir().glob("*.yaml"))


def _fail(source: str, message: str) -> SuiteError:
    return SuiteError(f"suite {source}: {message}")


def _check_keys(source: str, where: str, data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            import difflib

            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(source, f"unknown key {key!r} in {where}{hint}; valid keys: {', '.join(allowed)}")


def _positive_int(source: str, where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(source, f"{where} must be a positive integer, got {value!r}")
    return value


def _str_list(source: str, key: str, value: Any, allowed: tuple[str, ...] | None = None) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _fail(source, f"{key!r} must be a non-empty list of strings, got {value!r}")
    if allowed is not None:
        for v in value:
            if v not in allowed:
                raise _fail(source, f"{key!r} has unknown value {v!r}; valid: {', '.join(allowed)}")
    return value


def _parse_upsamplers(source: str, value: Any) -> list[SuiteUpsampler]:
    if value is None:
        return [SuiteUpsampler("all")]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _fail(source, f"'upsamplers' must be a non-empty list, got {value!r}")
    out = []
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            out.append(SuiteUpsampler(entry))
            continue
        if not isinstance(entry, dict) or "name" not in entry:
            raise _fail(source, f"upsamplers[{i}] must be a name or a mapping with 'name', got {entry!r}")
        _check_keys(source, f"upsamplers[{i}]", entry, _UPSAMPLER_KEYS)
        options = entry.get("options") or {}
        if not isinstance(options, dict):
            raise _fail(source, f"upsamplers[{i}].options must be a mapping, got {options!r}")
        only = entry.get("inputs")
        if only is not None:
            only = tuple(_str_list(source, f"upsamplers[{i}].inputs", only))
        out.append(SuiteUpsampler(str(entry["name"]), dict(options), entry.get("label"), only))
    return out


def _parse_inputs(source: str, value: Any, default_batch: int) -> list[SuiteInput]:
    if not isinstance(value, list) or not value:
        raise _fail(source, "'inputs' must be a non-empty list of {label, channels, size} mappings")
    out = []
    for i, entry in enumerate(value):
        where = f"inputs[{i}]"
        if not isinstance(entry, dict):
            raise _fail(source, f"{where} must be a mapping, got {entry!r}")
        _check_keys(source, where, entry, _INPUT_KEYS)
        for key in ("channels", "size"):
            if key not in entry:
                raise _fail(source, f"{where} is missing {key!r}")
        size = entry["size"]
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
            raise _fail(source, f"{where}.size must be [height, width] with positive integers, got {size!r}")
        guide = entry.get("guide_channels")
        out.append(SuiteInput(
            label=str(entry.get("label", f"{size[0]}x{size[1]}")),
            channels=_positive_int(source, f"{where}.channels", entry["channels"]),
            height=size[0],
            width=size[1],
            batch=_positive_int(source, f"{where}.batch", entry.get("batch", default_batch)),
            guide_channels=None if guide is None else _positive_int(source, f"{where}.guide_channels", guide),
            count=_positive_int(source, f"{where}.count", entry.get("count", 1)),
        ))
    return out


def parse_suite(data: Any, source: str = "<memory>") -> Suite:
    """Validate a suite mapping (as loaded from YAML)."""
    if not isinstance(data, dict):
        raise _fail(source, f"must be a YAML mapping, got {type(data).__name__}")
    _check_keys(source, "the top level", data, _TOP_KEYS)
    if not isinstance(data.get("name"), str) or not data["name"]:
        raise _fail(source, "'name' (a non-empty string) is required")
    batch = _positive_int(source, "'batch'", data.get("batch", 1))
    scale = _positive_int(source, "'scale'", data.get("scale", 2))
    if scale < 2:
        raise _fail(source, f"'scale' must be >= 2, got {scale}")
    repeats = data.get("repeats")
    min_time = data.get("min_time")
    max_time = data.get("max_time")
    for key, value in (("min_time", min_time), ("max_time", max_time)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise _fail(source, f"{key!r} must be a non-negative number of seconds, got {value!r}")
    inputs = _parse_inputs(source, data.get("inputs"), batch)
    upsamplers = _parse_upsamplers(source, data.get("upsamplers"))
    labels = {i.label for i in inputs}
    for i, entry in enumerate(upsamplers):
        for label in entry.inputs or ():
            if label not in labels:
                raise _fail(source, f"upsamplers[{i}].inputs names unknown input {label!r}; inputs: "
                                    f"{', '.join(sorted(labels))}")
    return Suite(
        name=data["name"],
        description=str(data.get("description", "")),
        upsamplers=upsamplers,
        inputs=inputs,
        scale=scale,
        dtypes=_str_list(source, "dtypes", data.get("dtypes", ["fp32"]), tuple(DTYPES)),
        devices=_str_list(source, "devices", data.get("devices", ["auto"])),
        metrics=_str_list(source, "metrics", data.get("metrics", list(METRICS)), METRICS),
        repeats=None if repeats is None else _positive_int(source, "'repeats'", repeats),
        min_time=None if min_time is None else float(min_time),
        max_time=None if max_time is None else float(max_time),
        source=source,
    )


def load_suite(name_or_path: str | Path) -> Suite:
    """A built-in suite by name (``fpn-coco``) or a YAML file by path."""
    path = Path(name_or_path)
    builtin = suite_dir() / f"{name_or_path}.yaml"
    if path.is_dir() and not (builtin.is_file() and not path.suffix):
        raise SuiteError(f"suite {path} is a folder; give a .yaml file or a built-in suite name")
    if not path.is_file():
        if builtin.is_file() and not path.suffix:
            path = builtin
        elif path.suffix in (".yaml", ".yml") or path.parent != Path("."):
            raise SuiteError(f"suite file {path} does not exist")
        else:
            raise SuiteError(
                f"unknown suite {str(name_or_path)!r}; built-in suites: {', '.join(builtin_suites())} "
                "(or give a path to a .yaml file)"
            )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SuiteError(f"suite {path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise SuiteError(f"suite {path} is not a text (YAML) file: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise SuiteError(f"cannot read suite {path}: {exc.strerror or exc}") from None
    return parse_suite(data, str(path))
