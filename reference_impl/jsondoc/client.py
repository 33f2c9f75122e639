"""Reference JSONDOC client for humans: ``client.py [--unix PATH] HOST PORT [REQUEST]``.

Sends REQUEST (one JSON line; more if it contains newlines), or else every line
read from stdin, and prints each response line on stdout as it arrives, in order.
Blank lines are not sent (the server would not answer them).  It exits 0 once
every request sent has been answered.

    socket -> connect -> (send request lines | recv response lines)*
    -> shutdown(SHUT_WR) when the input ends -> close -> exit 0

Sending and receiving are interleaved in one poll() loop, so a long stdin stream
never deadlocks against a server whose answers fill the socket buffers, and each
response is printed as soon as its line is complete.  The lines are sent as they
are (no JSON check here: the server judges them).

HOST is an IPv4/IPv6 literal or ``localhost`` (no resolver); with ``--unix PATH``
there is no HOST/PORT.  Errors are one line on stderr, exit 1:

    connect() error!: connection refused by HOST:PORT
    connect() error!: <reason> (HOST:PORT)
    read() error!: connection reset by server
    read() error!: connection closed by server after N of M responses
    read() error!: <reason>
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys

from reference_impl.common.args import ArgError, parse_host, parse_path, parse_port, scan
from reference_impl.common.errors import error_handling, usage

PROG = "sockconf-jsondoc-client"
CLIENT_OPTION_TABLE = {"--unix": (("PATH", parse_path),)}
RECV_SIZE = 65536
# Stop reading stdin while this much is still unsent (the socket is slower).
_MAX_PENDING = 4 << 20
_BLANK = b" \t\r"

Address = str | tuple[str, int] | tuple[str, int, int, int]


class ClientError(Exception):
    """The one-line message the client exits with (status 1)."""


def parse_command_line(argv: list[str]) -> tuple[int, Address, str, bytes | None]:
    """(family, address, shown name, request or None for stdin), or exit."""
    argv0 = argv[0] if argv else PROG
    try:
        positionals, scanned = scan(argv[1:], CLIENT_OPTION_TABLE)
    except ArgError as exc:
        error_handling(f"{argv0}: {exc}")
    unix = scanned.get("--unix")
    needed = 0 if unix is not None else 2
    if len(positionals) not in (needed, needed + 1):
        usage(argv0, "<IP> <port> [REQUEST]" if unix is None else "--unix <path> [REQUEST]")
    request = positionals[needed].encode() if len(positionals) > needed else None
    if unix is not None:
        path = unix[0]
        assert isinstance(path, str)
        return socket.AF_UNIX, path, path, request
    host_text, port_text = positionals[0], positionals[1]
    family: int
    try:
        if host_text == "localhost":
            family, host = socket.AF_INET, "127.0.0.1"
        else:
            family, host = parse_host(host_text)
        port = parse_port(port_text)
    except ArgError as exc:
        error_handling(f"{argv0}: {exc}")
    shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
    if family == socket.AF_INET6:
        return family, (host, port, 0, 0), shown, request
    return family, (host, port), shown, request


def request_lines(data: bytes) -> list[bytes]:
    """The non-blank lines of ``data``, each with its ``\\n``."""
    return [line + b"\n" for line in data.split(b"\n") if line.strip(_BLANK)]


class ResponseReader:
    """Splits the server's byte stream into response lines and counts them."""

    def __init__(self) -> None:
        self._partial = b""
        self.count = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Complete lines (each with its ``\\n``) that ``data`` finished."""
        if b"\n" not in data:
            self._partial += data
            return []
        parts = (self._partial + data).split(b"\n")
        self._partial = parts.pop()
        self.count += len(parts)
        return [p + b"\n" for p in parts]


def _connect(family: int, address: Address, shown: str) -> socket.socket:
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ClientError(f"socket() error: {exc.strerror or exc}") from None
    try:
        sock.connect(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.ECONNREFUSED:
            raise ClientError(f"connect() error!: connection refused by {shown}") from None
        reason = (exc.strerror or str(exc)).lower()
        raise ClientError(f"connect() error!: {reason} ({shown})") from None
    return sock


def _write_out(lines: list[bytes]) -> None:
    try:
        sys.stdout.buffer.write(b"".join(lines))
        sys.stdout.buffer.flush()
    except (OSError, ValueError):
        raise ClientError("write() error: cannot write to stdout") from None


def exchange(sock: socket.socket, request: bytes | None, stdin_fd: int = 0) -> int:
    """Send the requests, print the responses; returns how many were answered.

    Raises ClientError when the server ends the connection early.
    """
    # bytearray: deleting what was sent from its front is cheap
    pending = bytearray(b"".join(request_lines(request))) if request is not None else bytearray()
    sent = len(request_lines(request)) if request is not None else 0
    stdin_open = request is None
    stdin_partial = b""
    write_open = True
    reader = ResponseReader()
    poller = select.poll()
    sock_fd = sock.fileno()

    while True:
        if not stdin_open and not pending and write_open:
            try:  # all requests sent: the server may close once it answered them
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            write_open = False
        if not stdin_open and not pending and reader.count >= sent:
            return reader.count
        sock_events = select.POLLIN | (select.POLLOUT if pending else 0)
        poller.register(sock_fd, sock_events)
        read_stdin = stdin_open and len(pending) < _MAX_PENDING
        if read_stdin:
            poller.register(stdin_fd, select.POLLIN)
        else:
            try:
                poller.unregister(stdin_fd)
            except KeyError:
                pass
        for fd, events in poller.poll():
            if fd == stdin_fd:
                try:
                    chunk = os.read(stdin_fd, RECV_SIZE)
                except OSError:  # stdin closed or unreadable: no more requests
                    chunk = b""
                if not chunk:
                    stdin_open = False
                    chunk = b"\n"  # the last line may lack its newline
                head, _nl, stdin_partial = (stdin_partial + chunk).rpartition(b"\n")
                lines = request_lines(head)
                sent += len(lines)
                pending += b"".join(lines)
            elif events & (select.POLLIN | select.POLLERR | select.POLLHUP):
                try:
                    data = sock.recv(RECV_SIZE)
                except ConnectionResetError:
                    raise ClientError("read() error!: connection reset by server") from None
                except OSError as exc:
                    raise ClientError(f"read() error!: {exc.strerror or exc}") from None
                if not data:
                    if stdin_open or pending or reader.count < sent:
                        raise ClientError(
                            "read() error!: connection closed by server after "
                            f"{reader.count} of {sent} responses"
                        )
                    return reader.count
                lines = reader.feed(data)
                if lines:
                    _write_out(lines)
            elif events & select.POLLOUT:
                try:
                    n = sock.send(pending, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                except BlockingIOError:
                    continue
                except OSError:
                    # The server is gone (reset, or closed after too_large): what it
                    # sent is still readable; the read side reports the outcome.
                    pending.clear()
                    stdin_open = False
                    continue
                del pending[:n]


def main(argv: list[str] | None = None) -> int:
    """``PROG [--unix PATH] HOST PORT [REQUEST]``; argv[0] names the program."""
    if argv is None:
        argv = sys.argv
    family, address, shown, request = parse_command_line(list(argv))
    try:
        sock = _connect(family, address, shown)
    except ClientError as exc:
        error_handling(str(exc))
    try:
        exchange(sock, request)
    except ClientError as exc:
        sock.close()
        error_handling(str(exc))
    except KeyboardInterrupt:  # Ctrl-C in an interactive session: no traceback
        sock.close()
        return 130
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
