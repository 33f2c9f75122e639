"""Controllable peers the checks drive: clients that poke a server, servers that
misbehave on purpose in front of a client.

Every peer works with real sockets and bounded waits; none ever blocks without a
timeout.  Peer servers run their one connection in a daemon thread and record what
happened (bytes received, who closed first, timestamps) for the check to judge.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

GREETING = b"Hello World!\0"

FAMILIES = {"tcp4": socket.AF_INET, "tcp6": socket.AF_INET6, "unix": socket.AF_UNIX}
LOOPBACK = {"tcp4": "127.0.0.1", "tcp6": "::1"}


def address(transport: str, port: int | None, path: str | None) -> tuple[str, int] | str:
    if transport == "unix":
        assert path is not None
        return path
    assert port is not None
    return (LOOPBACK[transport], port)


def set_linger_abort(sock: socket.socket) -> None:
    """SO_LINGER {1, 0}: close() then sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# ---------------------------------------------------------------------------
# Clients that poke a server
# ---------------------------------------------------------------------------

@dataclass
class Received:
    data: bytes = b""
    end: str = "timeout"        # "fin" | "rst" | "timeout" | "error: ..."
    first_byte_s: float | None = None  # seconds from connect to the first byte
    end_s: float | None = None         # seconds from connect to FIN/RST
    eof_sent_s: float | None = None    # seconds from connect to our own FIN (None: not sent)

    def describe(self) -> str:
        ours = " after our EOF" if self.eof_sent_s is not None else ""
        return f"{len(self.data)} byte(s) {self.data!r}, then {self.end}{ours}"


