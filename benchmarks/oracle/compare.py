"""The oracle's comparisons: lda-bench against mmcv 1.7 / mmdet 2.28 / mmseg 0.30 themselves.

Runs inside the oracle's own virtual environment (``benchmarks/oracle/run.py`` creates it and
starts this script); never imported by lda-bench. Every upstream model is built from the config
file that ships in the upstream wheel (``mmdet/.mim/configs/...``, the same paths as in the
upstream repositories), with random weights (no downloads), and compared with ours on:

* state dicts: keys and shapes; an upstream checkpoint saved by ``mmcv.runner.save_checkpoint``
  loads strictly through ``lda-bench eval``'s loader (model and upsampler told from the keys), and
  ours loads strictly into the upstream model;
* parameters: ours (what ``lda-bench profile`` reports: parameters that require gradients) against
  upstream's sum and mmcv's ``get_model_complexity_info``; MACs of both counters on the same input;
* forward outputs on one image, eval mode: the preprocessed input, backbone and neck features, RPN
  proposals, final detections/masks/panoptic map (mmdet ``simple_test``), SegFormer logits;
* metrics: mmseg ``mean_iou``, mmdet's COCO evaluation (``CocoDataset.evaluate``) and mmdet's
  panoptic ``pq_compute_multi_core`` (needs panopticapi, not on PyPI: ``--panopticapi PATH``)
  against ours on the same inputs;
* with ``--lda-aqu-repo PATH`` (a clone of duzw9311/LDA-AQU): the official FPN_LAU neck and
  LDA_AQU module (``mmdet/models/necks/fpn_lau.py``) in the official Faster R-CNN config
  (``configs/lda_aqu/fasterrcnn_r50_lau.py``), against ours with ``lda_aqu``.

Writes a JSON report; ``report.py`` turns it into Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import upstream  # noqa: E402  (installs the mmcv._ext stand-in before mmcv.ops is imported)
from common import synthetic_image, trainable  # noqa: E402
from metric_checks import coco_metric_check, panoptic_metric_check, sem_seg_metric_check  # noqa: E402
from model_checks import detector_forward, panoptic_forward, segformer_forward, state_dict_check  # noqa: E402
from preprocessing_checks import preprocessing_check  # noqa: E402
from upstream import (  # noqa: E402
    UPSAMPLE_KERNEL,
    build_mmdet,
    build_mmseg,
    mmcv_complexity,
    mmdet_config,
    official_lda_aqu,
    segformer_config,
    spread_head_weights,
)

import lda_bench  # noqa: E402
from lda_bench.models.registry import build_model  # noqa: E402
from lda_bench.profiling.flops import count_macs  # noqa: E402

DETECTOR_UPSAMPLERS = ("nearest", "bilinear", "deconv", "pixel_shuffle", "carafe")
DETECTOR_INPUT = (3, 800, 1344)  # mmdet get_flops' default 1280x800, padded to 64 as the configs' test pipeline
SEGFORMER_INPUT = (3, 512, 512)
IMAGE = (427, 640)  # a typical COCO image size (not square, resized to 800x1199 and padded)


def complexity(name: str, upstream_model: torch.nn.Module, ours: torch.nn.Module,
               shape: tuple[int, int, int]) -> dict[str, Any]:
    """mmcv's get_model_complexity_info (mmdet get_flops.py) and ours on the same input."""
    dummy = getattr(upstream_model, "forward_dummy", None)
    macs = count_macs(ours, (torch.randn(1, *shape),), "fvcore", "ignore")
    return {"name": name, "input": list(shape[1:]), "mmcv": mmcv_complexity(upstream_model, shape, dummy),
            "ours_params": trainable(ours), "ours_macs_convs_matmuls": macs.macs,
            "ours_uncounted_ops": sorted(macs.uncounted_ops)}


