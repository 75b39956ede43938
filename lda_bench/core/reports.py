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

from .errors import OutputExistsError, UsageError

SCHEMA_VERSION = 1
DEFAULT_RESULTS_DIR = Path("results")


class ReportError(UsageError):
    """A report file is missing, unreadable or not an lda-bench report."""


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
    """``path`` as a Path; raises :class:`OutputExistsError` if it exists and ``force`` is false
    (``option`` names the command-line option that chose the path)."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it or choose another {option}")
    return path


def write_atomic(data: str | bytes, path: str | Path, force: bool = False) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically (temp file in the same folder, fsync,
    rename); raises :class:`OutputExistsError` if ``path`` exists and ``force`` is false."""
    path = ensure_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a report is an ordinary file
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
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
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read report {path}: {exc}") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise ReportError(f"{path} is not an lda-bench report (no schema_version)")
    if data["schema_version"] > SCHEMA_VERSION:
        raise ReportError(
            f"{path} has schema_version {data['schema_version']}, newer than this lda-bench understands "
            f"({SCHEMA_VERSION}); upgrade lda-bench"
        )
    if kind is not None and data.get("kind") != kind:
        raise ReportError(f"{path} is a {data.get('kind')!r} report, expected {kind!r}")
    return data
