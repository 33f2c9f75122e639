"""The reference client's socket options: parsed like the servers', all set on the
socket before connect() (so the SYN carries the receive buffer's window scale)."""

from __future__ import annotations

import socket
import struct

from reference_impl.common.options import apply_client_options
from reference_impl.hello import client


def test_client_parses_every_client_option() -> None:
    family, address, opts = client.parse_with_options(
        ["c", "127.0.0.1", "7", "--linger", "0", "--keepalive", "1", "2", "3", "--rcvbuf", "8192",
         "--sndbuf", "24000", "--dontroute", "--debug"])
    assert (family, address) == (socket.AF_INET, ("127.0.0.1", 7))
    assert (opts.linger, opts.keepalive, opts.rcvbuf, opts.sndbuf) == (0, (1, 2, 3), 8192, 24000)
    assert opts.dontroute and opts.debug and not opts.reuseaddr
    assert client.parse_command_line(["c", "127.0.0.1", "7"]) == (socket.AF_INET, ("127.0.0.1", 7))


def test_client_options_land_on_the_socket() -> None:
    _f, _a, opts = client.parse_with_options(
        ["c", "127.0.0.1", "7", "--linger", "0", "--keepalive", "1", "2", "3", "--rcvbuf", "8192",
         "--dontroute"])
    with socket.socket() as s:
        apply_client_options(s, opts)
        assert struct.unpack("ii", s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == (1, 0)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 1
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 2
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_DONTROUTE) == 1
        with socket.socket() as calibration:
            calibration.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == \
                calibration.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
