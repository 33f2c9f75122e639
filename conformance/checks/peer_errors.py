"""Telling the target's fault from the suite's when a peer's socket call fails.

A suite peer's ``OSError`` is the suite's own trouble (verdict ``error``) unless
the errno is one that only the other end can cause: the target refused, reset or
abandoned the connection, or stopped listening.  Those become a ``Violation``
saying what the target did (and whether it is still running); every other errno
(EMFILE, ENOBUFS, EBADF, ... of the suite) propagates unchanged.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from conformance.evidence import Violation
from conformance.harness.process import Proc

# What a peer sees when the target (not the suite) misbehaves.
TARGET_ERRNOS = {
    errno.ECONNREFUSED: "refused the connection (nothing listens any more)",
    errno.ECONNRESET: "reset the connection",
    errno.ECONNABORTED: "aborted the connection",
    errno.EPIPE: "closed the connection while we were still sending",
    errno.ENOENT: "removed its socket file",
    errno.ETIMEDOUT: "did not answer in time",
}


def server_state(proc: Proc | None) -> str:
    """Whether the target still runs, or how it ended (with its stderr tail)."""
    if proc is None:
        return ""
    if proc.poll() is None:
        return "the server is still running"
    tail = proc.stderr_tail(300).strip()
    return f"the server died ({proc.status()})" + (f", stderr {tail!r}" if tail else "")


def target_did(e: OSError) -> str | None:
    """What the target did, if this errno is one only the target can cause."""
    if isinstance(e, TimeoutError):
        return TARGET_ERRNOS[errno.ETIMEDOUT]
    return TARGET_ERRNOS.get(e.errno or 0)


@contextmanager
def blamed_on_target(doing: str, proc: Proc | None = None) -> Iterator[None]:
    """Run a peer's socket calls; an OSError that the target caused becomes a
    Violation: "<doing>: the target <what it did> (<errno>); <server state>"."""
    try:
        yield
    except OSError as e:
        what = target_did(e)
        if what is None:
            raise
        state = server_state(proc)
        raise Violation(f"{doing}: the target {what} ({e}){'; ' + state if state else ''}"
                        ) from None
