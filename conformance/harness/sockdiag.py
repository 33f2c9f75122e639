"""sock_diag (NETLINK_SOCK_DIAG): the kernel's own report on inet sockets.

The one sock_diag client of the suite, a raw netlink socket: readiness polls it
(a LISTEN-only dump walks only the kernel's listening hash: ~35 us a query here,
where pyroute2's DiagSocket took ~1.3 ms and reading /proc/PID/net/tcp walks the
whole established hash), and the full reports (inspect.listen_diag, tcp_diag) read
the same messages with their attributes: v6only, struct tcp_info, SK_MEMINFO.

The socket belongs to the network namespace it was created in: create it there
(``inspect.run_in_netns(pid, SockDiag)``).  Standard library only.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALL_STATES", "DiagMessage", "DiagUnavailable", "LISTEN_ONLY", "SockDiag",
           "TCP_LISTEN", "TCP_STATES", "UnixListenDiag"]

TCP_STATES = {
    0x01: "ESTABLISHED",
    0x02: "SYN_SENT",
    0x03: "SYN_RECV",
    0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2",
    0x06: "TIME_WAIT",
    0x07: "CLOSE",
    0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
    0x0C: "NEW_SYN_RECV",
}
TCP_LISTEN = 0x0A
LISTEN_ONLY = 1 << TCP_LISTEN
ALL_STATES = (1 << 12) - 1  # ESTABLISHED..CLOSING (not NEW_SYN_RECV minisockets)
# inet_diag idiag_timer values
TIMERS = {0: "off", 1: "retransmit", 2: "keepalive", 3: "time_wait", 4: "probe"}
SK_MEMINFO_FIELDS = ("rmem_alloc", "rcvbuf", "wmem_alloc", "sndbuf", "fwd_alloc",
                     "wmem_queued", "optmem", "backlog", "drops")

_NETLINK_SOCK_DIAG = 4
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_HDR = struct.Struct("=IHHII")
_MSG = struct.Struct("=BBBB HH 16s 16s I 8s IIIII")  # struct inet_diag_msg (72 bytes)
_UNIX_MSG = struct.Struct("=BBBBI8s")  # struct unix_diag_msg (16 bytes)
INET_DIAG_INFO, INET_DIAG_SKMEMINFO, INET_DIAG_SKV6ONLY = 2, 7, 11
UNIX_DIAG_NAME, UNIX_DIAG_RQLEN = 0, 4
UDIAG_SHOW_NAME, UDIAG_SHOW_RQLEN = 0x01, 0x10
EXT_INFO_AND_MEMINFO = (1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_SKMEMINFO - 1))

# struct tcp_info (linux/tcp.h), in order; a shorter one from an older kernel is
# read as far as it goes.  Bytes 6 and 7 are bit fields, decoded by hand.
_TCP_INFO_U8 = ("tcpi_state", "tcpi_ca_state", "tcpi_retransmits", "tcpi_probes",
                "tcpi_backoff", "tcpi_options")
_TCP_INFO_REST: tuple[tuple[str, str], ...] = tuple(
    [(n, "I") for n in (
        "tcpi_rto", "tcpi_ato", "tcpi_snd_mss", "tcpi_rcv_mss", "tcpi_unacked", "tcpi_sacked",
        "tcpi_lost", "tcpi_retrans", "tcpi_fackets", "tcpi_last_data_sent",
        "tcpi_last_ack_sent", "tcpi_last_data_recv", "tcpi_last_ack_recv", "tcpi_pmtu",
        "tcpi_rcv_ssthresh", "tcpi_rtt", "tcpi_rttvar", "tcpi_snd_ssthresh", "tcpi_snd_cwnd",
        "tcpi_advmss", "tcpi_reordering", "tcpi_rcv_rtt", "tcpi_rcv_space",
        "tcpi_total_retrans")]
    + [(n, "Q") for n in ("tcpi_pacing_rate", "tcpi_max_pacing_rate", "tcpi_bytes_acked",
                          "tcpi_bytes_received")]
    + [(n, "I") for n in ("tcpi_segs_out", "tcpi_segs_in", "tcpi_notsent_bytes",
                          "tcpi_min_rtt", "tcpi_data_segs_in", "tcpi_data_segs_out")]
    + [(n, "Q") for n in ("tcpi_delivery_rate", "tcpi_busy_time", "tcpi_rwnd_limited",
                          "tcpi_sndbuf_limited")]
    + [(n, "I") for n in ("tcpi_delivered", "tcpi_delivered_ce")]
    + [(n, "Q") for n in ("tcpi_bytes_sent", "tcpi_bytes_retrans")]
    + [(n, "I") for n in ("tcpi_dsack_dups", "tcpi_reord_seen", "tcpi_rcv_ooopack",
                          "tcpi_snd_wnd")])


class DiagUnavailable(Exception):
    """sock_diag did not answer (module missing, not permitted, bad reply)."""


@dataclass(frozen=True)
class DiagMessage:
    """One socket as inet_diag reports it."""
    family: int
    state: int
    timer: int
    retransmits: int
    local: tuple[str, int]
    remote: tuple[str, int]
    cookie: int
    expires_ms: int
    rqueue: int         # LISTEN: the accept-queue length
    wqueue: int         # LISTEN: sk_max_ack_backlog, the backlog as applied
    uid: int
    inode: int          # 0 for TIME_WAIT and orphans
    v6only: bool | None = None
    tcp_info: dict[str, int] | None = None
    skmem: dict[str, int] | None = field(default=None)

    @property
    def kind(self) -> str:
        return "tcp6" if self.family == socket.AF_INET6 else "tcp4"

    @property
    def state_name(self) -> str:
        return TCP_STATES.get(self.state, str(self.state))


@dataclass(frozen=True)
class UnixListenDiag:
    """A listening AF_UNIX socket as unix_diag reports it."""
    path: str           # "@name" for an abstract one
    inode: int
    queued: int         # connections waiting in the accept queue
    backlog: int        # listen()'s backlog as applied


def _attrs(data: bytes, a: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while a + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, a)
        if alen < 4:
            break
        out[atype & 0x3FFF] = data[a + 4:a + alen]
        a += (alen + 3) & ~3
    return out


def _tcp_info(raw: bytes) -> dict[str, int]:
    out: dict[str, int] = dict(zip(_TCP_INFO_U8, raw[:6], strict=False))
    if len(raw) >= 8:
        out["tcpi_snd_wscale"] = raw[6] & 0x0F
        out["tcpi_rcv_wscale"] = raw[6] >> 4
        out["tcpi_delivery_rate_app_limited"] = raw[7] & 0x01
    off = 8
    for name, fmt in _TCP_INFO_REST:
        size = struct.calcsize(fmt)
        if off + size > len(raw):
            break
        out[name] = struct.unpack_from("=" + fmt, raw, off)[0]
        off += size
    return out


def _skmem(raw: bytes) -> dict[str, int]:
    vals = struct.unpack_from(f"={len(raw) // 4}I", raw)
    return dict(zip(SK_MEMINFO_FIELDS, vals, strict=False))


def _decode(data: bytes, body: int, end: int) -> DiagMessage:
    (family, state, timer, retrans, sport, dport, src, dst, _if, cookie, expires, rqueue,
     wqueue, uid, inode) = _MSG.unpack_from(data, body)
    sport, dport = socket.ntohs(sport), socket.ntohs(dport)
    n = 16 if family == socket.AF_INET6 else 4
    attrs = _attrs(data, body + _MSG.size, end)
    v6 = attrs.get(INET_DIAG_SKV6ONLY)
    info = attrs.get(INET_DIAG_INFO)
    mem = attrs.get(INET_DIAG_SKMEMINFO)
    return DiagMessage(
        family=family, state=state, timer=timer, retransmits=retrans,
        local=(socket.inet_ntop(family, src[:n]), sport),
        remote=(socket.inet_ntop(family, dst[:n]), dport),
        cookie=int.from_bytes(cookie, "little"), expires_ms=expires, rqueue=rqueue,
        wqueue=wqueue, uid=uid, inode=inode,
        v6only=None if not v6 else bool(v6[0]),
        tcp_info=None if info is None else _tcp_info(info),
        skmem=None if mem is None else _skmem(mem))


class SockDiag:
    """A NETLINK_SOCK_DIAG socket in the network namespace it is created in;
    asks for TCP sockets by family and state set.  Use as a context manager."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  _NETLINK_SOCK_DIAG)
        self.sock.settimeout(1.0)
        self.seq = 0
        self.broken = False  # set by callers when a query failed: they fall back to /proc

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tcp(self, family: int, states: int = ALL_STATES, ext: int = 0) -> list[DiagMessage]:
        """Every TCP socket of `family` in one of `states` (a bit set of TCP
        states: LISTEN_ONLY asks the kernel for its listening hash only);
        `ext`: the attributes wanted (EXT_INFO_AND_MEMINFO).  DiagUnavailable
        or OSError when the kernel does not answer."""
        req = (struct.pack("=BBBBI", family, socket.IPPROTO_TCP, ext, 0, states)
               + bytes(48))  # struct inet_diag_sockid: not used by a dump
        return [_decode(data, body, end) for data, body, end in self._dump(req, _MSG.size)]

    def unix_listeners(self) -> list[UnixListenDiag]:
        """Every listening AF_UNIX socket of the namespace, with its path and queue."""
        req = struct.pack("=BBHIII8s", socket.AF_UNIX, 0, 0, LISTEN_ONLY, 0,
                          UDIAG_SHOW_NAME | UDIAG_SHOW_RQLEN, bytes(8))
        out = []
        for data, body, end in self._dump(req, _UNIX_MSG.size):
            inode = _UNIX_MSG.unpack_from(data, body)[4]
            attrs = _attrs(data, body + _UNIX_MSG.size, end)
            name, rq = attrs.get(UNIX_DIAG_NAME), attrs.get(UNIX_DIAG_RQLEN)
            if name is None or rq is None or len(rq) < 8:
                continue
            # A path name comes with the NUL (and padding) the program bound it with.
            path = ("@" + name[1:].decode(errors="surrogateescape") if name.startswith(b"\0")
                    else name.split(b"\0", 1)[0].decode(errors="surrogateescape"))
            queued, backlog = struct.unpack_from("=II", rq)
            out.append(UnixListenDiag(path, inode, queued, backlog))
        return out

    def _dump(self, req: bytes, msg_size: int) -> list[tuple[bytes, int, int]]:
        """Send one dump request; (buffer, message body offset, message end) of
        every answer message."""
        self.seq += 1
        self.sock.send(_HDR.pack(_HDR.size + len(req), _SOCK_DIAG_BY_FAMILY,
                                 _NLM_F_REQUEST_DUMP, self.seq, 0) + req)
        out: list[tuple[bytes, int, int]] = []
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, _flags, seq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    raise DiagUnavailable("bad netlink message")
                body = off + _HDR.size
                if seq == self.seq:  # else a stale answer to an earlier, abandoned request
                    if mtype == _NLMSG_DONE:
                        return out
                    if mtype == _NLMSG_ERROR:
                        code = struct.unpack_from("=i", data, body)[0]
                        raise DiagUnavailable(f"sock_diag error {code}")
                    if length >= _HDR.size + msg_size:
                        out.append((data, body, off + length))
                off += (length + 3) & ~3


def as_dict(m: DiagMessage) -> dict[str, Any]:
    """A message as the plain dict inspect.tcp_diag documents."""
    return {
        "kind": m.kind, "state": m.state_name, "local": m.local, "remote": m.remote,
        "inode": m.inode, "uid": m.uid, "cookie": m.cookie,
        "timer": TIMERS.get(m.timer, str(m.timer)), "timer_code": m.timer,
        "expires_ms": m.expires_ms, "retransmits": m.retransmits, "rqueue": m.rqueue,
        "wqueue": m.wqueue, "v6only": m.v6only, "skmem": m.skmem, "tcp_info": m.tcp_info,
    }
