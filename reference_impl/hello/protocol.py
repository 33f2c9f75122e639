"""The hello protocol, sans-IO: no sockets here, only bytes and states.

Server: right after accept() it writes the 13 bytes ``Hello World!\\0`` (the C string
with its NUL), then shuts down its sending side (FIN), then reads and discards
whatever the client sends until end of file (or an error, or the drain deadline),
then closes.  Draining before close() matters: closing a socket with unread bytes
in its receive buffer makes the kernel send RST, which can destroy the greeting in
flight (HELLO-3, LIFE-4).

Client: reads until exactly 13 bytes have arrived, however they are segmented
(CLI-2); end of file before that, or more than 13 bytes, is an error reported as
``read() error!`` (ERR-3); then prints what C's
``printf("Message from server: %s \\n", message)`` would print.

The socket drivers (``server.py``, ``client.py``) feed these objects with what the
system calls returned and do what they say.
"""

from __future__ import annotations

import enum

GREETING = b"Hello World!\0"
GREETING_SIZE = len(GREETING)  # 13


class ProtocolError(Exception):
    """The peer did not follow the protocol (short read, extra bytes, ...)."""


# --------------------------------------------------------------------------- client


class GreetingReader:
    """Collects the server's greeting from the byte stream.

    ``feed(data)`` with each chunk received, ``feed_eof()`` when the stream ended.
    ``complete`` is True once exactly ``GREETING_SIZE`` bytes arrived; more than
    that, or EOF before that, raises ``ProtocolError``.  The content is not checked
    (the client prints whatever 13 bytes it received, as the C client does).
    """

    __slots__ = ("_buf", "_eof", "size")

    def __init__(self, size: int = GREETING_SIZE) -> None:
        self._buf = bytearray()
        self._eof = False
        self.size = size

    @property
    def complete(self) -> bool:
        return len(self._buf) == self.size

    @property
    def missing(self) -> int:
        """How many bytes are still expected (0 when complete)."""
        return max(self.size - len(self._buf), 0)

    @property
    def greeting(self) -> bytes:
        if not self.complete:
            raise ProtocolError(f"greeting incomplete: {len(self._buf)} of {self.size} bytes")
        return bytes(self._buf)

    def feed(self, data: bytes) -> bool:
        """Add received bytes; returns ``complete``.  ``b""`` means EOF."""
        if not data:
            self.feed_eof()
            return self.complete
        if self._eof:
            raise ProtocolError("data after end of file")
        self._buf += data
        if len(self._buf) > self.size:
            raise ProtocolError(f"{len(self._buf)} bytes received, the greeting has {self.size}")
        return self.complete

    def feed_eof(self) -> None:
        """The stream ended (FIN).  An error unless the greeting is complete."""
        self._eof = True
        if not self.complete:
            raise ProtocolError(
                f"connection closed after {len(self._buf)} of {self.size} greeting bytes"
            )


def format_message(greeting: bytes) -> str:
    """What ``printf("Message from server: %s \\n", greeting)`` prints.

    ``%s`` stops at the first NUL.  Bytes are mapped one to one to code points
    (latin-1), so encoding the result with latin-1 gives C's exact output bytes.
    """
    text = greeting.split(b"\0", 1)[0]
    return "Message from server: " + text.decode("latin-1") + " \n"


# --------------------------------------------------------------------------- server


class Action(enum.Enum):
    """What the server driver must do next on the accepted connection."""

    SEND = "send"  # send pending_output(); report with sent(n) or send_failed()
    SHUTDOWN_WR = "shutdown"  # shutdown(SHUT_WR); report with shutdown_done()/shutdown_failed()
    DRAIN = "drain"  # recv and discard; report received(data) / receive_failed() / drain_timeout()
    CLOSE = "close"  # close(); report with closed()
    DONE = "done"  # nothing left; the connection is closed


class ServerState(enum.Enum):
    SEND_GREETING = "SEND_GREETING"
    SHUTDOWN_WR = "SHUTDOWN_WR"
    DRAIN = "DRAIN"
    CLOSE = "CLOSE"
    CLOSED = "CLOSED"


class HelloServerConnection:
    """The server side of one hello connection, from accept() to close().

    SEND_GREETING --all 13 bytes sent--> SHUTDOWN_WR --shutdown done or failed--> DRAIN
    --EOF / read error / deadline--> CLOSE --closed--> CLOSED.
    A failed send goes straight to CLOSE with ``write_failed`` set (the driver then
    exits with ``write() error``).  Bytes received while draining are discarded
    (counted in ``discarded``).
    """

    def __init__(self) -> None:
        self.state = ServerState.SEND_GREETING
        self._out = GREETING
        self.write_failed = False
        self.discarded = 0
        self.peer_eof = False

    def next_action(self) -> Action:
        return {
            ServerState.SEND_GREETING: Action.SEND,
            ServerState.SHUTDOWN_WR: Action.SHUTDOWN_WR,
            ServerState.DRAIN: Action.DRAIN,
            ServerState.CLOSE: Action.CLOSE,
            ServerState.CLOSED: Action.DONE,
        }[self.state]

    def _expect(self, state: ServerState, event: str) -> None:
        if self.state is not state:
            raise RuntimeError(f"{event} in state {self.state.name}")

    # SEND_GREETING
    def pending_output(self) -> bytes:
        """The bytes still to send (empty outside SEND_GREETING)."""
        return self._out if self.state is ServerState.SEND_GREETING else b""

    def sent(self, n: int) -> None:
        self._expect(ServerState.SEND_GREETING, "sent()")
        if not 0 <= n <= len(self._out):
            raise ValueError(f"sent {n} bytes of {len(self._out)}")
        self._out = self._out[n:]
        if not self._out:
            self.state = ServerState.SHUTDOWN_WR

    def send_failed(self) -> None:
        self._expect(ServerState.SEND_GREETING, "send_failed()")
        self.write_failed = True
        self.state = ServerState.CLOSE

    # SHUTDOWN_WR
    def shutdown_done(self) -> None:
        self._expect(ServerState.SHUTDOWN_WR, "shutdown_done()")
        self.state = ServerState.DRAIN

    def shutdown_failed(self) -> None:
        """shutdown() failed.  Drain anyway: if the peer is gone the first read ends
        the drain at once; if it is not, close() will send the FIN, and unread bytes
        must not turn it into a RST."""
        self._expect(ServerState.SHUTDOWN_WR, "shutdown_failed()")
        self.state = ServerState.DRAIN

    # DRAIN
    def received(self, data: bytes) -> None:
        """Bytes read while draining (discarded); ``b""`` is the peer's EOF."""
        self._expect(ServerState.DRAIN, "received()")
        if data:
            self.discarded += len(data)
        else:
            self.peer_eof = True
            self.state = ServerState.CLOSE

    def receive_failed(self) -> None:
        self._expect(ServerState.DRAIN, "receive_failed()")
        self.state = ServerState.CLOSE

    def drain_timeout(self) -> None:
        self._expect(ServerState.DRAIN, "drain_timeout()")
        self.state = ServerState.CLOSE

    # CLOSE
    def closed(self) -> None:
        self._expect(ServerState.CLOSE, "closed()")
        self.state = ServerState.CLOSED
