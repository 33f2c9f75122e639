"""An echo exchange on a connection kept across many exchanges (fuzzing): one
thread, a non-blocking socket and poll(), the end judged by byte count.

`peers.stream` (a writer thread per exchange, a fresh connection, a quiet-period
nudge for the end) costs milliseconds per exchange; a fuzz check sends thousands.
Here an exchange that got back exactly as many bytes as it sent, each equal, is
complete at once: an echo owes nothing more, so there is nothing to wait for.
Anything else (a byte that differs, more bytes, FIN, RST, a stall) ends it as
`peers.stream` would, and the connection is not used again: what the server did
on it is the evidence of that exchange.
"""

from __future__ import annotations

import errno
import select
import socket
import time

from conformance.harness import peers
from conformance.harness.testbed import Server

_RECV = 1 << 18


class EchoConnection:
    """One connection to an echo server, reused by consecutive exchanges as long
    as each came back exactly; a new one after any other end, or for another
    (e.g. restarted) server."""

    def __init__(self, *, connect_timeout: float = 5.0) -> None:
        self.sock: socket.socket | None = None
        self.server: Server | None = None
        self.exchanges = 0          # exact exchanges done on the current connection
        self.connect_timeout = connect_timeout

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.server, self.exchanges = None, None, 0

    def echo(self, srv: Server, chunks: list[bytes], *, timeout: float, nudge: float | None,
             idle: float) -> tuple[peers.Received, int]:
        """Write `chunks` (in order; a chunk is one write, continued when the
        socket takes part of it) while reading the echo; returns what came back
        and how many exact exchanges this connection had carried before.  Ends
        "complete" when every byte is back, equal; otherwise as `peers.stream`
        (mismatch, more, fin, rst, stalled, timeout), and the connection is closed.
        Connecting can raise OSError (the caller knows whom to blame)."""
        if self.sock is None or self.server is not srv:
            # (a restarted server may listen on the same path: the server object,
            # not its address, says whether this connection is to it)
            self.close()
            self.sock = peers.connect(srv.transport, srv.port, srv.path,
                                      timeout=self.connect_timeout * srv.timeout_scale)
            self.server = srv
        before = self.exchanges
        expected = b"".join(chunks)
        got = _exchange(self.sock, chunks, expected, timeout=timeout, nudge=nudge, idle=idle)
        if got.end == "complete":
            self.exchanges += 1
        else:
            self.close()
        return got, before

    def __enter__(self) -> EchoConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _exchange(sock: socket.socket, chunks: list[bytes], expected: bytes, *, timeout: float,
              nudge: float | None, idle: float) -> peers.Received:
    got = peers.Received()
    if not expected:
        got.end = "complete"  # nothing sent, nothing owed
        return got
    t0 = time.monotonic()
    deadline = t0 + timeout
    sock.setblocking(False)
    # ACK at once, not after the delayed-ACK timer (up to 40 ms): a server whose
    # kernel holds back a small segment until its last one is acknowledged (Nagle)
    # would otherwise stall every exchange that ends on one.  A fresh connection
    # starts in this mode; a reused one leaves it, and the kernel clears the option
    # again as it goes: set before each wait for the echo.
    quickack = sock.family != socket.AF_UNIX
    poller = select.poll()
    todo = [c for c in chunks if c]
    k, off = 0, 0             # the next write: todo[k][off:]
    buf = bytearray()
    send_error: OSError | None = None
    last = t0                 # the last byte received, or the last write
    nudged = False
    writable = True           # a new or idle connection takes the first write at once
    while True:
        if writable and k < len(todo):
            # Write what the socket takes now (one write per chunk, its rest later).
            try:
                while k < len(todo):
                    chunk = todo[k]
                    n = sock.send(memoryview(chunk)[off:] if off else chunk)
                    last = time.monotonic()
                    off += n
                    if off < len(chunk):
                        break
                    k, off = k + 1, 0
            except BlockingIOError:
                pass
            except OSError as e:  # reset or closed by the server: read what it sent
                send_error = e
                k = len(todo)
                last = time.monotonic()
        pending = k < len(todo)
        now = time.monotonic()
        if now >= deadline:
            got.end = "timeout"
            break
        wait = deadline - now
        if not pending:
            quiet = now - last
            if nudge is not None and not nudged and quiet >= nudge:
                # Everything written, nothing for `nudge` s: shut down our side, so
                # a server that lost bytes ends at once (FIN) and one that still
                # owes bytes sends them.
                nudged = True
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                last = now
                continue
            if quiet >= idle:
                got.end = f"stalled ({idle:g} s without a byte after everything was written)"
                break
            wait = min(wait, (nudge if nudge is not None and not nudged else idle) - quiet)
        poller.register(sock, select.POLLIN | (select.POLLOUT if pending else 0))
        if quickack:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        events = poller.poll(max(1, int(wait * 1000) + 1))
        if not events:
            writable = False
            continue
        mask = events[0][1]
        writable = bool(mask & select.POLLOUT)
        if not mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
            continue
        had = len(buf)
        end = _read_available(sock, buf, expected, got, t0)
        if len(buf) > had:
            last = time.monotonic()
        if end is None and len(buf) == len(expected) and not nudged:
            end = "complete"  # every byte back, each equal: an echo owes nothing more
        if end is not None:
            got.end = end
            break
    got.data = bytes(buf)
    if send_error is not None and (got.end in ("timeout", "mismatch")
                                   or got.end.startswith("stalled")):
        got.end += f" (our send failed: {send_error})"
    return got


def _read_available(sock: socket.socket, buf: bytearray, expected: bytes,
                    got: peers.Received, t0: float) -> str | None:
    """Read what is queued into `buf`; the exchange's end if it ended (FIN, RST,
    a byte that differs, more bytes than were sent), else None."""
    while True:
        try:
            chunk = sock.recv(_RECV)
        except BlockingIOError:
            return None
        except ConnectionResetError:
            got.end_s = time.monotonic() - t0
            return "rst"
        except OSError as e:
            return f"error: {errno.errorcode.get(e.errno or 0, e)}"
        if not chunk:
            got.end_s = time.monotonic() - t0
            return "fin"
        if got.first_byte_s is None:
            got.first_byte_s = time.monotonic() - t0
        start = len(buf)
        buf += chunk
        n = min(len(buf), len(expected))
        if buf[start:n] != expected[start:n]:
            return "mismatch"
        if len(buf) > len(expected):
            return "more"