def connect(transport: str, port: int | None = None, path: str | None = None,
            timeout: float = 5.0) -> socket.socket:
    """A connected stream socket (reads then bounded by `timeout`).

    The connect itself is blocking, bounded by SO_SNDTIMEO: Python's own timeout
    makes connect() non-blocking and then reads SO_ERROR, which reports a reset
    that arrived *after* the handshake (a fast one-shot server that already sent
    its greeting and RST) as a failed connect, losing the data that did arrive."""
    sock = socket.socket(FAMILIES[transport], socket.SOCK_STREAM)
    try:
        whole = int(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", whole, int((timeout - whole) * 1e6)))
        try:
            sock.connect(address(transport, port, path))
        except BlockingIOError:
            raise TimeoutError(f"connect() did not complete within {timeout} s") from None
        sock.settimeout(timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def send_urgent(sock: socket.socket) -> None:
    """b"ab", then b"X" as urgent data (MSG_OOB), then b"cd", then SHUT_WR — each
    part given a moment to travel as its own segment (ECHO-5, OPT-OOBINLINE)."""
    sock.sendall(b"ab")
    time.sleep(0.05)
    sock.send(b"X", socket.MSG_OOB)
    time.sleep(0.05)
    sock.sendall(b"cd")
    sock.shutdown(socket.SHUT_WR)


def read_until_end(sock: socket.socket, timeout: float, *, limit: int = 1 << 20,
                   t0: float | None = None) -> Received:
    """Read until FIN, RST or `timeout` (total); never more than `limit` bytes."""
    t0 = time.monotonic() if t0 is None else t0
    deadline = time.monotonic() + timeout
    got = Received()
    chunks: list[bytes] = []
    total = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            got.end = "timeout"
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            got.end = "timeout"
            break
        except ConnectionResetError:
            got.end = "rst"
            got.end_s = time.monotonic() - t0
            break
        except OSError as e:
            got.end = f"error: {errno.errorcode.get(e.errno or 0, e)}"
            break
        if not chunk:
            got.end = "fin"
            got.end_s = time.monotonic() - t0
            break
        if got.first_byte_s is None:
            got.first_byte_s = time.monotonic() - t0
        chunks.append(chunk)
        total += len(chunk)
        if total >= limit:
            got.end = "limit"
            break
    got.data = b"".join(chunks)
    return got


GREETING_GRACE_S = 0.5  # fetch_greeting: how long the server may take to close by itself


def fetch_greeting(transport: str, port: int | None = None, path: str | None = None, *,
                   timeout: float = 5.0, send_before: bytes = b"",
                   send_after: bytes = b"") -> Received:
    """One hello exchange as the classic client does it: read until the 13-byte
    greeting arrived, then close our side — optionally sending data before the
    greeting (right after connect) and after it.

    A legal server may close first (FIN right after the greeting) or write and then
    wait for the client's EOF, as it does with the classic client, which closes
    after its read.  So once the greeting is in, the server gets GREETING_GRACE_S
    to end the connection by itself (so that one that closes first still does, and
    its TIME_WAIT stays on its side); then `send_after` is sent (unless the
    connection already ended), our side is shut down (the server sees EOF) and we
    keep reading until the server's FIN or RST (or `timeout`): whatever else it
    writes is still seen.  `eof_sent_s` says whether and when we closed first."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    sock = connect(transport, port, path, timeout)
    try:
        if send_before:
            try:
                sock.sendall(send_before)
            except OSError:
                pass  # the server already reset: what it sent before is still readable
        got = read_until_end(sock, timeout, limit=len(GREETING), t0=t0)
        if got.end == "limit":
            grace = min(GREETING_GRACE_S, max(0.0, deadline - time.monotonic()))
            more = read_until_end(sock, grace, t0=t0)
            got = _joined(got, more)
        if got.end in ("limit", "timeout") and time.monotonic() < deadline:
            if send_after:
                try:
                    sock.sendall(send_after)
                except OSError:
                    pass  # the server reset: read_until_end below reports it
            try:
                sock.shutdown(socket.SHUT_WR)
                got.eof_sent_s = time.monotonic() - t0
            except OSError:
                pass
            got = _joined(got, read_until_end(sock, max(0.0, deadline - time.monotonic()),
                                              t0=t0))
        elif send_after and got.end == "fin":
            # The server closed first: our data then meets a socket it may have
            # closed entirely (its kernel answers with RST; the capture judges).
            try:
                sock.sendall(send_after)
                time.sleep(0.05)
            except OSError:
                pass
        return got
    finally:
        sock.close()


def _joined(first: Received, then: Received) -> Received:
    """`first` (which stopped before the end) continued by `then`."""
    return Received(data=first.data + then.data, end=then.end,
                    first_byte_s=first.first_byte_s if first.first_byte_s is not None
                    else then.first_byte_s,
                    end_s=then.end_s, eof_sent_s=first.eof_sent_s)


def request(transport: str, port: int | None = None, path: str | None = None, *,
            payload: bytes, timeout: float = 5.0, limit: int = 1 << 20) -> Received:
    """One request/response exchange of a payload-carrying protocol: send
    `payload`, shut down our sending side (the server sees EOF), read until the
    server's FIN or RST (or `timeout`)."""
    t0 = time.monotonic()
    sock = connect(transport, port, path, timeout)
    try:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server already reset or closed: what it sent is still readable
        return read_until_end(sock, timeout, limit=limit, t0=t0)
    finally:
        sock.close()


def stream(sock: socket.socket, chunks: list[bytes], *, expect: int, timeout: float,
           half_close: bool = True, gap: float = 0.0, expected: bytes | None = None,
           nudge: float | None = None, idle: float | None = None) -> Received:
    """Write `chunks` (one send per chunk, optionally `gap` s apart) while this
    thread reads concurrently, as a real echo client must: a server that echoes
    while reading would otherwise block on a full buffer.

    half_close: shut down our sending side after the last chunk, then read to
    the end.  Otherwise stop once `expect` bytes arrived ("complete").
    expected: stop at the first byte that differs from it ("mismatch") instead
    of waiting for the rest.
    nudge: once everything is written and nothing arrived for `nudge` s, shut
    down our side after all: a server that lost bytes then ends at once (FIN)
    instead of leaving us waiting; one that still owes bytes sends them first.
    idle: once everything is written, give up after `idle` s without a byte
    ("stalled").  `timeout` bounds the whole exchange."""
    got = Received()
    box: list[BaseException] = []
    written = threading.Event()
    t0 = time.monotonic()

    def writer() -> None:
        try:
            for c in chunks:
                sock.sendall(c)
                if gap:
                    time.sleep(gap)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            box.append(e)
        finally:
            written.set()

    # One timeout for the socket, set before the writer starts and never changed:
    # it bounds the writer's sendall() (its whole duration) and each recv().
    sock.settimeout(timeout)
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    w = threading.Thread(target=writer, daemon=True, name="stream-writer")
    w.start()
    deadline = t0 + timeout
    buf = bytearray()
    last = time.monotonic()
    nudged = half_close
    while True:
        now = time.monotonic()
        if now >= deadline:
            got.end = "timeout"
            break
        if written.is_set():
            quiet = now - max(last, 0.0)
            if nudge is not None and not nudged and quiet >= nudge:
                nudged = True
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                last = now
                continue
            if idle is not None and quiet >= idle:
                got.end = f"stalled ({idle:g} s without a byte after everything was written)"
                break
        # Wait for data in short slices, so that the writer's end starts the
        # nudge/idle clocks at once.  poll(), not a socket timeout: the writer
        # thread's sendall() shares the socket, and a short timeout there would
        # make a send that waits on a busy server fail ("timed out").
        if not poller.poll(max(1, min(int((deadline - now) * 1000), 20))):
            continue
        try:
            chunk = sock.recv(1 << 18)
        except TimeoutError:
            continue
        except ConnectionResetError:
            got.end, got.end_s = "rst", time.monotonic() - t0
            break
        except OSError as e:
            got.end = f"error: {errno.errorcode.get(e.errno or 0, e)}"
            break
        if not chunk:
            got.end, got.end_s = "fin", time.monotonic() - t0
            break
        last = time.monotonic()
        if got.first_byte_s is None:
            got.first_byte_s = last - t0
        start = len(buf)
        buf += chunk
        if expected is not None and buf[start:] != expected[start:len(buf)]:
            got.end = "mismatch"
            break
        if len(buf) > expect or (len(buf) == expect and not nudged):
            got.end = "more" if len(buf) > expect else "complete"
            break
    if w.is_alive():
        # We stopped early (mismatch, more, stalled): unblock a writer stuck on a
        # full buffer instead of waiting for its send timeout.
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    w.join(max(0.0, deadline - time.monotonic()) + 0.5)
    got.data = bytes(buf)
    if box and got.end in ("timeout", "mismatch") or box and got.end.startswith("stalled"):
        got.end += f" (our send failed: {box[0]})"
    return got


# ---------------------------------------------------------------------------
# Servers that stand in front of a client under test
# ---------------------------------------------------------------------------

@dataclass
class PeerLog:
    accepted_at: float | None = None
    client_addr: object = None
    received: bytes = b""
    client_fin_at: float | None = None      # when recv() returned b"" (the client's FIN)
    client_rst: bool = False
    our_fin_at: float | None = None         # when we shut down our side
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


Behaviour = Callable[[socket.socket, PeerLog], None]


class PeerServer:
    """A listening socket we own, serving exactly one connection with `behaviour`
    in a daemon thread.  Use as a context manager; `log` has what happened."""

    def __init__(self, behaviour: Behaviour, transport: str = "tcp4", *, path: str | None = None,
                 accept_timeout: float = 10.0) -> None:
        self.transport = transport
        self.behaviour = behaviour
        self.log = PeerLog()
        self.sock = socket.socket(FAMILIES[transport], socket.SOCK_STREAM)
        if transport == "unix":
            assert path
            self.sock.bind(path)
            self.port: int | None = None
        else:
            self.sock.bind((LOOPBACK[transport], 0))
            self.port = self.sock.getsockname()[1]
        self.path = path
        self.sock.listen(5)
        self.sock.settimeout(accept_timeout)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, addr = self.sock.accept()
        except OSError as e:
            self.log.error = f"no client connected: {e}"
            self.log.done.set()
            return
        self.log.accepted_at = time.monotonic()
        self.log.client_addr = addr
        try:
            with conn:
                conn.settimeout(10.0)
                self.behaviour(conn, self.log)
        except Exception as e:  # recorded, judged by the check
            self.log.error = f"{type(e).__name__}: {e}"
        finally:
            self.log.done.set()

    def wait(self, timeout: float) -> bool:
        return self.log.done.wait(timeout)

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept(); shutdown() on a
        # listening socket does (accept fails with EINVAL), so no client == no wait.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        finally:
            self._thread.join(timeout=12)

    def __enter__(self) -> PeerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drain(conn: socket.socket, log: PeerLog, timeout: float) -> None:
    """Read what the client sends until its FIN/RST or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            return
        except ConnectionResetError:
            log.client_rst = True
            return
        if not chunk:
            log.client_fin_at = time.monotonic()
            return
        log.received += chunk


def greet(*, segments: int = 1, gap: float = 0.0, drain_timeout: float = 5.0) -> Behaviour:
    """A correct hello server: the greeting (in `segments` pieces, `gap` s apart,
    with TCP_NODELAY so each piece is its own segment), then FIN, then drain."""

    def run(conn: socket.socket, log: PeerLog) -> None:
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if segments <= 1:
            conn.sendall(GREETING)
        else:
            size = max(1, len(GREETING) // segments)
            for i in range(0, len(GREETING), size):
                conn.sendall(GREETING[i:i + size])
                if i + size < len(GREETING):
                    time.sleep(gap)
        conn.shutdown(socket.SHUT_WR)
        log.our_fin_at = time.monotonic()
        drain(conn, log, drain_timeout)

    return run


def cut_short(nbytes: int, *, reset: bool, after: float = 0.0) -> Behaviour:
    """Send only `nbytes` of the greeting, then FIN (or RST if `reset`), `after`
    seconds past the accept.

    The pause lets the client finish connecting as its runtime sees it: an
    event-loop client whose connect() returned EINPROGRESS learns the outcome
    from SO_ERROR, and an RST that arrives before it asks reads as a failed
    *connect* (ECONNRESET) — a correct report of what it saw, not ERR-3's case."""

    def run(conn: socket.socket, log: PeerLog) -> None:
        time.sleep(after)
        if nbytes:
            conn.sendall(GREETING[:nbytes])
            # A moment for the partial greeting to travel on its own, far shorter
            # than any read timeout a client might (wrongly) frame messages with.
            time.sleep(0.005)
        if reset:
            set_linger_abort(conn)
        else:
            conn.shutdown(socket.SHUT_WR)
            log.our_fin_at = time.monotonic()
            drain(conn, log, 5.0)

    return run
