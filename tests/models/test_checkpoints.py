"""Checkpoint loading: formats, safe unpickling, model/upsampler inference, strict key checks."""

import sys
import types

import pytest
import torch
from eval_helpers import mmdet_checkpoint

import upsamplers
from lda_bench.models import build_model
from lda_bench.models.checkpoints import (
    CheckpointError,
    UntrustedCheckpointError,
    build_from_checkpoint,
    check_keys,
    load_checkpoint,
    load_weights,
    resolve_model_config,
    save_checkpoint,
)
from lda_bench.models.introspect import ModelInferenceError, parse_config_text

LAU_CONFIG = """
model = dict(
    type='FasterRCNN',
    neck=dict(
        type='FPN_LAU',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        num_outs=5,
        upsample_cfg=dict(type='lda_aqu', reduction_factor=4, k_e=3, k_u=3, n_groups=2, range_factor=7)))
test_pipeline = [dict(type='MultiScaleFlipAug', img_scale=(1333, 800), transforms=[dict(type='Pad', size_divisor=64)])]
"""


@pytest.fixture(scope="module")
def lau_model():
    return build_model("faster_rcnn_r50_fpn", "lda_aqu", num_classes=5)


def test_mmdet2_lda_aqu_checkpoint_loads_strictly(lau_model, tmp_path):
    extra = {f"neck.upsample_modules.{i}.base_offset": torch.zeros(1, 18, 1, 1) for i in range(4)}
    path = mmdet_checkpoint(lau_model, tmp_path / "lau.pth", meta={"config": LAU_CONFIG, "CLASSES": tuple("abcde")},
                            extra=extra)
    ckpt = load_checkpoint(path)
    assert ckpt.format == "mmdet2" and ckpt.weights_only and ckpt.class_names == list("abcde")
    config = resolve_model_config(ckpt)
    assert (config.model, config.upsampler, config.num_classes, config.neck, config.size_divisor) == (
        "faster_rcnn_r50_fpn", "lda_aqu", 5, "fpn_carafe", 64)
    assert config.upsampler_options == {"reduction_factor": 4, "rpb": True, "num_heads": 1, "k_u": 3,
                                        "n_groups": 2, "k_e": 3, "range_factor": 7}  # the last from the config
    assert config.sources["upsampler"] == "checkpoint keys" and config.sources["size_divisor"] == "checkpoint config"
    model, keys = build_from_checkpoint(ckpt, config)
    assert sorted(keys.ignored) == sorted(extra)  # accepted and reported, not silently dropped
    assert model.neck.upsample_modules[0].range_factor == 7.0
    for k, v in lau_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


VARIANTS = [
    ("nearest", {}),
    ("deconv", {"kernel_size": 3}),
    ("pixel_shuffle", {"upsample_kernel": 3}),
    ("carafe", {"up_kernel": 5, "up_group": 1, "encoder_kernel": 3, "compressed_channels": 64}),
    ("carafe", {"up_kernel": 3, "up_group": 1, "encoder_kernel": 1, "compressed_channels": 32}),
    ("dysample", {"style": "lp", "groups": 4, "dyscope": True, "scope_bias": True}),
    ("dysample", {"style": "pl", "groups": 4, "dyscope": False, "scope_bias": False}),
    ("lda_aqu", {"reduction_factor": 8, "k_e": 5, "k_u": 5, "n_groups": 4, "num_heads": 1, "rpb": True}),
    ("lsa", {"reduction_factor": 4, "k_u": 3, "num_heads": 1, "rpb": True}),  # its n_groups leaves no trace
]


