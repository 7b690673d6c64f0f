"""The ``mixsearch`` command: parse arguments, call the library, print with rich.

``parser`` holds the grammar, ``run`` the search commands (run, worker) with their progress
display and terminal signal wiring, ``commands`` the others, and ``render`` every format and
table they print. Every user-facing failure is a ``MixsearchError``: it prints as one ``error:``
line with exit code 2 (bad input) or 1 (runtime problem), never a traceback.
"""

from __future__ import annotations

import gc
import os
import sys

from ..errors import MixsearchError
from .parser import build_parser
from .render import print_error, print_note

__all__ = ["build_parser", "main"]


def _quiet_libraries() -> None:
    """Hide library chatter that says nothing to a user of this command."""
    import logging
    import warnings

    # torch logs a CUDA_HOME notice when a CUDA toolkit is installed without a GPU driver.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # Metric names and heartbeats are stable for our use; Optuna still labels them experimental.
    warnings.filterwarnings("ignore", message=".*experimental.*", module="optuna")
    warnings.filterwarnings("ignore", message=".*is experimental.*")


def main(argv: list[str] | None = None) -> int:
    from . import commands, run

    _quiet_libraries()
    args = build_parser().parse_args(argv)
    handler = {"run": run.cmd_run, "worker": run.cmd_worker, "validate": commands.cmd_validate,
               "show": commands.cmd_show, "dashboard": commands.cmd_dashboard, "export": commands.cmd_export,
               "train": commands.cmd_train, "evaluate": commands.cmd_evaluate, "confirm": commands.cmd_confirm,
               "report": commands.cmd_report}[args.command]
    try:
        return handler(args) or 0
    except MixsearchError as exc:
        print_error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        print_note("interrupted")
        return 130


def entry() -> None:
    """The ``mixsearch`` command: ``main``, then exit with its code.

    Interrupted (130), it leaves at once, so that a second Ctrl-C cannot land in the interpreter's
    teardown (torch and onnxruntime take a moment to unload), where the default handler would
    kill the process with a signal instead of the 130 it has already chosen.
    """
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    # Everything alive now stays alive until the process ends. Frozen, the interpreter's shutdown
    # collections skip it instead of walking every object torch made: about a second less per
    # command (docs/performance.md). Files, storages and atexit hooks close and flush as before.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
