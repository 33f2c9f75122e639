"""Wire dissection: what a stopped capture shows, as an observation.

:class:`Wire` holds the frames of a capture together with the capture's quality
(:meth:`Wire.doubt` is the capture's: None only when it is known to be lossless),
and dissects them on demand: TCP conversations reassembled by sequence number
(:meth:`Wire.tcp_connections`), UDP datagrams (:meth:`Wire.udp_datagrams`), both
through a small struct-based IPv4/IPv6 parser (fast, no scapy), and a scapy
``PacketList`` (:meth:`Wire.packets`; scapy is imported there, never at import time).

A check judges a wire verdict on a Wire and builds its ``Pass`` from it, so a lossy
capture can never back a pass; before judging an *absence* ("no FIN", "no payload")
it calls ``evidence.require(wire)``, since a dropped packet is not a proof.
"""

from __future__ import annotations

import bisect
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from conformance.evidence import Doubt, Observation
from conformance.harness.capture import LINKTYPE_ETHERNET, LINKTYPE_RAW, Capture

if TYPE_CHECKING:  # pragma: no cover
    from scapy.plist import PacketList

__all__ = ["Segment", "TcpConnection", "UdpDatagram", "Wire"]

UNKNOWN_SOURCE = Doubt("frames of unknown provenance: whether the capture was lossless is unknown")


@dataclass
class Segment:
    index: int  # packet number in the pcap (1-based)
    ts: float
    from_server: bool
    flags: str  # scapy order: "S", "SA", "PA", "FA", "FPA", "R", "RA", ...
    seq: int  # absolute, as on the wire
    ack: int
    payload: bytes


class UdpDatagram(NamedTuple):
    ts: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


_FLAG_LETTERS = "FSRPAUECN"
_flag_cache: dict[int, str] = {}


def _flags_str(bits: int) -> str:
    s = _flag_cache.get(bits)
    if s is None:
        s = "".join(ch for i, ch in enumerate(_FLAG_LETTERS) if bits >> i & 1)
        _flag_cache[bits] = s
    return s


class _L4(NamedTuple):
    proto: int  # 6 tcp, 17 udp
    src: str
    dst: str
    data: bytes  # the L4 header + payload (memory copy of the slice)