@pytest.mark.parametrize("name,options", VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_upsampler_and_options_inferred_from_keys(tmp_path, name, options):
    model = build_model("mask_rcnn_r50_fpn", name, options, num_classes=2)
    ckpt = load_checkpoint(mmdet_checkpoint(model, tmp_path / "m.pth"))
    config = resolve_model_config(ckpt)
    assert config.model == "mask_rcnn_r50_fpn" and config.upsampler == name and config.num_classes == 2
    assert {k: v for k, v in config.upsampler_options.items() if k in options} == options
    loaded, keys = build_from_checkpoint(ckpt, config)
    assert keys.ok and not keys.ignored


def test_numpy_scalars_in_meta_load_safely(tmp_path, lau_model):
    import numpy as np

    meta = {"hook_msgs": {"best_score": np.float64(0.392)}, "iter": np.int64(7), "ok": np.bool_(True)}
    ckpt = load_checkpoint(mmdet_checkpoint(lau_model, tmp_path / "np.pth", meta=meta))
    assert ckpt.weights_only and ckpt.meta["hook_msgs"]["best_score"] == 0.392


def test_numpy_scalars_load_where_numpy_core_is_only_an_importable_alias(tmp_path, lau_model, monkeypatch):
    """numpy 1.26 (what mmcv 1.x environments run) has ``numpy._core.multiarray`` as an importable
    alias but no ``numpy._core`` attribute with it; the oracle harness found the loader failing there
    ("module 'numpy._core' has no attribute 'multiarray'")."""
    import types

    import numpy as np

    path = mmdet_checkpoint(lau_model, tmp_path / "np.pth", meta={"best": np.float64(0.5), "iter": np.int64(3)})
    monkeypatch.setattr(np, "_core", types.ModuleType("numpy._core"), raising=False)
    ckpt = load_checkpoint(path)
    assert ckpt.weights_only and ckpt.meta["best"] == 0.5 and ckpt.meta["iter"] == 3


def test_plain_fpn_and_bilinear_from_config(tmp_path):
    model = build_model("faster_rcnn_r50_fpn", "bilinear", neck="fpn", num_classes=3)
    meta = {"config": "neck=dict(type='FPN_CARAFE', upsample_cfg=dict(type='bilinear', scale_factor=2))"}
    config = resolve_model_config(load_checkpoint(mmdet_checkpoint(model, tmp_path / "b.pth", meta=meta)))
    assert (config.upsampler, config.neck, config.size_divisor) == ("bilinear", "fpn", 32)
    assert parse_config_text("upsample_cfg=dict(type='deconv', upsample_kernel=3)") == {
        "upsampler": "deconv", "upsampler_options": {"kernel_size": 3}}


def test_key_problems_are_reported_not_dropped(lau_model):
    state = dict(lau_model.state_dict())
    state["roi_head.bbox_head.extra_fc.weight"] = torch.zeros(2)
    del state["rpn_head.rpn_reg.bias"]
    state["rpn_head.rpn_cls.weight"] = torch.zeros(6, 256, 1, 1)
    report = check_keys(lau_model, state)
    assert report.unexpected == ["roi_head.bbox_head.extra_fc.weight"]
    assert report.missing == ["rpn_head.rpn_reg.bias"]
    assert report.mismatched == ["rpn_head.rpn_cls.weight: (6, 256, 1, 1) vs (3, 256, 1, 1)"]
    with pytest.raises(CheckpointError, match="missing from the checkpoint: rpn_head.rpn_reg.bias") as err:
        load_weights(lau_model, state)
    assert "extra_fc" in str(err.value) and "(6, 256, 1, 1) vs (3, 256, 1, 1)" in str(err.value)


def test_wrong_upsampler_option_gives_a_shape_error(tmp_path, lau_model):
    ckpt = load_checkpoint(mmdet_checkpoint(lau_model, tmp_path / "x.pth"))
    config = resolve_model_config(ckpt, upsampler_options={"reduction_factor": 8})
    with pytest.raises(CheckpointError, match="proj_q.weight: \\(64, 256, 1, 1\\) vs \\(32, 256, 1, 1\\)"):
        build_from_checkpoint(ckpt, config)


def test_bare_state_dict_with_module_prefix(tmp_path, lau_model):
    path = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in lau_model.state_dict().items()}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.format == "state_dict" and "module." in ckpt.notes[0]
    assert resolve_model_config(ckpt).upsampler == "lda_aqu"


