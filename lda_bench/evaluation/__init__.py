"""Evaluation of checkpoints: COCO (single process or under torchrun), ADE20K semantic
segmentation, and scoring of results files."""

from .errors import EvalError, EvalUsageError
from .render import metrics_table
from .runner import evaluate, score_predictions

__all__ = ["EvalError", "EvalUsageError", "evaluate", "metrics_table", "score_predictions"]
