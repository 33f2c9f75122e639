"""Lossless packet capture on an interface (``lo`` by default), dissected afterwards.

While capturing, a daemon thread only moves frames from a raw AF_PACKET socket into a
list of ``(timestamp, frame bytes)``: no dissection, no per-packet Python work beyond
the append. Everything else (pcap export, TCP conversation reassembly, scapy) happens
after :meth:`Capture.stop`.

* Loopback frames pass the packet tap twice (once outgoing, once incoming); the
  outgoing copy is dropped in the kernel (PACKET_IGNORE_OUTGOING, Linux >= 4.20) or,
  on older kernels, by checking ``sll_pkttype`` in the reader, so each packet is seen
  exactly once.
* Losslessness is measured, not assumed: :attr:`Capture.drops` is the kernel's
  PACKET_STATISTICS ``tp_drops`` (receive buffer overruns), :attr:`Capture.overflow`
  counts frames discarded beyond ``max_frames``; :attr:`Capture.lossless` is both zero.
* Timestamps are ``time.time()`` taken by the reader when it receives the frame.

TCP/UDP dissection for :meth:`Capture.tcp_connections` and :meth:`Capture.udp_datagrams`
uses a small struct-based IPv4/IPv6 parser (fast, no scapy); :meth:`Capture.packets`
gives a scapy ``PacketList`` (scapy is imported there, never at module import time).

The module uses only the standard library at import time.
"""

from __future__ import annotations

import bisect
import errno
import os
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    from scapy.plist import PacketList

__all__ = [
    "Capture",
    "CaptureUnavailable",
    "Segment",
    "TcpConnection",
    "UdpDatagram",
    "available",
]

NO_CAP_NET_RAW = "no CAP_NET_RAW: run as root or where user namespaces are allowed"

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

# ARPHRD_* (sll_hatype) -> pcap LINKTYPE_*. lo is ARPHRD_LOOPBACK but carries a
# 14-byte Ethernet header, so it is LINKTYPE_ETHERNET like real Ethernet.
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
_ARPHRD_TO_LINKTYPE = {
    1: LINKTYPE_ETHERNET,  # ARPHRD_ETHER
    772: LINKTYPE_ETHERNET,  # ARPHRD_LOOPBACK
    65534: LINKTYPE_RAW,  # ARPHRD_NONE (tun)
    768: LINKTYPE_RAW,  # ARPHRD_TUNNEL (ipip)
    769: LINKTYPE_RAW,  # ARPHRD_TUNNEL6
    776: LINKTYPE_RAW,  # ARPHRD_SIT
}

# Large enough for a GSO/BIG-TCP super-packet on lo (tso_max_size 524280 + headers).
_FRAME_BUFSIZE = 1 << 20
_SNAPLEN = _FRAME_BUFSIZE
_DEFAULT_RCVBUF = 256 << 20  # a limit, not an allocation; as root (SO_RCVBUFFORCE)
_QUIET_S = 0.020  # stop(): the socket must have been empty this long
_DRAIN_MAX_S = 2.0  # stop(): upper bound for draining
_CHUNK = 512  # reader: frames between checks of the stop deadline