def test_own_format_round_trip(tmp_path):
    model = build_model("faster_rcnn_r50_fpn", "dysample", {"style": "pl", "dyscope": True}, num_classes=4)
    ckpt = load_checkpoint(save_checkpoint(model, tmp_path / "own.pth", "faster_rcnn_r50_fpn", size_divisor=32))
    config = resolve_model_config(ckpt)
    assert ckpt.format == "lda_bench" and config.sources["upsampler"] == "lda_bench metadata"
    assert config.upsampler_options == {"style": "pl", "dyscope": True} and config.size_divisor == 32


def test_unknown_upsampler_keys_need_the_option(tmp_path, lau_model):
    state = {k: v for k, v in lau_model.state_dict().items() if not k.startswith("neck.upsample_modules")}
    state.update({f"neck.upsample_modules.{i}.mystery.weight": torch.zeros(3) for i in range(4)})
    path = tmp_path / "mystery.pth"
    torch.save({"meta": {}, "state_dict": state}, path)
    with pytest.raises(ModelInferenceError, match="pass --upsampler NAME"):
        resolve_model_config(load_checkpoint(path))
    config = resolve_model_config(load_checkpoint(path), upsampler="nearest")
    assert config.upsampler == "nearest" and config.sources["upsampler"] == "option"


def test_model_needs_the_option_without_head_keys(tmp_path):
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}}, path)
    with pytest.raises(ModelInferenceError, match="pass --model"):
        resolve_model_config(load_checkpoint(path))


def _fake_mmengine_checkpoint(path, state):
    """A file like mmdet 3.x's: it pickles an mmengine object (a class we cannot import later)."""
    module = types.ModuleType("fake_mmengine_logging")
    hub = type("MessageHub", (), {"__module__": "fake_mmengine_logging"})
    module.MessageHub = hub
    sys.modules["fake_mmengine_logging"] = module
    try:
        obj = hub()
        obj.log = {"loss": 0.5}
        torch.save({"meta": {"dataset_meta": {"classes": ("a", "b")}}, "state_dict": state, "message_hub": obj}, path)
    finally:
        del sys.modules["fake_mmengine_logging"]


def test_untrusted_pickle_is_refused_then_loaded_on_opt_in(tmp_path, lau_model):
    path = tmp_path / "mmdet3.pth"
    _fake_mmengine_checkpoint(path, lau_model.state_dict())
    with pytest.raises(UntrustedCheckpointError) as err:
        load_checkpoint(path)
    assert "--trust-checkpoint" in str(err.value) and "fake_mmengine_logging.MessageHub" in str(err.value)
    ckpt = load_checkpoint(path, trust=True)
    assert ckpt.format == "mmdet3" and not ckpt.weights_only and ckpt.class_names == ["a", "b"]
    assert resolve_model_config(ckpt).upsampler == "lda_aqu"


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    other = tmp_path / "list.pth"
    torch.save([1, 2, 3], other)
    with pytest.raises(CheckpointError, match="expected an mmdet checkpoint"):
        load_checkpoint(other)


def test_all_registered_single_input_upsamplers_are_recognised(tmp_path):
    # Whatever is registered (including peers added later), a checkpoint made with its defaults
    # must resolve to a model whose keys match.
    for spec in upsamplers.available():
        if spec.needs_guide:
            continue
        model = build_model("faster_rcnn_r50_fpn", spec.name, num_classes=1)
        config = resolve_model_config(load_checkpoint(mmdet_checkpoint(model, tmp_path / f"{spec.name}.pth")))
        rebuilt = build_model(config.model, config.upsampler, config.upsampler_options, config.num_classes)
        assert check_keys(rebuilt, model.state_dict()).ok, spec.name


class _OffsetUp(torch.nn.Module):
    """A made-up upsampler that also names its conv ``offset`` (but is not DySample)."""

    def __init__(self, channels, scale=2):
        super().__init__()
        self.offset = torch.nn.Conv2d(channels, 3, 3)

    def forward(self, x, guide=None):
        return torch.nn.functional.interpolate(x, scale_factor=2)


