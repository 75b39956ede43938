"""The oracle harness in one command: lda-bench against upstream mmcv / mmdet / mmseg themselves.

    python benchmarks/oracle/run.py \
        [--lda-aqu-repo PATH/TO/LDA-AQU] [--panopticapi PATH/TO/panopticapi] \
        [--venv .oracle-venv] [--json results/oracle.json] [--markdown results/oracle.md]

1. creates its own virtual environment (``--venv``, never the one you run this from) with the pins
   of ``requirements.txt`` (mmcv 1.7 without compiled ops, mmdet 2.28, mmseg 0.30) and this
   checkout of lda-bench; a second run reuses it while the pins are unchanged;
2. runs ``compare.py`` inside it (every comparison; the JSON report is rewritten after each step,
   so an interrupted run keeps what it finished);
3. writes the Markdown summary (``report.py``).

``--lda-aqu-repo`` (a git clone of github.com/duzw9311/LDA-AQU) adds the official FPN_LAU neck;
``--panopticapi`` (a git clone of github.com/cocodataset/panopticapi, which is not on PyPI and which
mmdet's PQ evaluation imports) adds the panoptic metric. Both may be bare clones. Exit code: 0 when
every comparison agrees, 1 when one differs, 2 for a set-up error.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUIREMENTS = HERE / "requirements.txt"
STAMP = "lda-bench-oracle.stamp"


def requirement_groups() -> list[list[str]]:
    """The blocks of requirements.txt (each starts at a ``# <n>.`` comment), installed in order."""
    groups: list[list[str]] = []
    for line in REQUIREMENTS.read_text().splitlines():
        stripped = line.strip()
        if stripped[:3].startswith("# ") and stripped[2:3].isdigit():
            groups.append([])
        elif stripped and not stripped.startswith("#"):
            if not groups:
                raise SystemExit(f"{REQUIREMENTS}: a requirement before the first '# 1.' block")
            groups[-1].append(stripped)
    return groups


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(venv: Path) -> Path:
    """Create or reuse the oracle environment; returns its Python."""
    python = venv_python(venv)
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + str(ROOT).encode()).hexdigest()
    stamp = venv / STAMP
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        print(f"oracle environment: {venv} (up to date)", flush=True)
        return python
    print(f"oracle environment: creating {venv} (a few minutes)", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    groups = requirement_groups()
    for group in groups[:-1]:
        subprocess.run([*pip, *group], check=True)
    # mmcv 1.x builds from source: without its compiled ops, and against the torch installed above.
    env = {**os.environ, "MMCV_WITH_OPS": "0"}
    subprocess.run([*pip, "--no-build-isolation", *groups[-1]], check=True, env=env)
    subprocess.run([*pip, "-e", str(ROOT)], check=True)
    stamp.write_text(digest)
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".oracle-venv", help="the oracle's own environment")
    parser.add_argument("--lda-aqu-repo", type=Path, help="git clone of duzw9311/LDA-AQU")
    parser.add_argument("--panopticapi", type=Path, help="git clone of cocodataset/panopticapi")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "oracle.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "results" / "oracle.md")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for option, path in (("--lda-aqu-repo", args.lda_aqu_repo), ("--panopticapi", args.panopticapi)):
        if path is not None and not path.exists():
            print(f"error: {option} {path} does not exist", file=sys.stderr)
            return 2
    if args.venv.resolve() == Path(sys.prefix).resolve():
        print("error: --venv is the environment running this script; the oracle needs its own", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        python = ensure_venv(args.venv)
    except subprocess.CalledProcessError as exc:
        print(f"error: setting up the oracle environment failed: {exc}", file=sys.stderr)
        return 2
    setup_seconds = time.perf_counter() - started
    command = [str(python), str(HERE / "compare.py"), "--json", str(args.json), "--threads", str(args.threads)]
    for option, path in (("--lda-aqu-repo", args.lda_aqu_repo), ("--panopticapi", args.panopticapi)):
        if path is not None:
            command += [option, str(path.resolve())]
    status = subprocess.run(command).returncode
    if args.json.exists():
        subprocess.run([str(python), str(HERE / "report.py"), str(args.json), str(args.markdown),
                        "--setup-seconds", f"{setup_seconds:.0f}",
                        "--total-seconds", f"{time.perf_counter() - started:.0f}"], check=True)
        print(f"wrote {args.json} and {args.markdown}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