class CaptureUnavailable(Exception):
    """Raw capture is impossible here; :attr:`reason` says why (for pytest.skip)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def available(iface: str = "lo") -> str | None:
    """None if a raw AF_PACKET socket can be opened on ``iface``, else the reason."""
    af_packet = getattr(socket, "AF_PACKET", None)
    if af_packet is None:
        return "AF_PACKET sockets are not supported on this platform"
    try:
        s = socket.socket(af_packet, socket.SOCK_RAW, 0)
    except PermissionError:
        return NO_CAP_NET_RAW
    except OSError as e:
        return f"cannot open an AF_PACKET socket: {e}"
    try:
        s.bind((iface, 0))
    except OSError as e:
        return f"cannot bind an AF_PACKET socket to {iface!r}: {e}"
    finally:
        s.close()
    return None


# --------------------------------------------------------------------------- reader


class _ReaderState:
    """Shared between the capture object and its reader thread (not the Capture itself,
    so an abandoned Capture can still be garbage-collected and its thread stopped)."""

    __slots__ = ("sock", "frames", "stop", "deadline", "overflow", "errors", "filter_outgoing")

    def __init__(self, sock: socket.socket, frames: list[tuple[float, bytes]]) -> None:
        self.sock = sock
        self.frames = frames
        self.stop = threading.Event()
        self.deadline = float("inf")
        self.overflow = 0
        self.errors: list[str] = []
        self.filter_outgoing = False


def _reader(st: _ReaderState, max_frames: int) -> None:
    sock = st.sock
    frames = st.frames
    append = frames.append
    now = time.time
    buf = bytearray(_FRAME_BUFSIZE)
    mv = memoryview(buf)
    recv_into = sock.recv_into
    recvfrom_into = sock.recvfrom_into
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    quiet_ms = int(_QUIET_S * 1000)
    chunk = range(_CHUNK)
    try:
        while True:
            # Drain everything queued, a chunk at a time.
            try:
                while True:
                    room = max_frames - len(frames)
                    if room <= 0:  # over max_frames: keep draining, count what is discarded
                        for _ in chunk:
                            n, addr = recvfrom_into(buf)
                            if addr[2] != PACKET_OUTGOING:
                                st.overflow += 1
                    elif st.filter_outgoing:  # kernels without PACKET_IGNORE_OUTGOING
                        for _ in range(min(room, _CHUNK)):
                            n, addr = recvfrom_into(buf)
                            if addr[2] != PACKET_OUTGOING:
                                append((now(), mv[:n].tobytes()))
                    else:
                        for _ in range(min(room, _CHUNK)):
                            n = recv_into(buf)
                            append((now(), mv[:n].tobytes()))
                    if st.stop.is_set() and time.monotonic() > st.deadline:
                        return
            except BlockingIOError:
                pass
            except OSError as e:
                st.errors.append(str(e))
                if e.errno not in (errno.ENETDOWN, errno.ENXIO, errno.EINTR):
                    return  # e.g. EBADF; ENETDOWN (interface went down) is not fatal
            stopping = st.stop.is_set()  # read before the quiet period starts
            if stopping and time.monotonic() > st.deadline:
                return
            if not poller.poll(quiet_ms) and stopping:
                return
    finally:
        mv.release()


def _shutdown(st: _ReaderState, thread: threading.Thread) -> None:
    """Finalizer for a Capture that was never stopped."""
    st.deadline = 0.0
    st.stop.set()
    thread.join(1.0)
    st.sock.close()


# ------------------------------------------------------------------------ dissection


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


# ------------------------------------------------------------------------- capture


class Capture:
    """Raw capture on ``iface``. Use as a context manager, or start()/stop()."""

    def __init__(
        self,
        iface: str = "lo",
        *,
        max_frames: int = 200_000,
        rcvbuf: int = _DEFAULT_RCVBUF,
    ) -> None:
        self.iface = iface
        self.max_frames = max_frames
        self.rcvbuf = rcvbuf
        self.frames: list[tuple[float, bytes]] = []
        self.drops = 0  # kernel receive-queue drops (PACKET_STATISTICS tp_drops)
        self.kernel_packets = 0  # frames the kernel queued for us, drops included
        self.overflow = 0  # frames discarded because max_frames was reached
        self.errors: list[str] = []  # socket errors the reader saw (e.g. ENETDOWN)
        self.linktype = LINKTYPE_ETHERNET
        self.rcvbuf_effective = 0  # SO_RCVBUF as the kernel applied it
        self._state: _ReaderState | None = None
        self._thread: threading.Thread | None = None
        self._finalizer: Any = None
        self._stopped = False
        self._packets: Any = None
        self._parsed: list[tuple[int, float, _L4]] | None = None

    # ---- construction from saved data

    @classmethod
    def from_frames(
        cls, frames: Iterable[tuple[float, bytes]], linktype: int = LINKTYPE_ETHERNET
    ) -> Capture:
        """A stopped capture holding the given frames (for re-analysis and tests)."""
        cap = cls()
        cap.frames = list(frames)
        cap.linktype = linktype
        cap._stopped = True
        return cap

    @classmethod
    def from_pcap(cls, path: str | os.PathLike[str]) -> Capture:
        """Load a classic pcap file (as written by :meth:`write_pcap`, tcpdump, scapy)."""
        data = Path(path).read_bytes()
        if len(data) < 24:
            raise ValueError(f"{path}: not a pcap file")
        magic = data[:4]
        table = {
            b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
            b"\xa1\xb2\xc3\xd4": (">", 1e-6),
            b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
            b"\xa1\xb2\x3c\x4d": (">", 1e-9),
        }
        if magic not in table:
            raise ValueError(f"{path}: not a classic pcap file (pcapng is not supported)")
        endian, unit = table[magic]
        linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
        rec = struct.Struct(endian + "IIII")
        frames: list[tuple[float, bytes]] = []
        off = 24
        while off + 16 <= len(data):
            sec, frac, incl, _orig = rec.unpack_from(data, off)
            off += 16
            frames.append((sec + frac * unit, data[off : off + incl]))
            off += incl
        return cls.from_frames(frames, linktype)

    # ---- capturing

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Capture:
        if self._state is not None or self._stopped:
            raise RuntimeError("a Capture can be started only once")
        af_packet = getattr(socket, "AF_PACKET", None)
        if af_packet is None:
            raise CaptureUnavailable("AF_PACKET sockets are not supported on this platform")
        try:
            # Protocol 0: the socket receives nothing until bind() names the protocol,
            # so no frame of another interface can slip in before the bind.
            sock = socket.socket(af_packet, socket.SOCK_RAW, 0)
        except PermissionError:
            raise CaptureUnavailable(NO_CAP_NET_RAW) from None
        except OSError as e:
            raise CaptureUnavailable(f"cannot open an AF_PACKET socket: {e}") from None
        try:
            st = _ReaderState(sock, self.frames)
            try:
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                st.filter_outgoing = True
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except OSError:  # not CAP_NET_ADMIN in the initial user namespace
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            self.rcvbuf_effective = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            try:
                sock.bind((self.iface, ETH_P_ALL))
            except OSError as e:
                raise CaptureUnavailable(
                    f"cannot capture on interface {self.iface!r}: {e}"
                ) from None
            hatype = sock.getsockname()[3]
            self.linktype = _ARPHRD_TO_LINKTYPE.get(hatype, LINKTYPE_ETHERNET)
            # Reset the statistics (reading PACKET_STATISTICS clears them).
            sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            sock.setblocking(False)
            thread = threading.Thread(
                target=_reader,
                args=(st, self.max_frames),
                name=f"sockconf-capture-{self.iface}",
                daemon=True,
            )
            thread.start()
        except BaseException:
            sock.close()
            raise
        self._state = st
        self._thread = thread
        self._finalizer = weakref.finalize(self, _shutdown, st, thread)
        return self

    def stop(self) -> None:
        """Drain what is queued (until the socket was empty 20 ms, at most 2 s), stop the
        reader thread, read the drop statistics, close the socket. Idempotent."""
        st, thread = self._state, self._thread
        if self._stopped or st is None or thread is None:
            self._stopped = True
            return
        self._stopped = True
        try:
            st.deadline = time.monotonic() + _DRAIN_MAX_S
            st.stop.set()
            thread.join(_DRAIN_MAX_S + 1.0)
            if thread.is_alive():  # pragma: no cover - reader stuck; should not happen
                st.deadline = 0.0
                thread.join(1.0)
            try:
                raw = st.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
                packets, drops = struct.unpack("II", raw)
                self.kernel_packets = packets  # includes drops
                self.drops = drops
            except OSError as e:
                self.errors.append(f"PACKET_STATISTICS: {e}")
            self.overflow = st.overflow
            self.errors.extend(st.errors)
        finally:
            st.sock.close()
            if self._finalizer is not None:
                self._finalizer.detach()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    @property
    def lossless(self) -> bool:
        """No kernel drops and nothing discarded beyond max_frames."""
        return self.drops == 0 and self.overflow == 0

    # ---- output

    def write_pcap(self, path: str | os.PathLike[str]) -> Path:
        """Write a classic (microsecond) pcap file; readable by tcpdump, wireshark, scapy."""
        p = Path(path)
        hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, _SNAPLEN, self.linktype)
        rec = struct.Struct("<IIII")
        with p.open("wb") as f:
            f.write(hdr)
            for ts, frame in self.frames:
                usec = round(ts * 1_000_000)
                sec, usec = divmod(usec, 1_000_000)
                f.write(rec.pack(sec, usec, len(frame), len(frame)))
                f.write(frame)
        return p

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
            self._packets = PacketList(pkts, name=f"capture-{self.iface}")
        return self._packets

    # ---- dissection

    def _l4(self) -> list[tuple[int, float, _L4]]:
        if self._parsed is None:
            if self.running:
                raise RuntimeError("stop() the capture before dissecting it")
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
