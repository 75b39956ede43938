"""``lda-bench plot``: figures from a tiny sweep and from profile reports, off-screen (Agg)."""

import sys

import pytest
from typer.testing import CliRunner

from lda_bench.cli import app
from lda_bench.core.errors import UsageError
from lda_bench.plotting import INSTALL_HINT, plot_reports
from lda_bench.plotting.series import bootstrap_ratio_ci, load, ratios
from lda_bench.profiling.sweep import sweep

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweeps")
    paths = []
    for name in ("a", "b"):
        path = folder / f"{name}.json"
        sweep("nearest,bilinear", sizes="4x6,8x12,16x24", channels=8, repeats=3, min_time=0.0, backward=True,
              output=path)
        paths.append(path)
    return paths


def test_series_are_read_from_a_sweep(sweeps):
    data = load(sweeps[0])
    assert [s.label for s in data.series] == ["nearest", "bilinear"] and "cpu" in data.title
    assert [p.pixels for p in data.series[1].points] == [96, 384, 1536]
    k, stderr = data.series[1].exponent("memory_bytes")
    assert 0.5 < k < 1.5 and stderr is not None


def test_ratio_interval_holds_the_ratio():
    assert bootstrap_ratio_ci([1.0] * 5, [2.0] * 5) == (2.0, 2.0)
    low, high = bootstrap_ratio_ci([1.0, 1.1, 0.9, 1.0], [1.5, 1.6, 1.4, 1.5])
    assert low < 1.5 < high


def test_figures_of_one_and_of_two_sweeps(sweeps, tmp_path):
    written = plot_reports(sweeps[:1], tmp_path / "one")
    names = sorted(p.name for p in written)
    assert names == sorted(f"{n}.{e}" for n in ("time_vs_pixels", "memory_vs_pixels", "roofline") for e in ("png", "svg"))
    for path in written:
        data = path.read_bytes()
        assert len(data) > 1000 and (data.startswith(b"\x89PNG") or b"<svg" in data[:500])
    two = plot_reports(sweeps, tmp_path / "two")
    assert {p.name for p in two} >= {"ratio.png", "ratio.svg"}
    matched = ratios(load(sweeps[0]), load(sweeps[1]))
    assert len(matched) == 6 and all(r.low <= r.ratio <= r.high or r.low == r.high for r in matched)
    with pytest.raises(UsageError, match="exists"):
        plot_reports(sweeps[:1], tmp_path / "one")
    assert len(plot_reports(sweeps[:1], tmp_path / "one", force=True)) == 6


def test_a_profile_report_plots_too(tmp_path):
    out = tmp_path / "p.json"
    result = CliRunner().invoke(app, ["profile", "-u", "bilinear,nearest", "--suite", "smoke", "--repeats", "2",
                                      "--min-time", "0", "--output", str(out)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["plot", str(out), "-o", str(tmp_path / "fig")])
    assert result.exit_code == 0 and "roofline.svg" in result.output
    assert (tmp_path / "fig" / "time_vs_pixels.png").stat().st_size > 1000


def test_bad_requests(sweeps, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    for args, message in (([str(sweeps[0]), "-o", str(tmp_path / "file")], "is a file"),
                          ([str(tmp_path / "missing.json"), "-o", str(tmp_path)], "does not exist")):
        result = CliRunner().invoke(app, ["plot", *args])
        assert result.exit_code == 2 and message in result.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the extra were not installed
    result = CliRunner().invoke(app, ["plot", str(sweeps[0]), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and INSTALL_HINT in result.output
    assert not (tmp_path / "x").exists()


def test_help_names_the_extra_to_install():
    result = CliRunner().invoke(app, ["plot", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "pip install 'lda-bench[plot]'" in result.output