def test_family_guess_gives_way_to_an_exact_registered_match(tmp_path):
    upsamplers.register("test_offset_up")(_OffsetUp)
    try:
        model = build_model("faster_rcnn_r50_fpn", "test_offset_up", num_classes=1)
        config = resolve_model_config(load_checkpoint(mmdet_checkpoint(model, tmp_path / "o.pth")))
        assert config.upsampler == "test_offset_up"
    finally:
        upsamplers.unregister("test_offset_up")


# ---- Panoptic FPN and SegFormer -------------------------------------------------------------------


def test_panoptic_fpn_checkpoint_is_recognised_and_loads_strictly(tmp_path):
    # mmdet's panoptic_fpn_r50_fpn_1x_coco layout: plain FPN, nearest, semantic_head.* keys
    model = build_model("panoptic_fpn_r50", "nearest", num_classes=3, num_stuff_classes=2)
    ckpt = load_checkpoint(mmdet_checkpoint(model, tmp_path / "pan.pth"))
    config = resolve_model_config(ckpt)
    assert (config.model, config.upsampler, config.neck, config.size_divisor) == ("panoptic_fpn_r50", "nearest", "fpn", 32)
    assert (config.num_classes, config.num_stuff_classes) == (3, 2)
    assert config.sources["num_stuff_classes"] == "checkpoint keys"
    rebuilt, keys = build_from_checkpoint(ckpt, config)
    assert keys.ok and not keys.ignored
    assert torch.equal(rebuilt.state_dict()["semantic_head.conv_logits.weight"],
                       model.state_dict()["semantic_head.conv_logits.weight"])


def test_panoptic_fpn_with_the_fpn_carafe_neck(tmp_path):
    model = build_model("panoptic_fpn_r50", "carafe", neck="fpn_carafe", num_classes=1, num_stuff_classes=1)
    config = resolve_model_config(load_checkpoint(mmdet_checkpoint(model, tmp_path / "c.pth")))
    assert (config.upsampler, config.neck, config.size_divisor) == ("carafe", "fpn_carafe", 64)


def test_segformer_mmseg_checkpoint_is_recognised_and_loads_strictly(tmp_path):
    stock = build_model("segformer_b1", num_classes=7)
    path = tmp_path / "segformer.pth"
    torch.save({"meta": {"CLASSES": tuple("abcdefg")}, "state_dict": stock.state_dict()}, path)
    ckpt = load_checkpoint(path)
    config = resolve_model_config(ckpt)
    assert (config.model, config.upsampler, config.num_classes, config.neck, config.size_divisor) == (
        "segformer_b1", "bilinear", 7, None, None)
    rebuilt, keys = build_from_checkpoint(ckpt, config)
    assert keys.ok
    with pytest.raises(ModelInferenceError, match="holds a segformer_b1 state dict"):
        resolve_model_config(ckpt, model="mask_rcnn_r50_fpn")


def test_segformer_decode_head_upsampler_is_read_from_its_keys(tmp_path):
    model = build_model("segformer_b1", "dysample", {"style": "pl", "dyscope": True})
    path = tmp_path / "dy.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    config = resolve_model_config(load_checkpoint(path))
    assert config.upsampler == "dysample" and config.upsampler_options["style"] == "pl"
    assert config.upsampler_options["dyscope"] and config.sources["upsampler"] == "checkpoint keys"
    assert build_from_checkpoint(load_checkpoint(path), config)[1].ok


@pytest.mark.parametrize("name,kwargs", [("panoptic_fpn_r50", {"num_classes": 2, "num_stuff_classes": 3}),
                                         ("segformer_b1", {"num_classes": 4})])