def detector_steps(bgr: np.ndarray) -> list[tuple[str, Callable[[dict], None]]]:
    steps = []
    for model_name, config in (("faster_rcnn_r50_fpn", "carafe/faster_rcnn_r50_fpn_carafe_1x_coco.py"),
                               ("mask_rcnn_r50_fpn", "carafe/mask_rcnn_r50_fpn_carafe_1x_coco.py")):
        for up in DETECTOR_UPSAMPLERS:
            def step(report: dict, model_name: str = model_name, config: str = config, up: str = up) -> None:
                mask = "deconv" if model_name.startswith("mask") else None
                upstream_model = build_mmdet(mmdet_config(config, up, mask))
                options = {"kernel_size": UPSAMPLE_KERNEL[up]} if up == "deconv" else (
                    {"upsample_kernel": UPSAMPLE_KERNEL[up]} if up == "pixel_shuffle" else None)
                name = f"{model_name} FPN_CARAFE {up}"
                rec = state_dict_check(name, upstream_model, model_name, up, options)
                rec["config"] = f"mmdetection v2.28.2 configs/{config} (neck.upsample_cfg.type={up!r}" + (
                    ", roi_head.mask_head.upsample_cfg.type='deconv' as in the base Mask R-CNN)" if mask else ")")
                report["state_dicts"].append(rec)
                if up == "nearest" or (up == "carafe" and not mask):  # Mask R-CNN + CARAFE: as shipped, below
                    ours = build_model(model_name, up, options)
                    report["complexity"].append(complexity(name, upstream_model, ours, DETECTOR_INPUT))
                    spread_head_weights(upstream_model)
                    report["forward"].append(detector_forward(name, upstream_model, ours, bgr, bool(mask)))

            steps.append((f"{model_name} + FPN_CARAFE({up})", step))

    def mask_carafe_as_shipped(report: dict) -> None:
        upstream_model = build_mmdet(mmdet_config("carafe/mask_rcnn_r50_fpn_carafe_1x_coco.py"))
        name = "mask_rcnn_r50_fpn FPN_CARAFE carafe + CARAFE mask head"
        rec = state_dict_check(name, upstream_model, "mask_rcnn_r50_fpn", "carafe", mask_head_upsampler="carafe")
        rec["config"] = "mmdetection v2.28.2 configs/carafe/mask_rcnn_r50_fpn_carafe_1x_coco.py (as shipped)"
        report["state_dicts"].append(rec)
        ours = build_model("mask_rcnn_r50_fpn", "carafe", mask_head_upsampler="carafe")
        report["complexity"].append(complexity(name, upstream_model, ours, DETECTOR_INPUT))
        spread_head_weights(upstream_model)
        report["forward"].append(detector_forward(name, upstream_model, ours, bgr, True))

    steps.append(("mask_rcnn_r50_fpn as configs/carafe ships it (CARAFE in the mask head too)", mask_carafe_as_shipped))

    def panoptic(report: dict) -> None:
        upstream_model = build_mmdet(mmdet_config("panoptic_fpn/panoptic_fpn_r50_fpn_1x_coco.py"))
        rec = state_dict_check("panoptic_fpn_r50 FPN nearest", upstream_model, "panoptic_fpn_r50", "nearest")
        rec["config"] = "mmdetection v2.28.2 configs/panoptic_fpn/panoptic_fpn_r50_fpn_1x_coco.py"
        report["state_dicts"].append(rec)
        spread_head_weights(upstream_model)
        report["forward"].append(panoptic_forward(upstream_model, build_model("panoptic_fpn_r50"), bgr))

    steps.append(("panoptic_fpn_r50", panoptic))
    return steps


def segformer_step(report: dict, bgr: np.ndarray) -> None:
    upstream_model = build_mmseg(segformer_config())
    rec = state_dict_check("segformer_b1", upstream_model, "segformer_b1", "bilinear")
    rec["config"] = "mmsegmentation v0.30.0 configs/segformer/segformer_mit-b1_512x512_160k_ade20k.py"
    report["state_dicts"].append(rec)
    report["forward"].append(segformer_forward(upstream_model, bgr[..., ::-1].copy()))
    report["complexity"].append(complexity("segformer_b1", upstream_model, build_model("segformer_b1"),
                                           SEGFORMER_INPUT))


