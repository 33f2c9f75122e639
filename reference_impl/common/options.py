"""Server command-line options and how they map onto socket options.

The flags are the ones a target file declares (INTERFACE.md, ``[server.options]``)
plus the transport selectors:

    --linger SECONDS               SO_LINGER {l_onoff=1, l_linger=SECONDS}
    --keepalive IDLE INTERVAL COUNT
                                   SO_KEEPALIVE=1, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT
    --rcvbuf BYTES                 SO_RCVBUF (set before listen(), so the SYN-ACK shows it)
    --sndbuf BYTES                 SO_SNDBUF
    --backlog N                    listen() backlog (default 5)
    --oobinline                    SO_OOBINLINE=1
    --broadcast                    SO_BROADCAST=1
    --dontroute                    SO_DONTROUTE=1
    --debug                        SO_DEBUG=1 (needs CAP_NET_ADMIN)
    --no-reuseaddr                 do not set SO_REUSEADDR (it is on by default)
    --ipv6                         AF_INET6 on ``::`` with IPV6_V6ONLY=0 (dual stack)
    --unix PATH                    AF_UNIX stream socket at PATH (replaces the port)

Order on the listening socket: socket() -> SO_REUSEADDR -> IPV6_V6ONLY -> the
options above in the order listed -> bind() -> listen().  Linux copies the socket
options of a listening socket into the sockets accept() returns; the per-connection
ones (linger, keepalive) are nevertheless set again on each accepted connection
right after accept(), so the behaviour does not depend on that inheritance.

The hello client takes the options that apply to a connecting socket
(``CLIENT_OPTION_TABLE``: linger, keepalive, rcvbuf, sndbuf, dontroute, debug) and
sets them all between socket() and connect(), so that the SYN already carries the
receive buffer's window scale.

The apply functions raise ``OSError``; the caller decides what a failure means
(``setsockopt() error`` and exit for the hello server).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Mapping, Sequence

from .args import int_in_range, parse_path

_INT_MAX = 2**31 - 1

# The option table understood by ``args.scan``.
SERVER_OPTION_TABLE: Mapping[str, Sequence[tuple[str, Callable[[str], object]]]] = {
    "--linger": (("SECONDS", int_in_range(0, 65535, "linger seconds")),),
    "--keepalive": (
        ("IDLE", int_in_range(1, 32767, "keepalive idle seconds")),
        ("INTERVAL", int_in_range(1, 32767, "keepalive interval seconds")),
        ("COUNT", int_in_range(1, 127, "keepalive probe count")),
    ),
    "--rcvbuf": (("BYTES", int_in_range(1, _INT_MAX, "receive buffer size")),),
    "--sndbuf": (("BYTES", int_in_range(1, _INT_MAX, "send buffer size")),),
    "--backlog": (("N", int_in_range(0, 65535, "backlog")),),
    "--oobinline": (),
    "--broadcast": (),
    "--dontroute": (),
    "--debug": (),
    "--no-reuseaddr": (),
    "--ipv6": (),
    "--unix": (("PATH", parse_path),),
}

# The options of a connecting socket (the hello client's): same flags as the server's.
CLIENT_OPTION_TABLE: Mapping[str, Sequence[tuple[str, Callable[[str], object]]]] = {
    name: SERVER_OPTION_TABLE[name]
    for name in ("--linger", "--keepalive", "--rcvbuf", "--sndbuf", "--dontroute", "--debug")
}

DEFAULT_BACKLOG = 5


class ServerOptions:
    """The parsed server options (plain attributes; no dataclasses: start-up time)."""

    __slots__ = (
        "linger",
        "keepalive",
        "rcvbuf",
        "sndbuf",
        "backlog",
        "oobinline",
        "broadcast",
        "dontroute",
        "debug",
        "reuseaddr",
        "ipv6",
        "unix",
    )

    def __init__(self) -> None:
        self.linger: int | None = None
        self.keepalive: tuple[int, int, int] | None = None
        self.rcvbuf: int | None = None
        self.sndbuf: int | None = None
        self.backlog: int = DEFAULT_BACKLOG
        self.oobinline = False
        self.broadcast = False
        self.dontroute = False
        self.debug = False
        self.reuseaddr = True
        self.ipv6 = False
        self.unix: str | None = None

    @classmethod
    def from_scanned(cls, scanned: Mapping[str, tuple[object, ...]]) -> ServerOptions:
        """Build from the option dict ``args.scan(..., SERVER_OPTION_TABLE)`` returns."""
        opts = cls()
        for name, values in scanned.items():
            if name == "--linger":
                opts.linger = _int(values[0])
            elif name == "--keepalive":
                opts.keepalive = (_int(values[0]), _int(values[1]), _int(values[2]))
            elif name == "--rcvbuf":
                opts.rcvbuf = _int(values[0])
            elif name == "--sndbuf":
                opts.sndbuf = _int(values[0])
            elif name == "--backlog":
                opts.backlog = _int(values[0])
            elif name == "--oobinline":
                opts.oobinline = True
            elif name == "--broadcast":
                opts.broadcast = True
            elif name == "--dontroute":
                opts.dontroute = True
            elif name == "--debug":
                opts.debug = True
            elif name == "--no-reuseaddr":
                opts.reuseaddr = False
            elif name == "--ipv6":
                opts.ipv6 = True
            elif name == "--unix":
                value = values[0]
                assert isinstance(value, str)
                opts.unix = value
            else:  # pragma: no cover - the table and this switch go together
                raise KeyError(name)
        return opts

    @property
    def family(self) -> int:
        if self.unix is not None:
            return socket.AF_UNIX
        return socket.AF_INET6 if self.ipv6 else socket.AF_INET

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"ServerOptions({fields})"


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def linger_struct(seconds: int) -> bytes:
    """struct linger {int l_onoff; int l_linger;} with l_onoff=1."""
    return struct.pack("ii", 1, seconds)


def listener_setsockopts(opts: ServerOptions) -> list[tuple[int, int, int | bytes]]:
    """The (level, optname, value) triples for the listening socket, in order."""
    calls: list[tuple[int, int, int | bytes]] = []
    if opts.reuseaddr:
        calls.append((socket.SOL_SOCKET, socket.SO_REUSEADDR, 1))
    if opts.ipv6 and opts.unix is None:
        calls.append((socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0))
    calls.extend(connection_setsockopts(opts))
    if opts.rcvbuf is not None:
        calls.append((socket.SOL_SOCKET, socket.SO_RCVBUF, opts.rcvbuf))
    if opts.sndbuf is not None:
        calls.append((socket.SOL_SOCKET, socket.SO_SNDBUF, opts.sndbuf))
    if opts.oobinline:
        calls.append((socket.SOL_SOCKET, socket.SO_OOBINLINE, 1))
    if opts.broadcast:
        calls.append((socket.SOL_SOCKET, socket.SO_BROADCAST, 1))
    if opts.dontroute:
        calls.append((socket.SOL_SOCKET, socket.SO_DONTROUTE, 1))
    if opts.debug:
        calls.append((socket.SOL_SOCKET, socket.SO_DEBUG, 1))
    return calls


def connection_setsockopts(opts: ServerOptions) -> list[tuple[int, int, int | bytes]]:
    """The (level, optname, value) triples for each accepted connection, in order."""
    calls: list[tuple[int, int, int | bytes]] = []
    if opts.linger is not None:
        calls.append((socket.SOL_SOCKET, socket.SO_LINGER, linger_struct(opts.linger)))
    if opts.keepalive is not None:
        idle, interval, count = opts.keepalive
        calls.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        calls.append((socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle))
        calls.append((socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval))
        calls.append((socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count))
    return calls


def client_setsockopts(opts: ServerOptions) -> list[tuple[int, int, int | bytes]]:
    """The (level, optname, value) triples for a client socket before connect()."""
    calls = connection_setsockopts(opts)
    if opts.rcvbuf is not None:
        calls.append((socket.SOL_SOCKET, socket.SO_RCVBUF, opts.rcvbuf))
    if opts.sndbuf is not None:
        calls.append((socket.SOL_SOCKET, socket.SO_SNDBUF, opts.sndbuf))
    if opts.dontroute:
        calls.append((socket.SOL_SOCKET, socket.SO_DONTROUTE, 1))
    if opts.debug:
        calls.append((socket.SOL_SOCKET, socket.SO_DEBUG, 1))
    return calls


def _apply(sock: socket.socket, calls: list[tuple[int, int, int | bytes]]) -> None:
    for level, optname, value in calls:
        sock.setsockopt(level, optname, value)


def apply_listener_options(sock: socket.socket, opts: ServerOptions) -> None:
    """All setsockopt() calls between socket() and bind(); raises OSError."""
    _apply(sock, listener_setsockopts(opts))


def apply_connection_options(conn: socket.socket, opts: ServerOptions) -> None:
    """The per-connection setsockopt() calls right after accept(); raises OSError."""
    _apply(conn, connection_setsockopts(opts))


def apply_client_options(sock: socket.socket, opts: ServerOptions) -> None:
    """All setsockopt() calls between socket() and connect(); raises OSError."""
    _apply(sock, client_setsockopts(opts))
