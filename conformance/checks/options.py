"""What the OPT checks share: whether an option applies, and the target's sockets
of a connection of ours (listener, accepted socket) to read options from."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from conformance.evidence import NOT_APPLICABLE, Inconclusive, Violation
from conformance.harness import peers, sockopts
from conformance.harness.inspect import SockEntry
from conformance.harness.testbed import Server, Testbed


def declared(bed: Testbed, option: str) -> None:
    if not bed.server_program.supports(option):
        raise Inconclusive(f"the target does not declare option {option!r}", NOT_APPLICABLE)


def tcp_transport(bed: Testbed, option: str) -> str:
    for t in ("tcp4", "tcp6"):
        if t in bed.server_program.transports:
            return t
    raise Inconclusive(f"{option} is judged on a TCP connection; the target declares only "
                       f"{', '.join(bed.server_program.transports)}", NOT_APPLICABLE)


@contextlib.contextmanager
def connected(srv: Server, sock: socket.socket | None = None
              ) -> Iterator[tuple[socket.socket, SockEntry]]:
    """A connection of ours to `srv` (a new one, or `sock`), and the target's
    accepted socket of it (found in /proc); ours is closed on leaving, the
    target's is left to the target."""
    if sock is None:
        try:
            sock = peers.connect(srv.transport, srv.port, None, timeout=5.0)
        except OSError as e:
            raise Violation(f"could not connect to the server ({e}); it {srv.proc.status()}"
                            ) from None
    try:
        peer = sock.getsockname()[:2]
        entry = sockopts.connection_of(srv.pid, peer)
        if entry is None:
            raise Inconclusive(f"the server's socket of our connection from {peer} was not found "
                               f"in its descriptors within 2 s (server {srv.proc.status()})")
        yield sock, entry
    finally:
        sock.close()


def listener(srv: Server) -> SockEntry:
    assert srv.port is not None
    entry = sockopts.listener_of(srv.pid, srv.port)
    if entry is None:
        raise Inconclusive(f"the server's listening socket on port {srv.port} was not found "
                           f"(server {srv.proc.status()})")
    return entry
