"""The echo protocol, sans-IO: no sockets here, only bytes and states.

Stream (TCP, AF_UNIX): whatever the client sends comes back, byte for byte, in
order (ECHO-1).  One connection is the classic C loop::

    while ((n = read(fd, buf, sizeof buf)) > 0)
        write_all(fd, buf, n);
    close(fd);

``EchoConnection`` is that loop as a state machine: it asks for a read only when
everything read before has been sent, so the server never holds more than one
buffer per connection, and a client that does not read its echo simply stops its
own connection (its writes block) without costing memory.  End of file from the
peer means "close once everything is sent" (ECHO-2); with the alternation above
nothing is pending at that point, so the close follows at once and sends FIN:
nothing unread is left in the receive buffer, so close() cannot turn into RST.
A failed read or write ends this connection only (LIFE-8).

Datagrams (UDP): each datagram goes back unchanged, as one datagram, to the
address it came from (ECHO-4), a 0-byte datagram included; there is no state,
so the driver does that itself.
"""

from __future__ import annotations

import enum

# One read's worth; also what the stream driver passes to recv().
BUFFER_SIZE = 65536
# recvfrom() size: the largest UDP payload (65507 over IPv4) fits with room to spare.
DATAGRAM_BUFFER_SIZE = 65535


class Action(enum.Enum):
    """What the driver must do next on the connection."""

    RECV = "recv"  # recv(); report with received(data) (b"" = EOF) or failed()
    SEND = "send"  # send pending_output(); report with sent(n) or failed()
    CLOSE = "close"  # close(); report with closed()
    DONE = "done"  # nothing left: the connection is closed


class State(enum.Enum):
    RECEIVING = "RECEIVING"
    SENDING = "SENDING"
    CLOSE = "CLOSE"
    CLOSED = "CLOSED"


class EchoConnection:
    """The server side of one echo connection, from accept() to close().

    RECEIVING --data--> SENDING --all sent--> RECEIVING
    RECEIVING --EOF--> CLOSE (nothing is pending then) --closed--> CLOSED
    RECEIVING/SENDING --failed (ECONNRESET, EPIPE, ...)--> CLOSE (``aborted``)

    ``received`` keeps a reference to the data it is given (no copy), so a driver
    may pass a view of its receive buffer: the buffer is not read into again
    before ``pending_output()`` is empty.  Counters ``echoed`` and ``received_bytes``
    are for tests and diagnostics.
    """

    __slots__ = ("state", "_out", "peer_eof", "aborted", "received_bytes", "echoed")

    def __init__(self) -> None:
        self.state = State.RECEIVING
        self._out: memoryview = memoryview(b"")
        self.peer_eof = False
        self.aborted = False
        self.received_bytes = 0
        self.echoed = 0

    def next_action(self) -> Action:
        return _ACTIONS[self.state]

    def _expect(self, state: State, event: str) -> None:
        if self.state is not state:
            raise RuntimeError(f"{event} in state {self.state.name}")

    # RECEIVING
    def received(self, data: bytes | bytearray | memoryview) -> None:
        """What one recv() returned; ``b""`` is the peer's EOF (FIN)."""
        self._expect(State.RECEIVING, "received()")
        if not data:
            self.peer_eof = True
            self.state = State.CLOSE
            return
        self._out = memoryview(data).cast("B")
        self.received_bytes += len(self._out)
        self.state = State.SENDING

    # SENDING
    def pending_output(self) -> memoryview:
        """The bytes still to send (empty outside SENDING)."""
        return self._out

    def sent(self, n: int) -> None:
        self._expect(State.SENDING, "sent()")
        if not 0 <= n <= len(self._out):
            raise ValueError(f"sent {n} bytes of {len(self._out)}")
        self._out = self._out[n:]
        self.echoed += n
        if not self._out:
            self._out = memoryview(b"")  # drop the reference to the driver's buffer
            self.state = State.RECEIVING

    # RECEIVING or SENDING
    def failed(self) -> None:
        """recv() or send() failed: give up on this connection (close it)."""
        if self.state not in (State.RECEIVING, State.SENDING):
            raise RuntimeError(f"failed() in state {self.state.name}")
        self._out = memoryview(b"")
        self.aborted = True
        self.state = State.CLOSE

    # CLOSE
    def closed(self) -> None:
        self._expect(State.CLOSE, "closed()")
        self.state = State.CLOSED


_ACTIONS = {
    State.RECEIVING: Action.RECV,
    State.SENDING: Action.SEND,
    State.CLOSE: Action.CLOSE,
    State.CLOSED: Action.DONE,
}
