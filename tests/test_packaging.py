"""The wheel built from the checkout holds every module, the C++ source and the built-in suites,
and a non-editable install of it runs ``lda-bench profile --suite smoke`` on its own files."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], check=True, capture_output=True).stdout
    return [name for name in out.decode().split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", minversion="70.1")  # builds wheels itself (bdist_wheel built in)
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the tracked files (a build writes build/ and *.egg-info next to them), with
    # this environment's setuptools (--no-build-isolation) instead of a downloaded one.
    source = tmp_path_factory.mktemp("source")
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=600, cwd=out)
    (path,) = out.glob("lda_bench-*.whl")
    return path


def test_the_wheel_holds_every_module_the_cpp_source_and_the_suites(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = [name for name in tracked_files() if name.startswith(("lda_bench/", "upsamplers/"))
               and name.endswith(".py")]
    assert sources and [s for s in sources if s not in names] == []
    assert "upsamplers/ops/sample_attention/csrc/sample_attention.cpp" in names
    suites = sorted(p.name for p in (REPO / "suites").glob("*.yaml"))
    assert suites and all(f"lda_bench/suites/{name}" in names for name in suites)
    assert not any(name.startswith(("tests/", "suites/", "benchmarks/")) for name in names)


def test_an_installed_wheel_runs_the_smoke_suite_from_its_own_files(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import lda_bench, upsamplers; print(lda_bench.__file__); "
                            "print(upsamplers.__file__)"], env=env, cwd=tmp_path, capture_output=True, text=True,
                           check=True)
    assert all(Path(line).is_relative_to(site) for line in where.stdout.split())
    run = subprocess.run([sys.executable, "-m", "lda_bench", "profile", "--upsampler", "lda_aqu", "--suite", "smoke",
                          "--repeats", "1", "--min-time", "0", "--json", "--no-save"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["suite"]["source"] == str(site / "lda_bench" / "suites" / "smoke.yaml")
    assert [c["status"] for c in report["cases"]] == ["ok", "ok"]