def _ip_layer(frame: bytes, linktype: int) -> tuple[int, int] | None:
    """(ethertype-like version 4/6, offset of the IP header) or None."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            return None
        off = 12
        etype = frame[off] << 8 | frame[off + 1]
        while etype in (0x8100, 0x88A8) and len(frame) >= off + 6:  # VLAN tags
            off += 4
            etype = frame[off] << 8 | frame[off + 1]
        off += 2
        if etype == 0x0800:
            return 4, off
        if etype == 0x86DD:
            return 6, off
        return None
    if linktype == LINKTYPE_RAW and frame:
        v = frame[0] >> 4
        return (v, 0) if v in (4, 6) else None
    return None


_IPV6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options


def _parse_l4(frame: bytes, linktype: int) -> _L4 | None:
    ip = _ip_layer(frame, linktype)
    if ip is None:
        return None
    ver, off = ip
    if ver == 4:
        if len(frame) < off + 20:
            return None
        ihl = (frame[off] & 0x0F) * 4
        total = frame[off + 2] << 8 | frame[off + 3]
        frag = (frame[off + 6] << 8 | frame[off + 7]) & 0x3FFF  # MF + offset
        if frag:
            return None  # fragments are not reassembled
        proto = frame[off + 9]
        src = socket.inet_ntop(socket.AF_INET, frame[off + 12 : off + 16])
        dst = socket.inet_ntop(socket.AF_INET, frame[off + 16 : off + 20])
        end = off + total if total else len(frame)  # tot_len 0: BIG TCP / TSO
        data = frame[off + ihl : end]
        return _L4(proto, src, dst, data)
    if len(frame) < off + 40:
        return None
    plen = frame[off + 4] << 8 | frame[off + 5]
    nxt = frame[off + 6]
    src = socket.inet_ntop(socket.AF_INET6, frame[off + 8 : off + 24])
    dst = socket.inet_ntop(socket.AF_INET6, frame[off + 24 : off + 40])
    end = off + 40 + plen if plen else len(frame)  # plen 0: jumbogram
    p = off + 40
    while nxt in _IPV6_EXT or nxt in (44, 51):
        if p + 8 > end:
            return None
        if nxt == 44:  # fragment
            if (frame[p + 2] << 8 | frame[p + 3]) & 0xFFF9:
                return None
            nxt, p = frame[p], p + 8
        elif nxt == 51:  # AH
            nxt, p = frame[p], p + (frame[p + 1] + 2) * 4
        else:
            nxt, p = frame[p], p + (frame[p + 1] + 1) * 8
    return _L4(nxt, src, dst, frame[p:end])


class _Interval:
    """A set of covered byte ranges [start, end), kept merged and sorted."""

    __slots__ = ("starts", "ends")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def covers(self, a: int, b: int) -> bool:
        i = bisect.bisect_right(self.starts, a) - 1
        return i >= 0 and self.ends[i] >= b

    def add(self, a: int, b: int) -> None:
        starts, ends = self.starts, self.ends
        i = bisect.bisect_left(ends, a)  # first range that ends at/after a
        j = i
        while j < len(starts) and starts[j] <= b:
            a = min(a, starts[j])
            b = max(b, ends[j])
            j += 1
        starts[i:j] = [a]
        ends[i:j] = [b]

    def gaps(self) -> list[tuple[int, int]]:
        return list(zip(self.ends[:-1], self.starts[1:], strict=True))


def _signed32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


@dataclass
class _Direction:
    payload: bytes
    segments: list[Segment]
    gaps: list[tuple[int, int]]


class TcpConnection:
    """One TCP conversation: its segments in capture order, seen from the server port."""

    def __init__(self, server: tuple[str, int], client: tuple[str, int]) -> None:
        self.server = server
        self.client = client
        self.segments: list[Segment] = []
        self._client_isn: int | None = None
        self._dirs: dict[bool, _Direction] = {}

    def __repr__(self) -> str:
        return (
            f"<TcpConnection client={_fmt_ep(self.client)} server={_fmt_ep(self.server)} "
            f"segments={len(self.segments)}>"
        )

    def _direction(self, from_server: bool) -> _Direction:
        d = self._dirs.get(from_server)
        if d is not None:
            return d
        segs = [s for s in self.segments if s.from_server == from_server]
        base: int | None = None
        for s in segs:
            if "S" in s.flags:
                base = (s.seq + 1) & 0xFFFFFFFF
                break
        if base is None:
            for s in segs:
                if s.payload:
                    base = s.seq
                    break
        covered = _Interval()
        pieces: list[tuple[int, bytes]] = []
        carrying: list[Segment] = []
        if base is not None:
            for s in segs:
                if not s.payload:
                    continue
                a = _signed32(s.seq - base) + (1 if "S" in s.flags else 0)
                b = a + len(s.payload)
                if covered.covers(a, b):
                    continue  # retransmission (or keepalive probe) of data already seen
                covered.add(a, b)
                pieces.append((a, s.payload))
                carrying.append(s)
        pieces.sort(key=lambda p: p[0])
        out = bytearray()
        cur = pieces[0][0] if pieces else 0
        for a, data in pieces:
            if a + len(data) <= cur:
                continue
            if a > cur:
                cur = a  # a hole: bytes missing from the capture (see gaps())
            out += data[cur - a :]
            cur = a + len(data)
        d = _Direction(bytes(out), carrying, covered.gaps())
        self._dirs[from_server] = d
        return d

    def payload(self, from_server: bool) -> bytes:
        """The byte stream one side sent, reassembled by sequence number, retransmissions
        de-duplicated. Holes (never captured) are skipped; :meth:`gaps` lists them."""
        return self._direction(from_server).payload

    def payload_segments(self, from_server: bool) -> list[Segment]:
        """Segments of one side that carry new data (retransmissions not counted twice)."""
        return list(self._direction(from_server).segments)

    def gaps(self, from_server: bool) -> list[tuple[int, int]]:
        """Sequence ranges (relative to the ISN+1) missing between captured data."""
        return list(self._direction(from_server).gaps)

    def fin(self, from_server: bool) -> Segment | None:
        for s in self.segments:
            if s.from_server == from_server and "F" in s.flags:
                return s
        return None

    def rst(self, from_server: bool | None = None) -> list[Segment]:
        return [
            s
            for s in self.segments
            if "R" in s.flags and (from_server is None or s.from_server == from_server)
        ]

    def describe(self, max_lines: int = 80) -> str:
        """A short ladder of the exchange, for evidence."""
        head = f"tcp client {_fmt_ep(self.client)} <-> server {_fmt_ep(self.server)}"
        lines = [head]
        t0 = self.segments[0].ts if self.segments else 0.0
        shown = self.segments
        if len(shown) > max_lines:
            half = max_lines // 2
            shown = shown[:half] + shown[-half:]
        for i, s in enumerate(shown):
            if len(self.segments) > max_lines and i == max_lines // 2:
                lines.append(f"  ... {len(self.segments) - max_lines} more segments ...")
            line = f"  #{s.index} +{(s.ts - t0) * 1000:.3f}ms {'s>c' if s.from_server else 'c>s'} {s.flags}"
            if s.payload:
                preview = s.payload[:24]
                more = "..." if len(s.payload) > 24 else ""
                line += f" {len(s.payload)}B {preview!r}{more}"
            lines.append(line)
        return "\n".join(lines)


def _fmt_ep(ep: tuple[str, int]) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------- the wire


class Wire:
    """The frames of one capture, dissected on demand; an observation whose quality
    is the capture's (``source``: anything with ``doubt()``, normally the stopped
    :class:`~conformance.harness.capture.Capture`; None: unknown provenance)."""

    def __init__(
        self,
        frames: Sequence[tuple[float, bytes]],
        linktype: int = LINKTYPE_ETHERNET,
        source: Observation | None = None,
    ) -> None:
        self.frames = list(frames)
        self.linktype = linktype
        self.source = source
        self._parsed: list[tuple[int, float, _L4]] | None = None
        self._packets: Any = None

    @classmethod
    def of(cls, capture: Capture) -> Wire:
        """The wire of a stopped capture (RuntimeError while it still runs)."""
        if capture.running:
            raise RuntimeError("stop() the capture before dissecting it")
        return cls(capture.frames, capture.linktype, capture)

    def doubt(self) -> Doubt | None:
        return UNKNOWN_SOURCE if self.source is None else self.source.doubt()

    def __repr__(self) -> str:
        d = self.doubt()
        return f"<Wire {len(self.frames)} frames, {'lossless' if d is None else d.reason}>"

    # ---- dissection

    def _l4(self) -> list[tuple[int, float, _L4]]:
        if self._parsed is None:
            out = []
            lt = self.linktype
            for i, (ts, frame) in enumerate(self.frames, 1):
                l4 = _parse_l4(frame, lt)
                if l4 is not None and l4.proto in (6, 17):
                    out.append((i, ts, l4))
            self._parsed = out
        return self._parsed

    def _tcp(self, port: int) -> Iterator[tuple[int, float, str, int, str, int, bytes]]:
        for i, ts, l4 in self._l4():
            d = l4.data
            if l4.proto != 6 or len(d) < 20:
                continue
            sport = d[0] << 8 | d[1]
            dport = d[2] << 8 | d[3]
            if sport == port or dport == port:
                yield i, ts, l4.src, sport, l4.dst, dport, d

    def tcp_connections(self, port: int) -> list[TcpConnection]:
        """Every TCP conversation with ``port`` as one endpoint (IPv4 and IPv6), in order
        of first SYN (conversations whose SYN was not captured: of their first packet)."""
        current: dict[tuple[tuple[str, int], tuple[str, int]], TcpConnection] = {}
        order: list[tuple[int, TcpConnection]] = []
        for i, ts, src, sport, dst, dport, d in self._tcp(port):
            seq, ack = struct.unpack_from("!II", d, 4)
            doff = (d[12] >> 4) * 4
            bits = (d[12] & 1) << 8 | d[13]
            pure_syn = bits & 0x12 == 0x02
            a, b = (src, sport), (dst, dport)
            if dport == port and sport != port:
                client, server, from_server = a, b, False
            elif sport == port and dport != port:
                client, server, from_server = b, a, True
            elif pure_syn or (a, b) in current:
                client, server, from_server = a, b, False
            else:
                client, server, from_server = b, a, True
            key = (client, server)
            conn = current.get(key)
            if pure_syn and not from_server and (conn is None or conn._client_isn != seq):
                # A new connection (a SYN retransmission has the same ISN; a reused
                # 4-tuple gets a new one).
                conn = TcpConnection(server, client)
                conn._client_isn = seq
                current[key] = conn
                order.append((i, conn))
            elif conn is None:
                conn = TcpConnection(server, client)
                current[key] = conn
                order.append((i, conn))
            conn.segments.append(
                Segment(i, ts, from_server, _flags_str(bits), seq, ack, bytes(d[doff:]))
            )
        return [c for _, c in order]

    def udp_datagrams(self, port: int) -> list[UdpDatagram]:
        """Every UDP datagram from or to ``port`` (IPv4 and IPv6), in capture order."""
        out: list[UdpDatagram] = []
        for _i, ts, l4 in self._l4():
            d = l4.data
            if l4.proto != 17 or len(d) < 8:
                continue
            sport = d[0] << 8 | d[1]
            dport = d[2] << 8 | d[3]
            if sport != port and dport != port:
                continue
            ulen = d[4] << 8 | d[5]
            payload = d[8:ulen] if ulen >= 8 else d[8:]
            out.append(UdpDatagram(ts, (l4.src, sport), (l4.dst, dport), bytes(payload)))
        return out

    def packets(self) -> PacketList:
        """A scapy PacketList of the frames (dissected on first use, then cached)."""
        if self._packets is None:
            from scapy.config import conf
            from scapy.layers import inet, inet6, l2  # noqa: F401  (register layers)
            from scapy.plist import PacketList

            cls: Any = conf.l2types.get(self.linktype)
            if cls is None:
                raise ValueError(f"scapy has no dissector for linktype {self.linktype}")
            pkts = []
            for ts, frame in self.frames:
                pkt = cls(frame)
                pkt.time = ts
                pkts.append(pkt)
            self._packets = PacketList(pkts, name="capture")
        return self._packets
