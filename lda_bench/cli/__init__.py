"""The ``lda-bench`` command line (Typer): one module per command group, each a thin shell that
parses options, calls a library function with explicit arguments and renders its result.

* :mod:`.profile`: ``profile`` and ``run`` (:func:`lda_bench.profiling.profile`);
* :mod:`.compare`: ``compare`` (:func:`lda_bench.profiling.compare.compare_files`);
* :mod:`.regress`: ``regress`` (:func:`lda_bench.regress.session.regress`);
* :mod:`.evaluate`: ``eval`` (:func:`lda_bench.evaluation.evaluate`);
* :mod:`.sweep`: ``sweep`` (:func:`lda_bench.profiling.sweep.sweep`) and ``plot``
  (:func:`lda_bench.plotting.plot_reports`);
* :mod:`.info`: ``list`` and ``env``.

Exit codes: 0 success, 1 some case/evaluation failed, 2 bad usage, 130 interrupted (Ctrl-C), 143
terminated (SIGTERM); ``regress`` also 2 undecided and 3 set-up error.
"""

from __future__ import annotations

import sys

import typer

from lda_bench.core import signals
from lda_bench.core.errors import EXIT_INTERRUPTED
from lda_bench.core.render import print_info

from .compare import compare_command
from .evaluate import eval_command
from .info import env_command, list_command
from .profile import profile_command, run_command
from .regress import regress_command
from .sweep import plot_command, sweep_command

app = typer.Typer(
    help="Profile and evaluate feature upsamplers (LDA-AQU and its peers).\n\n"
    "Start with:  lda-bench profile --upsampler lda_aqu",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
app.command("list")(list_command)
app.command("profile")(profile_command)
app.command("run")(run_command)
app.command("sweep")(sweep_command)
app.command("plot")(plot_command)
app.command("compare")(compare_command)
app.command("env")(env_command)
app.command("regress")(regress_command)
app.command("eval")(eval_command)


def main() -> None:
    signals.install()  # SIGTERM behaves like Ctrl-C: measured cases are kept
    try:
        app()
    except KeyboardInterrupt:  # outside a measurement loop: nothing to save
        print_info("interrupted")
        sys.exit(signals.interrupted_exit_code())
    except SystemExit as exc:
        # Typer turns an interruption outside the commands' own handling into exit 130.
        if exc.code == EXIT_INTERRUPTED and signals.terminated():
            sys.exit(signals.EXIT_TERMINATED)
        raise
