"""The upstream side: mmcv 1.7 / mmdet 2.28 / mmseg 0.30 imported with the kernel stand-ins, and
their models built from the config files their wheels ship (random weights, no downloads)."""

from __future__ import annotations

import atexit
import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import mmcv_ext_shim
import numpy as np
import torch
from common import SEED, quiet

mmcv_ext_shim.install()  # before anything imports mmcv.ops
warnings.filterwarnings("ignore")
logging.disable(logging.INFO)  # mmcv init_weights logs every tensor at INFO

import mmcv  # noqa: E402
import mmdet  # noqa: E402
import mmseg  # noqa: E402

MMDET_CONFIGS = Path(mmdet.__file__).parent / ".mim" / "configs"
MMSEG_CONFIGS = Path(mmseg.__file__).parent / ".mim" / "configs"
# mmdet's FPN_CARAFE needs upsample_kernel for these two; 3 is what the CARAFE paper compares.
UPSAMPLE_KERNEL = {"deconv": 3, "pixel_shuffle": 3}


def mmdet_config(relative: str, upsampler: str | None = None, mask_head_upsampler: str | None = None) -> mmcv.Config:
    """An mmdet config with random-init weights, the FPN_CARAFE upsampler set to ``upsampler`` and, for
    Mask R-CNN, the mask head's upsampler set to ``mask_head_upsampler`` (None: as the file says)."""
    cfg = mmcv.Config.fromfile(str(MMDET_CONFIGS / relative))
    cfg.model.backbone.init_cfg = None  # no download of torchvision://resnet50
    if mask_head_upsampler == "deconv":  # the base Mask R-CNN's mask head (mask_rcnn_r50_fpn.py)
        cfg.model.roi_head.mask_head.upsample_cfg = mmcv.ConfigDict(type="deconv", scale_factor=2)
    if upsampler is not None:
        up = dict(type=upsampler)
        if upsampler == "carafe":
            up = dict(cfg.model.neck.upsample_cfg)
        elif upsampler in UPSAMPLE_KERNEL:
            up["upsample_kernel"] = UPSAMPLE_KERNEL[upsampler]
        cfg.model.neck.upsample_cfg = mmcv.ConfigDict(up)  # FPN_CARAFE reads it by attribute
    return cfg


def build_mmdet(cfg: mmcv.Config) -> torch.nn.Module:
    from mmdet.models import build_detector

    torch.manual_seed(SEED)
    model = build_detector(cfg.model, test_cfg=cfg.get("test_cfg"))
    with quiet():
        model.init_weights()
    model.cfg = cfg
    return model.eval()


def spread_head_weights(model: torch.nn.Module) -> None:
    """Re-draw the classifier weights with a larger spread so a random model gives distinct, confident scores.

    With mmdet's init (std 0.01) every RPN score is ~0.5 and every class score ~1/81, below the 0.05
    test threshold: no detections, and NMS orders near-ties. The larger spread makes the final
    detections a real test. The same weights then go to both models.
    """
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("rpn_cls.weight", "fc_cls.weight", "conv_logits.weight")):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
            elif name.endswith(("fc_cls.bias",)):
                param.copy_(torch.randn(param.shape, generator=gen) * 2.0)


def mmdet_inputs(cfg: mmcv.Config, bgr: np.ndarray) -> tuple[torch.Tensor, list[dict]]:
    """The config's test pipeline on an in-memory image (what mmdet.apis.inference_detector does)."""
    from mmcv.parallel import collate
    from mmdet.datasets import replace_ImageToTensor
    from mmdet.datasets.pipelines import Compose

    pipeline = [dict(p) for p in cfg.data.test.pipeline]
    pipeline[0] = dict(type="LoadImageFromWebcam")
    data = Compose(replace_ImageToTensor(pipeline))(dict(img=bgr))
    data = collate([data], samples_per_gpu=1)
    return data["img"][0].data[0], data["img_metas"][0].data[0]


def segformer_config() -> mmcv.Config:
    cfg = mmcv.Config.fromfile(str(MMSEG_CONFIGS / "segformer" / "segformer_mit-b1_512x512_160k_ade20k.py"))
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = None
    return cfg


def build_mmseg(cfg: mmcv.Config) -> torch.nn.Module:
    from mmseg.models import build_segmentor

    torch.manual_seed(SEED)
    model = build_segmentor(cfg.model)
    with quiet():
        model.init_weights()
    model.cfg = cfg
    # BN statistics of a fresh model are 0/1; draw some so eval-mode BN is not the identity.
    gen = torch.Generator().manual_seed(SEED + 2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def mmcv_complexity(model: torch.nn.Module, shape: tuple[int, int, int], dummy: Callable | None = None) -> dict:
    from mmcv.cnn import get_model_complexity_info

    original = model.forward
    if dummy is not None:
        model.forward = dummy
    try:
        with quiet():
            macs, params = get_model_complexity_info(model, shape, print_per_layer_stat=False, as_strings=False)
    finally:
        model.forward = original
    return {"macs": int(macs), "params": int(params)}


def source_tree(repo: Path) -> tuple[Path, str]:
    """A directory with ``repo``'s files at HEAD and the commit: the work tree itself, or (for a bare
    clone) an export of HEAD into a temporary directory."""
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    bare = subprocess.run(["git", "-C", str(repo), "rev-parse", "--is-bare-repository"], check=True,
                          capture_output=True, text=True).stdout.strip() == "true"
    if not bare:
        return repo, commit
    tree = Path(tempfile.mkdtemp(prefix="oracle-src-"))
    atexit.register(shutil.rmtree, tree, True)  # its modules stay imported until the run ends
    archive = subprocess.run(["git", "-C", str(repo), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree, commit


def official_lda_aqu(repo: Path) -> tuple[mmcv.Config, str]:
    """Register the official FPN_LAU neck (read from the repository) and return its Faster R-CNN config."""
    tree, commit = source_tree(repo)
    spec = importlib.util.spec_from_file_location("mmdet.models.necks.fpn_lau", tree / "mmdet/models/necks/fpn_lau.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # registers FPN_LAU in mmdet's NECKS
    # The official config's base (configs/lda_aqu/fasterrcnn_r50_fpn_1x_coco.py) is mmdet's Faster R-CNN
    # R50 FPN model; the LAU config replaces the neck and pads the test images to 64.
    official = mmcv.Config.fromfile(str(tree / "configs/lda_aqu/fasterrcnn_r50_lau.py"))
    cfg = mmcv.Config.fromfile(str(MMDET_CONFIGS / "faster_rcnn" / "faster_rcnn_r50_fpn_1x_coco.py"))
    cfg.model.backbone.init_cfg = None
    cfg.model.neck = official.model.neck
    cfg.data.test.pipeline = official.test_pipeline
    return cfg, commit

