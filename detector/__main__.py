"""`python -m detector`.

Once the command has returned its status, the interpreter's own teardown is skipped: after the usual
exit steps (non-daemon threads joined, every other atexit callback run), `_skip_teardown` flushes the
standard streams and leaves with os._exit, instead of freeing module by module the thousands of objects
polars' import made (0.10-0.15 s of every run; benchmarks/bench_core.py times the whole process). The
command's files are closed by then (every sink and the state store write inside `with` blocks). A command
that raised, or a flush that fails (a closed pipe), takes the usual way out, which reports it.
"""

import atexit
import os
import sys

_status: list[int] = []


def _skip_teardown() -> None:
    if not _status:
        return  # main() raised (or exited itself): the usual exit says how
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return  # a broken or closed stream: the usual exit reports it
    os._exit(_status[0])


# Registered before anything else is imported: atexit runs its callbacks last registered first, so every
# callback the detector's imports register (logging's flush among them) runs before this one.
atexit.register(_skip_teardown)

from detector.cli import main  # noqa: E402 - after the registration above, on purpose

_status.append(main())
sys.exit(_status[0])
