"""``lda-bench regress --against REV``: the A/B verdict, the CI outputs, and runs on a real git
repository (a copy of this project's upsamplers), including the clean-up of the worktree."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lda_bench.cli import app
from lda_bench.core.errors import UsageError
from lda_bench.core.stats import bootstrap_median_ci, wilcoxon_signed_rank
from lda_bench.regress.ab import judge_pair
from lda_bench.regress.gate import FASTER, NOT_COMPARABLE, SAME, SLOWER, TOO_NOISY, CaseVerdict, GateSettings
from lda_bench.regress.outputs import junit_xml, markdown_summary
from lda_bench.regress.paired import Timing
from lda_bench.regress.session import regress
from lda_bench.regress.worktree import GitError

REPO = Path(__file__).resolve().parents[2]
GATE = GateSettings()
FAST = Timing(rounds=10, min_time=0.0, max_time=20.0, warmup=1)


# ------------------------------------------------------------------------------------- statistics


def test_wilcoxon_matches_scipy():
    # scipy.stats.wilcoxon(d, method="approx", correction=True) gives p = 0.031566887114397
    assert wilcoxon_signed_rank([1, 2, 2, -1, 3, 3, 0, -2, 4, 1, 1, 5])[1] == pytest.approx(0.0315668871143970)
    assert wilcoxon_signed_rank([0.0, 0.0]) == (0.0, 1.0)


def test_bootstrap_interval_is_seeded_and_holds_the_median():
    values = [1.0 + 0.01 * i for i in range(21)]
    low, high = bootstrap_median_ci(values)
    assert low <= 1.10 <= high and (low, high) == bootstrap_median_ci(values)
    assert bootstrap_median_ci([2.0] * 5) == (2.0, 2.0)


# ---------------------------------------------------------------------------------------- verdicts


def pair(ratios, status="ok", base_ms=10.0, **sides):
    rng = random.Random(0)
    base = [base_ms * (1 + rng.uniform(-0.02, 0.02)) for _ in ratios]
    record = {"id": "x/1", "label": "L", "upsampler": "x", "backend": None, "status": status,
              "error": None if status == "ok" else "boom", "ratio": list(ratios),
              "base": {"ms": base, "params": 10, "macs": 100, "calls_per_sample": 1},
              "candidate": {"ms": [b * r for b, r in zip(base, ratios)], "params": 10, "macs": 100,
                            "calls_per_sample": 1}}
    for side, fields in sides.items():
        record[side].update(fields)
    return record


def noisy(centre, spread, n=20, seed=0):
    rng = random.Random(seed)
    return [centre * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def test_slower_faster_and_same():
    slow = judge_pair(pair(noisy(1.5, 0.05)), GATE)
    assert slow.verdict == SLOWER and slow.change == pytest.approx(1.5, rel=0.05) and slow.p_value < 1e-3
    assert slow.ci_low < slow.change < slow.ci_high and "95% CI" in slow.reason
    assert judge_pair(pair(noisy(0.6, 0.05)), GATE).verdict == FASTER
    same = judge_pair(pair(noisy(1.1, 0.05)), GATE)
    assert same.verdict == SAME and same.baseline_ms == pytest.approx(10.0, rel=0.05)


def test_too_noisy_and_not_comparable():
    wide = judge_pair(pair(noisy(1.0, 0.9)), GATE)
    assert wide.verdict == TOO_NOISY and "spread" in wide.reason
    few = judge_pair(pair([1.0, 1.6, 1.6]), GATE)  # beyond the threshold but three rounds prove nothing
    assert few.verdict == TOO_NOISY and "reaches the threshold x1.25" in few.reason
    # a median beyond the threshold is not enough: the interval must lie beyond it
    near = judge_pair(pair(noisy(1.3, 0.3, n=12)), GATE)
    assert near.change > 1.25 and near.ci_low < 1.25 and near.verdict == TOO_NOISY
    # a wide spread does not matter once the interval settles it
    settled = judge_pair(pair(noisy(1.0, 0.6, n=400, seed=3)), GATE)
    assert settled.current_noise > GATE.max_noise and settled.verdict == SAME
    failed = judge_pair(pair([], status="error"), GATE)
    assert failed.verdict == NOT_COMPARABLE and "boom" in failed.reason


def test_changed_counts_and_side_notes_are_noted():
    v = judge_pair(pair(noisy(1.0, 0.02), candidate={"macs": 120}, base={"note": "MACs not counted: x"}), GATE)
    assert "macs changed: 100 -> 120" in v.notes and "base: MACs not counted: x" in v.notes


# ------------------------------------------------------------------------------------------ outputs


def verdicts():
    return [CaseVerdict("a/1", "P3", "a", None, SAME, "x1.01", change=1.01, p_value=0.5, baseline_ms=2.0,
                        current_ms=2.02, ci_low=0.98, ci_high=1.04),
            CaseVerdict("b/1", "P3", "b", "cpp", SLOWER, "x1.60", change=1.6, p_value=1e-6, baseline_ms=2.0,
                        current_ms=3.2, ci_low=1.5, ci_high=1.7, notes=["macs changed: 1 -> 2"]),
            CaseVerdict("c/1", "P3", "c|d", None, TOO_NOISY, "spread")]


def test_markdown_summary_puts_regressions_first():
    text = markdown_summary(verdicts(), 1, "gate", "base", "candidate", ["a reason"])
    rows = [line for line in text.splitlines() if line.startswith("| P3")]
    assert [r.split(" | ")[1] for r in rows] == ["b", "c\\|d", "a"]  # a | in a cell is escaped
    assert "**regression detected** (1 slower, 0 faster, 3 cases)" in text
    assert "| x1.60 | 1.50-1.70 | 1.0e-06 | **slower** |" in text and "- a reason" in text
    assert "- note: b/1: macs changed: 1 -> 2" in text


def test_junit_parses_with_one_case_per_benchmark_case():
    root = ET.fromstring(junit_xml(verdicts(), "ci", {"a/1": 1.5}))
    assert root.tag == "testsuite" and root.get("tests") == "3" and root.get("failures") == "1"
    assert root.get("skipped") == "1"
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"a/1", "b/1", "c/1"} and cases["a/1"].get("time") == "1.500"
    assert cases["b/1"].find("failure") is not None and "x1.60" in cases["b/1"].find("failure").get("message")
    assert cases["c/1"].find("skipped") is not None and cases["a/1"].find("failure") is None


# --------------------------------------------------------------------------- runs on a git repository


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    """A git repository holding a copy of this project's upsamplers (the tree the gate measures)."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(REPO / "upsamplers", root / "upsamplers", ignore=shutil.ignore_patterns("__pycache__"))
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    return root


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("name: gate\nupsamplers: [bilinear, nearest]\ndevices: [cpu]\n"
                    "inputs:\n  - {label: small, channels: 8, size: [6, 8]}\n")
    return path


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """Where the gate's temporary folders go, to check that none is left behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr("tempfile.tempdir", None)
    return folder


def worktrees(repo):
    out = subprocess.run(["git", "-C", str(repo), "worktree", "list", "--porcelain"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.startswith("worktree ")]


def slow_down_bilinear(root):
    """An uncommitted change to the candidate tree: bilinear sleeps 20 ms per call."""
    path = root / "upsamplers" / "interpolation.py"
    path.write_text(path.read_text() + "\n\nimport time as _t\n_forward = Bilinear.forward\n\n\n"
                    "def _slow(self, *a, **k):\n    _t.sleep(0.02)\n    return _forward(self, *a, **k)\n\n\n"
                    "Bilinear.forward = _slow\n")


def test_against_head_on_unchanged_code(repo, suite, scratch, tmp_path):
    result = regress(against="HEAD", suite=str(suite), repository=repo, timing=FAST, junit=tmp_path / "j.xml",
                     summary=tmp_path / "s.md", output=tmp_path / "r.json")
    report = result.report
    assert report["mode"] == "against" and report["against"]["revision"] == "HEAD"
    processes = report["against"]["processes"]
    assert Path(processes["candidate"]["upsamplers"]) == (repo / "upsamplers").resolve()
    assert Path(processes["base"]["upsamplers"]).name == "upsamplers"
    assert not Path(processes["base"]["upsamplers"]).is_relative_to(repo)
    assert processes["base"]["pid"] != processes["candidate"]["pid"] != os.getpid()
    assert [c["status"] for c in report["cases"]] == ["ok", "ok"]
    for case in report["cases"]:
        assert len(case["base"]["ms"]) == len(case["candidate"]["ms"]) == len(case["ratio"]) >= 10
        assert case["ratio"][0] == pytest.approx(case["candidate"]["ms"][0] / case["base"]["ms"][0])
    assert all(v.verdict != SLOWER for v in result.verdicts) and result.exit_code in (0, 2)
    assert not report["against"]["candidate"]["dirty"] and "at " in result.notes[0]
    assert ET.parse(tmp_path / "j.xml").getroot().get("tests") == "2"
    assert (tmp_path / "s.md").read_text().startswith("### lda-bench regress · gate · against HEAD")
    assert worktrees(repo) == [f"worktree {repo}"] and list(scratch.iterdir()) == []


def test_a_slowdown_in_the_working_tree_is_caught(repo, suite, scratch):
    slow_down_bilinear(repo)
    result = regress(against="HEAD", suite=str(suite), repository=repo, timing=FAST)
    by_name = {v.upsampler: v for v in result.verdicts}
    assert by_name["bilinear"].verdict == SLOWER and by_name["bilinear"].change > 10
    assert by_name["nearest"].verdict != SLOWER and result.exit_code == 1
    assert result.report["against"]["candidate"]["dirty"] and "uncommitted changes" in result.notes[0]
    assert worktrees(repo) == [f"worktree {repo}"] and list(scratch.iterdir()) == []


def test_a_broken_base_revision_fails_and_leaves_nothing(repo, suite, scratch):
    (repo / "upsamplers" / "__init__.py").write_text("raise ImportError('broken on purpose')\n")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "broken")
    git(repo, "checkout", "-q", "HEAD~1", "--", "upsamplers")  # the candidate works again
    with pytest.raises(Exception, match="broken on purpose"):
        regress(against="HEAD", suite=str(suite), repository=repo, timing=FAST)
    assert worktrees(repo) == [f"worktree {repo}"] and list(scratch.iterdir()) == []


def test_usage_errors(repo, suite, tmp_path):
    with pytest.raises(GitError, match="no such revision"):
        regress(against="no-such-branch", suite=str(suite), repository=repo, timing=FAST)
    with pytest.raises(GitError, match="not inside a git repository"):
        regress(against="HEAD", suite=str(suite), repository=tmp_path / "elsewhere", timing=FAST)
    with pytest.raises(UsageError, match="not both"):
        regress(tmp_path / "b.json", against="HEAD", suite=str(suite), repository=repo)
    with pytest.raises(UsageError, match="not both"):
        regress(suite=str(suite))
    (tmp_path / "exists.md").write_text("")
    with pytest.raises(UsageError, match="exists"):
        regress(against="HEAD", suite=str(suite), repository=repo, summary=tmp_path / "exists.md")


def test_cli_exit_codes(repo, suite, monkeypatch):
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(app, ["regress", "--against", "nope", "--suite", str(suite)])
    assert result.exit_code == 3 and "no such revision" in result.output
    result = CliRunner().invoke(app, ["regress", "--suite", str(suite)])
    assert result.exit_code == 3 and "--baseline FILE" in result.output


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interruption_removes_the_worktree(repo, suite, scratch, how):
    env = dict(os.environ, TMPDIR=str(scratch))
    proc = subprocess.Popen([sys.executable, "-m", "lda_bench", "regress", "--against", "HEAD", "--suite", str(suite),
                             "--rounds", "100000", "--min-time", "600"], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(p.glob("candidate.log") for p in scratch.glob("*")):
        time.sleep(0.2)  # wait until both sides' processes run (their logs are in the scratch folder)
    assert len(worktrees(repo)) == 2, proc.stderr.read() if proc.poll() is not None else "no worktree"
    time.sleep(5)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    else:
        proc.send_signal(signal.SIGTERM)  # what timeout(1) and CI runners do: the gate's process only
    _, err = proc.communicate(timeout=120)
    assert worktrees(repo) == [f"worktree {repo}"] and list(scratch.iterdir()) == []
    assert proc.returncode == (130 if how == "ctrl-c" else 143), err
