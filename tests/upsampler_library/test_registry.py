import sys
import types
from importlib import metadata

import pytest
import torch
from torch import nn

import upsamplers
from upsamplers import registry

BUILTINS = {"nearest", "bilinear", "deconv", "pixel_shuffle", "carafe", "dysample", "lda_aqu", "lsa"}


def test_available_lists_builtins_with_specs():
    specs = {s.name: s for s in upsamplers.available()}
    assert BUILTINS <= set(specs)
    lda = specs["lda_aqu"]
    assert lda.needs_guide is False
    assert lda.defaults["reduction_factor"] == 4 and lda.defaults["range_factor"] == 11
    assert lda.defaults["k_u"] == 3 and lda.defaults["n_groups"] == 2 and lda.defaults["num_heads"] == 1
    assert "reference" in lda.backends
    assert "LDA-AQU" in lda.reference
    assert all(s.reference for s in specs.values() if s.name in BUILTINS)


def test_build_passes_scale_and_options():
    m = upsamplers.build("dysample", channels=64, scale=3, groups=8, dyscope=False)
    assert m.scale == 3 and m.groups == 8 and m.scope is None
    assert m(torch.randn(1, 64, 2, 3)).shape == (1, 64, 6, 9)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown upsampler 'lda_aq'.*did you mean 'lda_aqu'"):
        upsamplers.build("lda_aq", channels=16)


def test_unknown_option_names_valid_ones():
    with pytest.raises(ValueError) as err:
        upsamplers.build("lda_aqu", channels=16, range=3)
    msg = str(err.value)
    assert "'range'" in msg and "range_factor" in msg and "reduction_factor" in msg and "k_u" in msg


@pytest.mark.parametrize("channels", [0, -3, 2.5, "16", True])
def test_bad_channels(channels):
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        upsamplers.build("nearest", channels=channels)


@pytest.mark.parametrize("scale", [0, 1, 1.5, "2"])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="scale must be an integer >= 2"):
        upsamplers.build("nearest", channels=4, scale=scale)


class _Doubler(nn.Module):
    """Test upsampler that repeats pixels."""

    def __init__(self, channels, scale=2, gain=1.0):
        super().__init__()
        self.scale, self.gain = scale, gain

    def forward(self, x, guide=None):
        return torch.nn.functional.interpolate(x, scale_factor=self.scale) * self.gain


def test_register_decorator_and_duplicates():
    try:
        upsamplers.register("test_doubler", reference="tests")(_Doubler)
        spec = upsamplers.get_spec("test_doubler")
        assert spec.defaults == {"gain": 1.0} and spec.reference == "tests"
        m = upsamplers.build("test_doubler", channels=3, gain=2.0)
        assert torch.equal(m(torch.ones(1, 3, 1, 1)), torch.full((1, 3, 2, 2), 2.0))
        with pytest.raises(ValueError, match="already registered"):
            upsamplers.register("test_doubler")(_Doubler)
    finally:
        upsamplers.unregister("test_doubler")
    assert "test_doubler" not in upsamplers.names()


def test_import_string_factory(monkeypatch):
    mod = types.ModuleType("fake_plugin_mod")
    mod.make = lambda channels, scale=2, gain=1.0: _Doubler(channels, scale, gain)
    monkeypatch.setitem(sys.modules, "fake_plugin_mod", mod)
    m = upsamplers.build("fake_plugin_mod:make", channels=2, gain=3.0)
    assert m.gain == 3.0
    with pytest.raises(ValueError, match="unknown option 'gian'"):
        upsamplers.build("fake_plugin_mod:make", channels=2, gian=3.0)
    with pytest.raises(ValueError, match="has no attribute"):
        upsamplers.build("fake_plugin_mod:missing", channels=2)
    with pytest.raises(ValueError, match="cannot import module"):
        upsamplers.build("no_such_module_xyz:make", channels=2)


def test_entry_point_plugins(monkeypatch):
    mod = types.ModuleType("fake_ep_mod")
    mod.Doubler = _Doubler
    mod.spec = registry.UpsamplerSpec(name="ep_spec", factory=_Doubler, needs_guide=True, reference="ep")
    monkeypatch.setitem(sys.modules, "fake_ep_mod", mod)
    eps = [
        metadata.EntryPoint(name="ep_doubler", value="fake_ep_mod:Doubler", group=registry.ENTRY_POINT_GROUP),
        metadata.EntryPoint(name="ep_spec", value="fake_ep_mod:spec", group=registry.ENTRY_POINT_GROUP),
        metadata.EntryPoint(name="ep_broken", value="fake_ep_mod:Nope", group=registry.ENTRY_POINT_GROUP),
    ]

    def fake_entry_points(group=None):
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(registry.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    try:
        with pytest.warns(UserWarning, match="ep_broken"):
            names = upsamplers.names()
        assert "ep_doubler" in names and "ep_spec" in names and "ep_broken" not in names
        assert upsamplers.get_spec("ep_spec").needs_guide
        assert upsamplers.get_spec("ep_doubler").source.startswith("entry-point")
        assert upsamplers.build("ep_doubler", channels=1)(torch.ones(1, 1, 2, 2)).shape == (1, 1, 4, 4)
    finally:
        upsamplers.unregister("ep_doubler")
        upsamplers.unregister("ep_spec")
