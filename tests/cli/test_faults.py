"""Faults: SIGTERM and SIGINT in the middle of a multi-case run keep what was measured; a full disk
while writing a report leaves the previous report intact and no partial file."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lda_bench.cli import app

PLUGIN = '''
import os, time
import torch

class Slow(torch.nn.Module):
    """An upsampler that announces its first call (a file) and then takes 50 ms per call."""

    def __init__(self, channels, scale=2, marker=""):
        super().__init__()
        self.scale, self.marker = scale, marker or os.environ.get("SLOW_PLUGIN_MARKER", "")

    def forward(self, x, guide=None):
        if self.marker and not os.path.exists(self.marker):
            open(self.marker, "w").close()
        time.sleep(0.05)
        return torch.nn.functional.interpolate(x, scale_factor=self.scale)
'''


def _suite(tmp_path: Path) -> Path:
    """nearest first (quick), then several cases of the slow plugin."""
    (tmp_path / "slow_plugin.py").write_text(PLUGIN)
    marker = tmp_path / "second-case-started"
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: faults\nupsamplers: [nearest, {name: 'slow_plugin:Slow', options: {marker: '" + str(marker) + "'}}]\n"
        "devices: [cpu]\nmetrics: [params, latency]\nrepeats: 3\nmin_time: 1.0\n"
        "inputs:\n  - {label: a, channels: 4, size: [4, 4]}\n  - {label: b, channels: 4, size: [5, 5]}\n"
        "  - {label: c, channels: 4, size: [6, 6]}\n")
    return suite


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_keeps_the_finished_cases(tmp_path, sig, code):
    suite = _suite(tmp_path)
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-m", "lda_bench", "run", str(suite), "--output", str(out)],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    marker = tmp_path / "second-case-started"
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1].decode()
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err.decode()
    report = json.loads(out.read_text())  # complete JSON
    assert report["interrupted"] is True and report["kind"] == "profile"
    assert [c["upsampler"] for c in report["cases"]][:1] == ["nearest"] and len(report["cases"]) < 6
    assert all(c["status"] == "ok" and c["latency_ms"]["n"] >= 3 for c in report["cases"])
    assert b"finished case(s) kept" in err and not list(tmp_path.glob(".report.json.*"))


def test_a_full_disk_keeps_the_previous_report(tmp_path, monkeypatch):
    out = tmp_path / "report.json"
    out.write_text('{"previous": true}')

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("lda_bench.core.reports.os.fsync", full_disk)
    result = CliRunner().invoke(app, ["profile", "-u", "nearest", "--suite", "smoke", "--repeats", "1", "--min-time",
                                      "0", "--output", str(out), "--force"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: cannot write {out}: No space left on device; the previous file is unchanged"]
    assert "nearest" in result.stdout  # the measurements are still shown
    assert out.read_text() == '{"previous": true}' and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_sigterm_mid_sweep_keeps_the_points(tmp_path):
    out = tmp_path / "sweep.json"
    (tmp_path / "slow_plugin.py").write_text(PLUGIN)
    marker = tmp_path / "second-case-started"
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               SLOW_PLUGIN_MARKER=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "lda_bench", "sweep", "-u", "nearest,slow_plugin:Slow",
                             "--sizes", "4x4,5x5,6x6", "--channels", "4", "--repeats", "3",
                             "--min-time", "1", "--output", str(out)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()
    report = json.loads(out.read_text())
    assert report["interrupted"] and [s["upsampler"] for s in report["series"]] == ["nearest", "slow_plugin:Slow"]
    assert len(report["series"][0]["points"]) == 3 and report["series"][1]["stop_reason"] == "interrupted"
