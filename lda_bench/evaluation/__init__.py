"""Evaluation loops (dataset -> model -> metrics) and their multi-process helpers."""
