"""JSON reports and output files: versioned schema, atomic writes that never silently overwrite.

Every file a command writes (reports, baselines, prediction files) goes through
:func:`write_atomic`: a temporary file in the target folder, flushed and fsync'ed, then
renamed over the target, so a reader (or a crash) never sees half a file and an existing file is
replaced only with ``force``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import CommandError, OutputExistsError, UsageError

SCHEMA_VERSION = 1
DEFAULT_RESULTS_DIR = Path("results")


class ReportError(UsageError):
    """A report file is missing, unreadable or not an lda-bench report."""


class OutputWriteError(CommandError):
    """A file could not be written (a full disk, a vanished folder); what was there is unchanged."""


def default_report_path(kind: str, label: str | None = None, directory: Path | None = None) -> Path:
    """``results/<kind>[-<label>]-<YYYYmmdd-HHMMSS>.json`` (a suffix is added if that exists)."""
    directory = DEFAULT_RESULTS_DIR if directory is None else directory
    stem = "-".join(part for part in (kind, label, time.strftime("%Y%m%d-%H%M%S")) if part)
    path = directory / f"{stem}.json"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.json"
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; null is explicit
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n"


def ensure_writable(path: str | Path, force: bool, option: str = "--output") -> Path:
    """``path`` as a Path, checked before any work starts: it must not exist unless ``force``
    (:class:`OutputExistsError`), must not be a folder, and its folder must take a new file (a
    probe file is created and removed); ``option`` names the command-line option in the errors."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file path")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it or choose another {option}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def write_atomic(data: str | bytes, path: str | Path, force: bool = False) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically (temp file in the same folder, fsync,
    rename); raises :class:`OutputExistsError` if ``path`` exists and ``force`` is false."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it or choose another --output")
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a report is an ordinary file
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        kept = "the previous file is unchanged" if path.exists() else "nothing was written"
        raise OutputWriteError(f"cannot write {path}: {exc.strerror or exc}; {kept}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report(report: dict[str, Any], path: str | Path, force: bool = False) -> Path:
    """Write ``report`` as indented JSON (non-finite floats as null) with :func:`write_atomic`.

    Raises :class:`OutputExistsError` (a ``FileExistsError``) if ``path`` exists and ``force`` is false.
    """
    return write_atomic(dumps(report), path, force)


def write_json(obj: Any, path: str | Path, force: bool = False) -> Path:
    """Write ``obj`` as compact JSON (e.g. a COCO results file) with :func:`write_atomic`."""
    return write_atomic(json.dumps(obj), path, force)


def load_report(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load and sanity-check a report written by :func:`write_report`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"report {path} does not exist") from None
    except IsADirectoryError:
        raise ReportError(f"report {path} is a folder, not a JSON file") from None
    except UnicodeDecodeError as exc:
        raise ReportError(f"report {path} is not a text (JSON) file: {exc.reason} at byte {exc.start}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read report {path}: {exc}") from None
    if isinstance(data, dict) and not isinstance(data.get("schema_version", 0), int):
        raise ReportError(f"{path} is not an lda-bench report (schema_version is not an integer)")
    if not isinstance(data, dict) or "schema_version" not in data:
        raise ReportError(f"{path} is not an lda-bench report (no schema_version)")
    if data["schema_version"] > SCHEMA_VERSION:
        raise ReportError(
            f"{path} has schema_version {data['schema_version']}, newer than this lda-bench understands "
            f"({SCHEMA_VERSION}); upgrade lda-bench"
        )
    if kind is not None and data.get("kind") != kind:
        raise ReportError(f"{path} is a {data.get('kind')!r} report, expected {kind!r}")
    problem = _shape_problem(data)
    if problem:
        raise ReportError(f"{path} is not a well-formed {data.get('kind')!r} report: {problem}")
    return data


_NUMBER = (int, float)
# Fields of a case (or sweep point) record that readers use, and the types they may hold (or null).
_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "label": (str,), "upsampler": (str,), "backend": (str,), "dtype": (str,), "device": (str,), "error": (str,),
    "options": (dict,), "macs": (int,), "params": (int,), "input_shape": (list,), "output_shape": (list,),
    "output_pixels": (int,), "peak_memory_bytes": (int,), "forward_backward_peak_memory_bytes": (int,),
    "latency_ms": (dict,), "forward_backward_latency_ms": (dict,), "roofline": (dict,),
}


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not isinstance(
            record.get("status"), str):
        return "is not a record with a string 'id' and 'status'"
    for key, types in _RECORD_FIELDS.items():
        value = record.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            return f"has a {key!r} that is not {' or '.join(t.__name__ for t in types)}"
    for key in ("latency_ms", "forward_backward_latency_ms"):
        stats = record.get(key)
        if stats and not (isinstance(stats.get("median"), _NUMBER) and all(
                isinstance(v, _NUMBER) for v in stats.get("samples") or [])):
            return f"has a {key!r} without a numeric median and samples"
    for key in ("input_shape", "output_shape"):
        shape = record.get(key)
        if shape is not None and not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape):
            return f"has a {key!r} that is not a list of sizes"
    return None


def _shape_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the parts every reader of a report relies on, or None."""
    for key in ("env", "settings", "suite", "machine"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"{key!r} is not a mapping"
    records: list[tuple[str, Any]] = []
    if data.get("kind") in ("profile", "regress"):
        cases = data.get("cases")
        if not isinstance(cases, list):
            return "'cases' is not a list"
        records = [(f"cases[{i}]", c) for i, c in enumerate(cases)]
    if data.get("kind") == "sweep":
        series = data.get("series")
        if not isinstance(series, list) or not all(isinstance(s, dict) and isinstance(s.get("points"), list)
                                                   and isinstance(s.get("label", ""), str) for s in series):
            return "'series' is not a list of series with a 'label' and 'points'"
        records = [(f"series[{i}].points[{j}]", p) for i, s in enumerate(series) for j, p in enumerate(s["points"])]
    for where, record in records:
        problem = _record_problem(record)
        if problem:
            return f"{where} {problem}"
    return None
