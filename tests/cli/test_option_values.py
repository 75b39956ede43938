"""``-o KEY=VALUE`` reaches the library with the same typed value from ``profile``, ``run`` and ``eval``."""

import pytest
from typer.testing import CliRunner

import lda_bench.cli.profile as profile_cli
import lda_bench.evaluation.runner as eval_runner
from lda_bench.cli import app
from lda_bench.core.errors import UsageError

runner = CliRunner()

VALUES = [
    ("true", True), ("false", False), ("null", None), ("7", 7), ("-3", -3), ("0.25", 0.25), ("1e-3", 0.001),
    ("[1, 2]", [1, 2]), ("pl", "pl"), ("'5'", "5"),
]


def _captured_by_profile(monkeypatch, *args: str) -> dict:
    seen = {}

    def fake_profile(upsampler, **kwargs):
        seen.update(kwargs["options"] or {})
        raise UsageError("captured")

    monkeypatch.setattr(profile_cli, "profile", fake_profile)
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2 and "captured" in result.output, result.output
    return seen


def _captured_by_eval(monkeypatch, tmp_path, *args: str) -> dict:
    seen = {}

    def fake_evaluate_checkpoint(ctx, request, device):
        seen.update(request.upsampler_options or {})
        return None  # what a non-main torchrun process returns: nothing to print

    monkeypatch.setattr(eval_runner, "_evaluate_checkpoint", fake_evaluate_checkpoint)
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"")
    result = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--data", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    return seen


@pytest.mark.parametrize("text,value", VALUES, ids=[t for t, _ in VALUES])
def test_profile_run_and_eval_parse_option_values_alike(monkeypatch, tmp_path, text, value):
    got_profile = _captured_by_profile(monkeypatch, "profile", "-u", "lda_aqu", "-o", f"x={text}")
    got_run = _captured_by_profile(monkeypatch, "run", "smoke", "-o", f"x={text}")
    got_eval = _captured_by_eval(monkeypatch, tmp_path, "--upsampler-option", f"x={text}")
    for got in (got_profile, got_run, got_eval):
        assert got == {"x": value} and type(got["x"]) is type(value)


def test_a_malformed_option_is_a_usage_error_in_every_command(tmp_path):
    for args in (["profile", "-o", "k_u"], ["run", "smoke", "-o", "=3"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "expects KEY=VALUE" in result.output
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"")
    result = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--data", str(tmp_path), "--upsampler-option", "k_u"])
    assert result.exit_code == 2 and "--upsampler-option expects KEY=VALUE" in result.output
