"""Evaluation metrics: panoptic quality, semantic segmentation IoU."""