def test_own_format_round_trip_of_the_segmentation_models(tmp_path, name, kwargs):
    model = build_model(name, "lda_aqu", {"range_factor": 7}, **kwargs)
    ckpt = load_checkpoint(save_checkpoint(model, tmp_path / "own.pth", name))
    config = resolve_model_config(ckpt)
    assert ckpt.format == "lda_bench" and config.sources["upsampler_options"] == "lda_bench metadata"
    assert config.upsampler_options == {"range_factor": 7} and config.num_classes == kwargs["num_classes"]
    assert config.num_stuff_classes == kwargs.get("num_stuff_classes")
    assert build_from_checkpoint(ckpt, config)[1].ok


def test_nvlabs_segformer_layout_is_named_in_the_error(tmp_path):
    path = tmp_path / "nvlabs.pth"
    torch.save({"state_dict": {"backbone.patch_embed1.proj.weight": torch.zeros(64, 3, 7, 7),
                               "decode_head.linear_c1.proj.weight": torch.zeros(256, 64),
                               "decode_head.linear_pred.weight": torch.zeros(150, 256, 1, 1)}}, path)
    with pytest.raises(ModelInferenceError, match="NVlabs SegFormer checkpoint"):
        resolve_model_config(load_checkpoint(path))


def test_mask_rcnn_with_a_carafe_mask_head_loads_from_mmdet_keys(tmp_path):
    """mmdet's configs/carafe/mask_rcnn_r50_fpn_carafe_1x_coco.py puts CARAFE in the mask head too
    (found by the oracle harness: its checkpoints did not fit our deconv mask head)."""
    model = build_model("mask_rcnn_r50_fpn", "carafe", num_classes=3, mask_head_upsampler="carafe")
    keys = {k for k in model.state_dict() if k.startswith("roi_head.mask_head.upsample.")}
    assert keys == {f"roi_head.mask_head.upsample.{m}.{p}" for m in ("channel_compressor", "content_encoder")
                    for p in ("weight", "bias")}
    # CARAFEPack(256, up_kernel=5, encoder_kernel=3, compressed_channels=64): 256*64+64 + 64*100*9+100
    assert sum(model.state_dict()[k].numel() for k in keys) == 16448 + 57700
    config = resolve_model_config(load_checkpoint(mmdet_checkpoint(model, tmp_path / "m.pth")))
    assert (config.model, config.upsampler, config.mask_head_upsampler) == ("mask_rcnn_r50_fpn", "carafe", "carafe")
    assert config.as_dict()["mask_head_upsampler"] == "carafe" and config.sources["mask_head_upsampler"] == (
        "checkpoint keys")
    loaded, keys_report = build_from_checkpoint(load_checkpoint(tmp_path / "m.pth"), config)
    assert keys_report.ok and loaded.mask_head_upsampler == "carafe"
    stock = build_model("mask_rcnn_r50_fpn", "carafe", num_classes=3)
    stock_config = resolve_model_config(load_checkpoint(mmdet_checkpoint(stock, tmp_path / "s.pth")))
    assert stock_config.mask_head_upsampler == "deconv"


def test_mask_head_forward_follows_mmdet_for_both_upsamplers():
    """mmdet FCNMaskHead.forward applies its ReLU after a deconv only (after CARAFE, a convex
    combination of ReLU outputs, it would change nothing)."""
    from lda_bench.models.mask_head import FCNMaskHead

    head = FCNMaskHead(num_classes=2, channels=8, num_convs=1, upsampler="carafe").eval()
    x = torch.randn(3, 8, 14, 14)
    expected = head.conv_logits(head.upsample(head.convs[0](x)))
    assert torch.equal(head(x), expected)
    deconv = FCNMaskHead(num_classes=2, channels=8, num_convs=1).eval()
    assert torch.equal(deconv(x), deconv.conv_logits(torch.relu(deconv.upsample(deconv.convs[0](x)))))


def test_mask_head_upsampler_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="mask_rcnn_r50_fpn"):
        build_model("faster_rcnn_r50_fpn", mask_head_upsampler="carafe")
    with pytest.raises(ValueError, match="deconv, carafe"):
        build_model("mask_rcnn_r50_fpn", mask_head_upsampler="bilinear")
