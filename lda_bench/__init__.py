"""lda-bench: profile and evaluate feature upsamplers (the ``lda-bench`` command)."""

__version__ = "0.1.0"
