"""Evaluation of checkpoints: COCO box/mask AP, COCO-panoptic PQ and ADE20K mIoU (single process
or under torchrun), and scoring of results files."""

from .common import EvalError
from .render import metrics_table
from .runner import evaluate, score_predictions

__all__ = ["EvalError", "evaluate", "metrics_table", "score_predictions"]