def official_lda_aqu_step(report: dict, repo: Path, bgr: np.ndarray) -> None:
    cfg, commit = official_lda_aqu(repo)
    upstream_model = build_mmdet(cfg)
    name = "faster_rcnn_r50_fpn official FPN_LAU lda_aqu"
    # The options the official config sets (its neck's upsample_cfg), which the loader must tell.
    options = {k: v for k, v in cfg.model.neck.upsample_cfg.items() if k != "type"}
    rec = state_dict_check(name, upstream_model, "faster_rcnn_r50_fpn", "lda_aqu", options)
    rec["config"] = (f"duzw9311/LDA-AQU@{commit[:7]} configs/lda_aqu/fasterrcnn_r50_lau.py "
                     "(mmdet/models/necks/fpn_lau.py)")
    report["state_dicts"].append(rec)
    ours = build_model("faster_rcnn_r50_fpn", "lda_aqu")
    report["complexity"].append(complexity(name, upstream_model, ours, DETECTOR_INPUT))
    spread_head_weights(upstream_model)
    # The reference backend: the official structure op by op (the fused backends are checked against it
    # in lda-bench's own tests).
    report["forward"].append(detector_forward(name, upstream_model,
                                              build_model("faster_rcnn_r50_fpn", "lda_aqu", {"backend": "reference"}),
                                              bgr, False))


def write(report: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "mmcv": upstream.mmcv.__version__, "mmdet": upstream.mmdet.__version__,
                     "mmseg": upstream.mmseg.__version__, "lda_bench": lda_bench.__version__,
                     "numpy": np.__version__},
        "shims": {"mmcv._ext": list(upstream.mmcv_ext_shim.IMPLEMENTED)},
        "preprocessing": [], "state_dicts": [], "forward": [], "metrics": [], "complexity": [], "errors": [],
        "finished": False,
    }
    bgr = synthetic_image(*IMAGE)
    steps: list[tuple[str, Callable[[dict], None]]] = [
        ("preprocessing", lambda r: r["preprocessing"].append(preprocessing_check())),
        *detector_steps(bgr),
        ("segformer_b1", lambda r: segformer_step(r, bgr)),
    ]
    if args.lda_aqu_repo is not None:
        steps.append(("official LDA-AQU (FPN_LAU) Faster R-CNN", lambda r: official_lda_aqu_step(r, args.lda_aqu_repo, bgr)))
    steps += [
        ("metric: ADE20K mIoU", lambda r: r["metrics"].append(sem_seg_metric_check())),
        ("metric: COCO AP", lambda r: r["metrics"].append(coco_metric_check())),
        ("metric: COCO-panoptic PQ", lambda r: r["metrics"].append(panoptic_metric_check(args.panopticapi))),
    ]
    if args.only:
        steps = [s for s in steps if any(o in s[0] for o in args.only)]
    for index, (title, step) in enumerate(steps, 1):
        print(f"[{time.perf_counter() - started:6.1f} s] {index}/{len(steps)} {title}", flush=True)
        try:
            step(report)
        except Exception as exc:  # one failing comparison must not lose the others
            report["errors"].append({"step": title, "error": f"{type(exc).__name__}: {exc}",
                                     "traceback": traceback.format_exc(limit=6)})
            print(f"    failed: {type(exc).__name__}: {exc}", flush=True)
        report["seconds"] = round(time.perf_counter() - started, 1)
        write(report, args.json)
    checks = report["preprocessing"] + report["state_dicts"] + report["forward"] + report["metrics"]
    report["all_equal"] = not report["errors"] and all(c.get("equal") is not False for c in checks)
    report["finished"] = True
    write(report, args.json)
    print(f"[{report['seconds']:6.1f} s] done: {'everything equal' if report['all_equal'] else 'DIFFERENCES'}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the report (rewritten after each step)")
    parser.add_argument("--lda-aqu-repo", type=Path, help="git clone of duzw9311/LDA-AQU (the official neck)")
    parser.add_argument("--panopticapi", type=Path, help="git clone of cocodataset/panopticapi (for mmdet's PQ)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", action="append", help="run only the steps whose title contains this (repeatable)")
    args = parser.parse_args(argv)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    return 0 if run(args)["all_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
