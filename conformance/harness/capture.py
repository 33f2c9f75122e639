"""Lossless packet capture on an interface (``lo`` by default): capture I/O only.

While capturing, a daemon thread only moves frames from a raw AF_PACKET socket into a
list of ``(timestamp, frame bytes)``: no dissection, no per-packet Python work beyond
the append. Dissection (TCP reassembly, UDP, scapy) is :mod:`conformance.harness.wire`'s,
on the frames of a stopped capture.

* Loopback frames pass the packet tap twice (once outgoing, once incoming); the
  outgoing copy is dropped in the kernel (PACKET_IGNORE_OUTGOING, Linux >= 4.20) or,
  on older kernels, by checking ``sll_pkttype`` in the reader, so each packet is seen
  exactly once.
* Losslessness is measured, not assumed: :attr:`Capture.drops` is the kernel's
  PACKET_STATISTICS ``tp_drops`` (receive buffer overruns), :attr:`Capture.overflow`
  counts frames discarded beyond ``max_frames``; :attr:`Capture.lossless` is both zero.
  A stopped capture is an observation: :meth:`Capture.doubt` is None only when it is
  known to be lossless (no drops, no overflow, no reader or statistics error).
* Timestamps are ``time.time()`` taken by the reader when it receives the frame.

The module uses only the standard library at import time.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from conformance.evidence import Doubt
from conformance.harness.netns import NO_CAP_NET_RAW, packet_socket_reason

__all__ = ["Capture", "CaptureUnavailable", "available"]


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
    """Raw capture is impossible here; :attr:`reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Whether a raw AF_PACKET socket can be opened on an interface: None, or why not.
# (netns.py holds it: it is copied stand-alone into the non-root test.)
available = packet_socket_reason


# --------------------------------------------------------------------------- reader


class _ReaderState:
    """Shared between the capture object and its reader thread (not the Capture itself,
    so an abandoned Capture can still be garbage-collected and its thread stopped)."""

    __slots__ = ("sock", "frames", "stop", "wake", "deadline", "overflow", "errors",
                 "filter_outgoing")

    def __init__(self, sock: socket.socket, frames: list[tuple[float, bytes]]) -> None:
        self.sock = sock
        self.frames = frames
        self.stop = threading.Event()
        # stop() writes here so that the reader starts its last quiet period at once,
        # not when its current poll() slice ends (up to _QUIET_S later).
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
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
    poller.register(st.wake, select.POLLIN)
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
            events = poller.poll(quiet_ms)
            if any(fd == st.wake for fd, _ in events):
                # stop() was called: drain, then a whole quiet period from now on.
                try:
                    os.eventfd_read(st.wake)
                except OSError:
                    pass
                continue
            if not events and stopping:
                return
    finally:
        mv.release()


def _shutdown(st: _ReaderState, thread: threading.Thread) -> None:
    """Finalizer for a Capture that was never stopped."""
    st.deadline = 0.0
    st.stop.set()
    os.eventfd_write(st.wake, 1)
    thread.join(1.0)
    st.sock.close()
    os.close(st.wake)


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
        self._measured = True  # False: frames loaded from a file, drops unknown

    # ---- construction from saved data

    @classmethod
    def from_pcap(cls, path: str | os.PathLike[str]) -> Capture:
        """Load a classic pcap file (as written by :meth:`write_pcap`, tcpdump, scapy):
        a stopped capture whose losslessness is unknown (the file does not say)."""
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
        cap = cls()
        cap.frames = frames
        cap.linktype = linktype
        cap._stopped = True
        cap._measured = False
        return cap

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
        st: _ReaderState | None = None
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
            if st is not None:
                os.close(st.wake)
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
            os.eventfd_write(st.wake, 1)
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
            os.close(st.wake)
            if self._finalizer is not None:
                self._finalizer.detach()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped

    @property
    def lossless(self) -> bool:
        """No kernel drops and nothing discarded beyond max_frames."""
        return self.drops == 0 and self.overflow == 0

    def doubt(self) -> Doubt | None:
        """Why this capture cannot back a verdict, or None when it is known to be
        lossless: stopped, kernel statistics read, no drop, no overflow, no error."""
        if not self._stopped:
            return Doubt("the capture is still running: its statistics are not final")
        if not self._measured:
            return Doubt("frames loaded from a file: whether they were captured "
                         "losslessly is unknown")
        lost = self.drops + self.overflow
        if lost:
            return Doubt(f"capture dropped {lost} packet{'s' if lost != 1 else ''} "
                         f"(kernel drops {self.drops}, over max_frames {self.overflow})")
        if self.errors:
            return Doubt(f"capture error{'s' if len(self.errors) > 1 else ''}: "
                         f"{'; '.join(self.errors[:3])} (losslessness unknown)")
        return None

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
