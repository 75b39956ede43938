"""Detectors and segmenters with a pluggable upsampler, using mmdet/mmseg parameter names."""
