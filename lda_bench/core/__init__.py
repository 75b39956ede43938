"""What every command shares: errors and exit codes, option parsing, device resolution, reports,
environment capture, terminal rendering, progress and statistics.

Everything above this layer (profiling, regress, evaluation, the CLI) uses these pieces instead
of writing its own; this layer imports nothing from lda_bench outside itself.
"""
