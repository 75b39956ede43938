"""The error every dataset reader raises for a missing or malformed dataset."""

from __future__ import annotations


class DataError(ValueError):
    """The dataset folder, annotation file or an image is missing or malformed."""
