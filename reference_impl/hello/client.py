"""Reference hello client: ``sockconf-hello-client [options] IP PORT`` (or ``--unix PATH``).

    socket -> [setsockopt(options...)] -> connect -> recv* (until the 13-byte greeting is complete) -> print
    -> close -> exit 0

It never binds and never sends a byte.  Arguments are checked before any socket
exists (ARGS-2, ARGS-4).  A failed connect() is ``connect() error!``; end of file,
a reset or an error before the whole greeting, or more than 13 bytes, is
``read() error!`` and nothing is printed on stdout (ERR-3).  The socket is closed
right after the greeting is read; it does not wait for the server's FIN.
The options (``--linger S --keepalive IDLE INTVL CNT --rcvbuf B --sndbuf B
--dontroute --debug``, as ``common.options``) are all set before connect().
"""

from __future__ import annotations

import socket
import sys

from reference_impl.common.args import ArgError, parse_host, parse_path, parse_port, scan
from reference_impl.common.errors import error_handling, usage
from reference_impl.common.options import (
    CLIENT_OPTION_TABLE as SOCKET_OPTIONS,
)
from reference_impl.common.options import (
    ServerOptions,
    apply_client_options,
)
from reference_impl.hello.protocol import GreetingReader, ProtocolError, format_message

PROG = "sockconf-hello-client"
CLIENT_OPTION_TABLE = {"--unix": (("PATH", parse_path),), **SOCKET_OPTIONS}
_RECV_SIZE = 4096  # more than 13, so a server sending extra bytes at once is noticed
_CONNECT_ATTEMPTS = 5


Address = str | tuple[str, int] | tuple[str, int, int, int]


def parse_command_line(argv: list[str]) -> tuple[int, Address]:
    """(family, address) from argv, or exit: usage on stdout / bad value on stderr."""
    family, address, _opts = parse_with_options(argv)
    return family, address


def parse_with_options(argv: list[str]) -> tuple[int, Address, ServerOptions]:
    """(family, address, socket options) from argv, or exit as parse_command_line."""
    argv0 = argv[0] if argv else PROG
    try:
        positionals, scanned = scan(argv[1:], CLIENT_OPTION_TABLE)
    except ArgError as exc:
        error_handling(f"{argv0}: {exc}")
    unix = scanned.pop("--unix", None)
    opts = ServerOptions.from_scanned(scanned)
    opts.reuseaddr = False
    if len(positionals) != (0 if unix is not None else 2):
        usage(argv0, "<IP> <port>")
    if unix is not None:
        path = unix[0]
        assert isinstance(path, str)
        return socket.AF_UNIX, path, opts
    try:
        family, host = parse_host(positionals[0])
        port = parse_port(positionals[1])
    except ArgError as exc:
        error_handling(f"{argv0}: {exc}")
    if family == socket.AF_INET6:
        return family, (host, port, 0, 0), opts
    return family, (host, port), opts


def _connect(sock: socket.socket, address: Address) -> None:
    """connect(), robust against an interrupted connect() (ERR-8).

    When connect() fails with EINTR, CPython waits for the connection with poll()
    and reads SO_ERROR, because the kernel keeps connecting.  If the interrupted
    call never reached the kernel (a fault injected with ``strace --inject``), that
    wait wrongly looks like success on a socket that is not connected at all.  So
    after connect() returns, getpeername() checks; ENOTCONN with no pending socket
    error (SO_ERROR 0) means "never connected" and connect() is called again.  A
    pending error instead means the peer already reset the connection: that is the
    read step's business (``read() error!``), so no retry then.
    """
    for _ in range(_CONNECT_ATTEMPTS):
        sock.connect(address)
        if sock.family == socket.AF_UNIX:
            return
        try:
            sock.getpeername()
        except OSError:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                continue
        return
    raise OSError("connect() did not connect")


def main(argv: list[str] | None = None) -> int:
    """``PROG <IP> <port>`` | ``PROG --unix PATH``; argv[0] names the program."""
    if argv is None:
        argv = sys.argv
    family, address, opts = parse_with_options(list(argv))

    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        error_handling("socket() error")
    try:
        apply_client_options(sock, opts)
    except OSError:
        sock.close()
        error_handling("setsockopt() error")
    try:
        _connect(sock, address)
    except OSError:
        sock.close()
        error_handling("connect() error!")

    reader = GreetingReader()
    try:
        while not reader.complete:
            reader.feed(sock.recv(_RECV_SIZE))
    except (OSError, ProtocolError):
        sock.close()
        error_handling("read() error!")

    message = format_message(reader.greeting).encode("latin-1")
    try:
        sys.stdout.buffer.write(message)
        sys.stdout.buffer.flush()
    except (OSError, ValueError):
        sock.close()
        error_handling("write() error")
    sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
