"""Work out which model and upsampler a state dict belongs to, from its keys and shapes.

What the keys tell (mmdet 2.x/3.x and mmseg layouts, docs/mmdet-fidelity.md):

* ``semantic_head.*`` -> Panoptic FPN (``conv_logits`` rows - 1 = stuff classes), else
  ``roi_head.mask_head.*`` -> Mask R-CNN (with ``roi_head.mask_head.upsample.channel_compressor``:
  CARAFE in the mask head, as mmdet's CARAFE config), else ``roi_head.bbox_head.*`` -> Faster R-CNN;
* ``decode_head.conv_seg`` with an MiT backbone (``backbone.layers.*``) -> SegFormer (the B1
  shapes are checked when the model is built); ``conv_seg`` rows = classes;
* ``fc_cls`` rows - 1 -> the number of (thing) classes (background is the last row);
* ``neck.lateral_convs.4`` -> the FPN_CARAFE/FPN_LAU neck (4 upsamplers), else plain FPN;
* the keys of ``neck.upsample_modules.0`` (SegFormer: ``decode_head.upsample_modules.0``) ->
  the upsampler family and its options: LDA-AQU
  (proj_q/proj_k/conv_offset), the local self-attention ablation (no conv_offset), CARAFE
  (channel_compressor/content_encoder), pixel shuffle (upsample_conv), deconv (bare weight/bias),
  DySample (offset, optional scope), none -> nearest for a neck (bilinear is told apart only by the
  config text saved in the checkpoint's meta) and the stock one-step bilinear head for SegFormer.
  Anything else is matched against every registered upsampler built with its defaults.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import Tensor

import upsamplers

UPSAMPLE_PREFIX = "neck.upsample_modules.0."
SEGFORMER_UPSAMPLE_PREFIX = "decode_head.upsample_modules.0."

# mmdet upsample_cfg option names that differ from the registry's.
_CONFIG_OPTION_RENAMES = {"deconv": {"upsample_kernel": "kernel_size"}}


class ModelInferenceError(ValueError):
    """The state dict does not say enough (or says something unsupported) about its model."""


@dataclass
class InferredConfig:
    """What could be read from a checkpoint; ``None`` means unknown."""

    model: str | None = None
    num_classes: int | None = None
    num_stuff_classes: int | None = None
    neck: str | None = None
    upsampler: str | None = None
    upsampler_options: dict[str, Any] = field(default_factory=dict)
    size_divisor: int | None = None
    mask_head_upsampler: str | None = None  # Mask R-CNN: "deconv" or "carafe"
    notes: list[str] = field(default_factory=list)


def _isqrt_exact(value: int) -> int | None:
    root = math.isqrt(value)
    return root if root * root == value else None


def _sub(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _lda_aqu_options(keys: Mapping[str, Tensor], channels: int) -> dict[str, Any]:
    hidden = keys["proj_q.weight"].shape[0]
    options: dict[str, Any] = {"reduction_factor": channels // hidden}
    table = keys.get("relative_position_bias_table")
    options["rpb"] = table is not None
    if table is not None:
        options["num_heads"] = int(table.shape[1])
        options["k_u"] = _isqrt_exact(int(table.shape[3])) or 3
    last = keys.get("conv_offset.3.weight")
    if last is not None:
        group_channels = int(last.shape[1])
        options["n_groups"] = hidden // group_channels
        options["k_u"] = _isqrt_exact(int(last.shape[0]) // 2) or options.get("k_u", 3)
        options["k_e"] = int(last.shape[-1])
    return options


def _carafe_options(keys: Mapping[str, Tensor]) -> dict[str, Any]:
    compressed = int(keys["channel_compressor.weight"].shape[0])
    encoder = keys["content_encoder.weight"]
    taps = int(encoder.shape[0]) // 4  # scale 2: four sub-pixels per low-res pixel
    for group in (1, 2, 4, 8):
        kernel = _isqrt_exact(taps // group) if taps % group == 0 else None
        if kernel is not None and kernel % 2 == 1:
            return {"up_kernel": kernel, "up_group": group, "encoder_kernel": int(encoder.shape[-1]),
                    "compressed_channels": compressed}
    raise ModelInferenceError(f"cannot read CARAFE's kernel size from content_encoder shape {tuple(encoder.shape)}")


def _dysample_options(keys: Mapping[str, Tensor], channels: int) -> dict[str, Any]:
    offset = keys["offset.weight"]
    out_ch, in_ch = int(offset.shape[0]), int(offset.shape[1])
    if in_ch == channels:
        style, groups = "lp", out_ch // 8
    elif in_ch * 4 == channels:
        style, groups = "pl", out_ch // 2
    else:
        raise ModelInferenceError(f"unexpected DySample offset shape {tuple(offset.shape)} for {channels} channels")
    return {"style": style, "groups": groups, "dyscope": "scope.weight" in keys, "scope_bias": "scope.bias" in keys}


def _fits(keys: Mapping[str, Tensor], name: str, options: Mapping[str, Any], channels: int) -> bool:
    """Whether ``name`` built with ``options`` has exactly these keys and shapes."""
    wanted = {k: tuple(v.shape) for k, v in keys.items() if not k.endswith("base_offset")}
    try:
        module = upsamplers.build(name, channels, **options)
    except Exception:  # an upsampler that cannot build this way simply does not fit
        return False
    return {k: tuple(v.shape) for k, v in module.state_dict().items()} == wanted


def _match_registered(keys: Mapping[str, Tensor], channels: int) -> tuple[str, dict[str, Any]] | None:
    """The one registered upsampler whose default state dict has exactly these keys and shapes."""
    matches = [spec.name for spec in upsamplers.available() if _fits(keys, spec.name, {}, channels)]
    return (matches[0], {}) if len(matches) == 1 else None


def infer_upsampler(
    state: Mapping[str, Tensor], channels: int, prefix: str = UPSAMPLE_PREFIX, parameter_free: str = "nearest"
) -> tuple[str | None, dict[str, Any]]:
    """(name, options) of the upsampler whose first module's keys start with ``prefix``, or
    (None, {}) when the keys do not decide it; ``parameter_free`` when there are no such keys.

    A family guess that does not rebuild the same keys (say, a newer upsampler that also has an
    ``offset`` conv) gives way to an exact match among all registered upsamplers, if there is one.
    """
    keys = _sub(state, prefix)
    if not keys:
        return parameter_free, {}
    try:
        guess = _guess_family(keys, channels)
    except ModelInferenceError:
        guess = None
    if guess is not None and _fits(keys, guess[0], guess[1], channels):
        return guess
    match = _match_registered(keys, channels)
    if match is not None:
        return match
    return guess if guess is not None else (None, {})


def _guess_family(keys: Mapping[str, Tensor], channels: int) -> tuple[str, dict[str, Any]] | None:
    if "proj_q.weight" in keys:
        name = "lda_aqu" if "conv_offset.3.weight" in keys else "lsa"
        return name, _lda_aqu_options(keys, channels)
    if "channel_compressor.weight" in keys:
        return "carafe", _carafe_options(keys)
    if "upsample_conv.weight" in keys:
        return "pixel_shuffle", {"upsample_kernel": int(keys["upsample_conv.weight"].shape[-1])}
    if set(keys) == {"weight", "bias"} and keys["weight"].dim() == 4:
        return "deconv", {"kernel_size": int(keys["weight"].shape[-1])}
    if "offset.weight" in keys:
        return "dysample", _dysample_options(keys, channels)
    return None


def parse_config_text(text: str) -> dict[str, Any]:
    """Upsampler type/options and the test pad divisor from an mmdet config dump (meta['config'])."""
    found: dict[str, Any] = {}
    match = re.search(r"upsample_cfg\s*=\s*dict\(([^()]*)\)", text)
    if match:
        options: dict[str, Any] = {}
        for key, raw in re.findall(r"(\w+)\s*=\s*('[^']*'|\"[^\"]*\"|[-\w.]+)", match.group(1)):
            try:
                options[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                continue
        kind = options.pop("type", None)
        if isinstance(kind, str):
            found["upsampler"] = kind
            renames = _CONFIG_OPTION_RENAMES.get(kind, {})
            found["upsampler_options"] = {renames.get(k, k): v for k, v in options.items()
                                          if k not in ("scale_factor", "mode", "align_corners")}
    divisors = {int(v) for v in re.findall(r"size_divisor\s*=\s*(\d+)", text)}
    if len(divisors) == 1:
        found["size_divisor"] = divisors.pop()
    return found


def _is_segformer(state: Mapping[str, Tensor]) -> bool:
    return "decode_head.conv_seg.weight" in state and any(k.startswith("backbone.layers.") for k in state)


def _infer_segformer(state: Mapping[str, Tensor]) -> InferredConfig:
    from .segformer import STOCK_UPSAMPLER  # the parameter-free default of the decode head

    info = InferredConfig(model="segformer_b1", num_classes=int(state["decode_head.conv_seg.weight"].shape[0]))
    embed = state.get("decode_head.convs.0.conv.weight")
    channels = int(embed.shape[0]) if embed is not None else 256
    info.upsampler, info.upsampler_options = infer_upsampler(state, channels, SEGFORMER_UPSAMPLE_PREFIX,
                                                             STOCK_UPSAMPLER)
    return info


def infer_from_state_dict(state: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None) -> InferredConfig:
    """Everything :func:`build_model` needs that the keys (and an mmdet config dump) reveal."""
    if _is_segformer(state):
        return _infer_segformer(state)
    info = InferredConfig()
    if any(k.startswith("semantic_head.") for k in state):
        info.model = "panoptic_fpn_r50"
        logits = state.get("semantic_head.conv_logits.weight")
        if logits is not None:
            info.num_stuff_classes = int(logits.shape[0]) - 1  # the last channel is "all things"
    elif any(k.startswith("roi_head.mask_head.") for k in state):
        info.model = "mask_rcnn_r50_fpn"
        carafe = "roi_head.mask_head.upsample.channel_compressor.weight" in state
        info.mask_head_upsampler = "carafe" if carafe else "deconv"
    elif any(k.startswith("roi_head.bbox_head.") for k in state):
        info.model = "faster_rcnn_r50_fpn"
    cls = state.get("roi_head.bbox_head.fc_cls.weight")
    if cls is not None:
        info.num_classes = int(cls.shape[0]) - 1
    if any(k.startswith("neck.lateral_convs.4.") for k in state):
        info.neck = "fpn_carafe"
    elif any(k.startswith("neck.lateral_convs.") for k in state):
        info.neck = "fpn"
    lateral = state.get("neck.lateral_convs.0.conv.weight")
    channels = int(lateral.shape[0]) if lateral is not None else 256
    info.upsampler, info.upsampler_options = infer_upsampler(state, channels)
    text = (meta or {}).get("config")
    if isinstance(text, str):
        cfg = parse_config_text(text)
        info.size_divisor = cfg.get("size_divisor")
        kind = cfg.get("upsampler")
        if kind in ("bilinear", "nearest") and info.upsampler == "nearest":
            info.upsampler = kind
            info.notes.append(f"upsampler {kind!r} read from the checkpoint's config text")
        elif kind is not None and kind == info.upsampler:
            # Options the shapes cannot show (e.g. LDA-AQU's range_factor) come from the config.
            spec = upsamplers.get_spec(kind)
            for key, value in cfg.get("upsampler_options", {}).items():
                if key in spec.defaults and key not in info.upsampler_options:
                    info.upsampler_options[key] = value
    return info
