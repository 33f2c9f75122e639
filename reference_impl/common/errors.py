"""Error reporting in the style of the classic C socket programs.

Every failing system call is reported by ``error_handling(msg)``: the message and a
newline on stderr, exit status 1.  A wrong command line is reported by ``usage()``:
``Usage : <argv0> <rest>`` on stdout (the classic programs print it with printf),
exit status 1.

Both raise ``SystemExit(1)`` (via ``sys.exit``) after flushing, so a caller that
runs ``main()`` in-process (the ``sockconf serve`` front, unit tests) can observe
the status, and ``finally`` blocks still run.  Callers close their descriptors
before calling these, so nothing is left for interpreter finalisation to close.
"""

from __future__ import annotations

import sys
from typing import NoReturn


def _flush_quietly(stream: object) -> None:
    flush = getattr(stream, "flush", None)
    if flush is None:
        return
    try:
        flush()
    except (OSError, ValueError):
        pass


def _write_quietly(stream: object, text: str) -> None:
    write = getattr(stream, "write", None)
    if write is None:
        return
    try:
        write(text)
    except (OSError, ValueError):
        pass
    _flush_quietly(stream)


def error_handling(msg: str) -> NoReturn:
    """Write ``msg`` and a newline to stderr, exit with status 1."""
    _flush_quietly(sys.stdout)
    _write_quietly(sys.stderr, msg + "\n")
    sys.exit(1)


def usage(argv0: str, rest: str) -> NoReturn:
    """Print ``Usage : <argv0> <rest>`` and a newline on stdout, exit with status 1."""
    _write_quietly(sys.stdout, f"Usage : {argv0} {rest}\n")
    sys.exit(1)


def warn(msg: str) -> None:
    """A diagnostic line on stderr that does not end the program."""
    _write_quietly(sys.stderr, msg + "\n")
