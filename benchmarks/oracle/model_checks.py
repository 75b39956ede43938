"""Model checks: state dicts both ways, parameter totals, forward outputs on one image."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import everything, max_abs, trainable
from mmcv.runner import save_checkpoint
from upstream import build_mmdet, mmcv, mmdet_inputs

from lda_bench.data.segmentation_transforms import SegTestTransform
from lda_bench.data.transforms import preprocess
from lda_bench.models.checkpoints import build_from_checkpoint, load_checkpoint, resolve_model_config
from lda_bench.models.registry import build_model
from lda_bench.models.seg_inference import segment
from lda_bench.structures import Detections, ImageMeta


def state_dict_check(name: str, upstream: torch.nn.Module, ours_name: str, ours_upsampler: str,
                     options: dict[str, Any] | None = None, **build: Any) -> dict[str, Any]:
    """Keys, shapes, strict loads both ways, parameter totals."""
    up_state = upstream.state_dict()
    ours = build_model(ours_name, ours_upsampler, options, **build)
    our_state = ours.state_dict()
    only_upstream = sorted(set(up_state) - set(our_state))
    only_ours = sorted(set(our_state) - set(up_state))
    shapes = sorted(f"{k}: {tuple(up_state[k].shape)} vs {tuple(our_state[k].shape)}"
                    for k in set(up_state) & set(our_state) if up_state[k].shape != our_state[k].shape)
    record: dict[str, Any] = {
        "name": name, "upstream_keys": len(up_state), "our_keys": len(our_state),
        "only_upstream": only_upstream, "only_ours": only_ours, "shape_mismatches": shapes,
    }
    # Upstream checkpoint -> lda-bench eval's loader, with the meta mmdet's and mmseg's training saves
    # (the config text: the only thing that tells bilinear from nearest); model, upsampler and options
    # must come out as built here.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pth"
        save_checkpoint(upstream, str(path), meta={"CLASSES": None, "config": upstream.cfg.pretty_text})
        try:
            ckpt = load_checkpoint(path)
            config = resolve_model_config(ckpt)
            loaded, report = build_from_checkpoint(ckpt, config)
            told = config.model == ours_name and config.upsampler == ours_upsampler and \
                config.mask_head_upsampler == build.get("mask_head_upsampler", config.mask_head_upsampler) and \
                all(config.upsampler_options.get(k) == v for k, v in (options or {}).items())
            record["upstream_into_ours"] = {"ok": bool(told), "model": config.model, "upsampler": config.upsampler,
                                            "ignored_keys": len(report.ignored)}
            if not told:
                record["upstream_into_ours"]["error"] = (
                    f"told {config.model} + {config.upsampler} {config.upsampler_options} "
                    f"(mask head {config.mask_head_upsampler}); built {ours_name} + {ours_upsampler} {options or {}}")
            record["inferred_options"] = config.upsampler_options
        except Exception as exc:  # the report says what failed; the run goes on
            record["upstream_into_ours"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            loaded = None
    # Ours -> upstream, strictly.
    fresh = build_mmdet(upstream.cfg) if hasattr(upstream, "cfg") and hasattr(upstream.cfg, "model") and \
        upstream.cfg.model.get("type") != "EncoderDecoder" else None
    target = fresh if fresh is not None else upstream
    try:
        target.load_state_dict(our_state, strict=True)
        record["ours_into_upstream"] = {"ok": True}
    except Exception as exc:
        record["ours_into_upstream"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
    record["params"] = {"ours": trainable(ours), "upstream_trainable": trainable(upstream),
                        "ours_all": everything(ours), "upstream_all": everything(upstream)}
    record["equal"] = (not only_upstream and not only_ours and not shapes
                       and record["upstream_into_ours"]["ok"] and record["ours_into_upstream"]["ok"]
                       and record["params"]["ours"] == record["params"]["upstream_trainable"]
                       and record["params"]["ours_all"] == record["params"]["upstream_all"])
    del loaded
    return record


def as_meta(meta: dict) -> ImageMeta:
    return ImageMeta(tuple(meta["ori_shape"][:2]), tuple(meta["img_shape"][:2]), tuple(meta["pad_shape"][:2]),
                     tuple(float(v) for v in meta["scale_factor"]))


def flatten_bbox_results(per_class: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.concatenate([r[:, :4] for r in per_class]) if per_class else np.zeros((0, 4))
    scores = np.concatenate([r[:, 4] for r in per_class]) if per_class else np.zeros(0)
    labels = np.concatenate([np.full(len(r), k) for k, r in enumerate(per_class)]) if per_class else np.zeros(0)
    return boxes, scores, labels


def compare_detections(up_boxes, up_scores, up_labels, det: Detections) -> dict[str, Any]:
    ours_boxes, ours_scores, ours_labels = det.boxes.numpy(), det.scores.numpy(), det.labels.numpy()
    same_count = len(up_boxes) == len(ours_boxes)
    out = {"upstream": int(len(up_boxes)), "ours": int(len(ours_boxes)), "same_count": same_count}
    if same_count:
        out["labels_equal"] = bool((up_labels == ours_labels).all())
        out["boxes_max_abs"] = max_abs(up_boxes, ours_boxes)
        out["scores_max_abs"] = max_abs(up_scores, ours_scores)
        out["differing_boxes"] = int((np.abs(up_boxes - ours_boxes).max(axis=1) > 1e-3).sum()) if len(up_boxes) else 0
    return out


PROPOSAL_TOLERANCE = 1e-3  # pixels (and score units): float32 round-off on coordinates up to ~1300


def compare_proposals(upstream: torch.Tensor, ours: torch.Tensor) -> dict[str, Any]:
    """RPN proposals (x1, y1, x2, y2, score) as sets: near-equal scores may swap places after a 1e-6
    change in the features, so each proposal is matched with the closest one of the other list."""
    out: dict[str, Any] = {"upstream": int(len(upstream)), "ours": int(len(ours)),
                           "same_order_max_abs": max_abs(upstream, ours)}
    if len(upstream) == 0 or len(ours) == 0:
        out.update(matched_max_abs=0.0 if len(upstream) == len(ours) else math.inf,
                   unmatched=abs(len(upstream) - len(ours)))
        return out
    distance = torch.cdist(upstream.double(), ours.double(), p=float("inf"))
    nearest = torch.cat([distance.min(dim=1).values, distance.min(dim=0).values])
    out["matched_max_abs"] = float(nearest.max())
    out["unmatched"] = int((nearest > PROPOSAL_TOLERANCE).sum())
    return out


def detector_forward(name: str, upstream: torch.nn.Module, ours: torch.nn.Module, bgr: np.ndarray,
                     with_mask: bool) -> dict[str, Any]:
    cfg = upstream.cfg
    img, metas = mmdet_inputs(cfg, bgr)
    divisor = [t for t in cfg.data.test.pipeline[1].transforms if t.type == "Pad"][0].size_divisor
    ours_pre = preprocess(bgr, tuple(cfg.data.test.pipeline[1].img_scale), divisor)
    record: dict[str, Any] = {"name": name, "image": list(bgr.shape[:2]), "input_shape": list(img.shape[-2:])}
    record["preprocess_max_abs"] = max_abs(img[0], ours_pre.image)
    record["meta_equal"] = as_meta(metas[0]) == ImageMeta(ours_pre.ori_shape, ours_pre.img_shape,
                                                          ours_pre.pad_shape, ours_pre.scale_factor)
    ours.load_state_dict(upstream.state_dict())
    with torch.no_grad():
        up_back = upstream.backbone(img)
        our_back = ours.backbone(img)
        record["backbone_max_abs"] = max(max_abs(a, b) for a, b in zip(up_back, our_back))
        up_neck = upstream.neck(up_back)
        our_neck = ours.neck(our_back)
        record["neck_levels"] = [len(up_neck), len(our_neck)]
        record["neck_max_abs"] = max(max_abs(a, b) for a, b in zip(up_neck, our_neck))
        record["neck_max_value"] = max(float(a.abs().max()) for a in up_neck)
        up_props = upstream.rpn_head.simple_test_rpn(up_neck, metas)[0]
        rpn_scores, rpn_deltas = ours.rpn_head(our_neck)
        our_props = ours.rpn_head.proposals(rpn_scores, rpn_deltas, [m["img_shape"][:2] for m in metas],
                                            ours.test_cfg.rpn)[0]
        record["proposals"] = compare_proposals(up_props, our_props)
        up_result = upstream.simple_test(img, metas, rescale=True)[0]
        det = ours.predict(img, [as_meta(m) for m in metas])[0]
    bbox_results = up_result[0] if with_mask else up_result
    record["detections"] = compare_detections(*flatten_bbox_results(bbox_results), det)
    if with_mask:
        up_masks = [m for per_class in up_result[1] for m in per_class]
        if len(up_masks) == det.masks.shape[0]:
            stacked = np.stack(up_masks) if up_masks else np.zeros((0, *det.masks.shape[1:]), dtype=bool)
            record["masks"] = {"count": len(up_masks),
                               "differing_pixels": int((stacked != det.masks.numpy()).sum())}
        else:
            record["masks"] = {"count": [len(up_masks), int(det.masks.shape[0])], "differing_pixels": None}
    d = record["detections"]
    record["equal"] = bool(record["preprocess_max_abs"] == 0 and record["meta_equal"]
                           and record["neck_max_abs"] <= 1e-4 and record["backbone_max_abs"] <= 1e-4
                           and record["proposals"]["unmatched"] == 0 and d["same_count"]
                           and d.get("labels_equal") and d.get("differing_boxes") == 0
                           and d.get("scores_max_abs", 1) <= 1e-4
                           and (not with_mask or record["masks"].get("differing_pixels") == 0))
    return record


def panoptic_forward(upstream: torch.nn.Module, ours: torch.nn.Module, bgr: np.ndarray) -> dict[str, Any]:
    cfg = upstream.cfg
    img, metas = mmdet_inputs(cfg, bgr)
    ours.load_state_dict(upstream.state_dict())
    with torch.no_grad():
        up_feats = upstream.extract_feat(img)
        our_feats = ours.extract_feat(img)
        up_sem = upstream.semantic_head(up_feats)["seg_preds"]
        our_sem = ours.semantic_head(our_feats)
        up_pan = upstream.simple_test(img, metas, rescale=True)[0]["pan_results"]
        our_pan = ours.predict_panoptic(img, [as_meta(m) for m in metas])[0].numpy()
    record = {"name": "panoptic_fpn_r50 (nearest)", "input_shape": list(img.shape[-2:]),
              "neck_max_abs": max(max_abs(a, b) for a, b in zip(up_feats, our_feats)),
              "semantic_logits_max_abs": max_abs(up_sem, our_sem),
              "panoptic_map": {"shape_equal": up_pan.shape == our_pan.shape,
                               "differing_pixels": int((up_pan != our_pan).sum()) if up_pan.shape == our_pan.shape
                               else None,
                               "segments_upstream": int(len(np.unique(up_pan))),
                               "segments_ours": int(len(np.unique(our_pan)))}}
    record["equal"] = bool(record["neck_max_abs"] <= 1e-4 and record["semantic_logits_max_abs"] <= 1e-4
                           and record["panoptic_map"]["differing_pixels"] == 0)
    return record


def segformer_forward(upstream: torch.nn.Module, rgb: np.ndarray) -> dict[str, Any]:
    from mmcv.parallel import collate
    from mmseg.datasets.pipelines import Compose

    cfg = upstream.cfg
    pipeline = [dict(p) for p in cfg.data.test.pipeline]
    pipeline[0] = dict(type="LoadImageFromFile")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.png"
        mmcv.imwrite(rgb[..., ::-1], str(path))  # mmseg loads BGR from file, as in its test
        data = Compose(pipeline)(dict(img_info=dict(filename=str(path)), img_prefix=None))
    data = collate([data], samples_per_gpu=1)
    img, metas = data["img"][0], data["img_metas"][0].data[0]
    ours = build_model("segformer_b1")
    ours.load_state_dict(upstream.state_dict())
    transform = SegTestTransform()
    our_img, our_meta = transform(rgb)
    with torch.no_grad():
        up_logits = upstream.encode_decode(img, metas)  # at the network input's size
        up_probs = upstream.inference(img, metas, rescale=True)
        up_seg = upstream.simple_test(img, metas, rescale=True)[0]
        our_logits_full = segment(ours, img, tuple(metas[0]["ori_shape"][:2]))
        our_logits = torch.nn.functional.interpolate(ours(img), size=img.shape[-2:], mode="bilinear",
                                                     align_corners=False)
    our_seg = our_logits_full.argmax(dim=1)[0].numpy()
    differs = torch.from_numpy(up_seg != our_seg)
    top2 = up_probs[0].topk(2, dim=0).values  # 2 x H x W
    margins = (top2[0] - top2[1])[differs]
    record = {"name": "segformer_b1 (mmseg SegformerHead)", "image": list(rgb.shape[:2]),
              "input_shape": list(img.shape[-2:]),
              "preprocess_max_abs": max_abs(img, our_img),
              "logits_max_abs": max_abs(up_logits, our_logits),
              "logits_max_value": float(up_logits.abs().max()),
              "probabilities_max_abs": max_abs(up_probs, our_logits_full.softmax(dim=1)),
              "differing_pixels": int(differs.sum()), "pixels": int(up_seg.size),
              # A pixel whose two best classes are this close is a tie that round-off decides.
              "differing_pixels_max_top2_margin": float(margins.max()) if margins.numel() else None,
              "meta_equal": tuple(metas[0]["img_shape"][:2]) == tuple(our_meta["img_shape"])}
    record["equal"] = bool(record["preprocess_max_abs"] == 0 and record["logits_max_abs"] <= 1e-4
                           and (record["differing_pixels"] == 0 or record["differing_pixels_max_top2_margin"] < 1e-6))
    return record

