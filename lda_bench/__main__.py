"""``python -m lda_bench`` and the ``lda-bench`` console script."""

import os


def main() -> None:
    # Before torch is imported: keep torch's C++ warnings (e.g. the profiler's notes about blocks
    # allocated before profiling started) out of the command's output; errors still show.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from lda_bench.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
