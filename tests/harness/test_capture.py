"""conformance.harness.capture: lossless loopback capture, dissected afterwards.

Capturing tests run in a private network namespace of this test process
(netns.isolate(), idempotent -- the same call the plugin makes per worker), so parallel
workers (-n 2) never see each other's packets, and they use ephemeral ports only.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conformance.evidence import Doubt
from conformance.harness import capture, netns
from conformance.harness.capture import Capture, CaptureUnavailable
from conformance.harness.wire import Wire

REPO = Path(__file__).resolve().parents[2]
GREETING = b"Hello World!\0"
NOBODY = 65534
LOOPBACKS = [
    pytest.param((socket.AF_INET, "127.0.0.1"), id="v4"),
    pytest.param((socket.AF_INET6, "::1"), id="v6"),
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def iso() -> netns.Isolation:
    """A private netns for this test process (where possible) and raw capture rights."""
    result = netns.isolate()
    reason = capture.available()
    if reason is not None:
        pytest.skip(reason)
    return result


@pytest.fixture
def private_netns(iso: netns.Isolation) -> netns.Isolation:
    """For tests that count every frame on lo: only meaningful without other traffic."""
    if iso.kind == "host":
        pytest.skip(f"no private network namespace: {iso.reason}")
    return iso


def _listener(fam: int, addr: str, typ: int = socket.SOCK_STREAM) -> socket.socket:
    s = socket.socket(fam, typ)
    s.bind((addr, 0))
    if typ == socket.SOCK_STREAM:
        s.listen(8)
    return s


def _serve_once(lst: socket.socket, handler: Callable[[socket.socket], None]) -> threading.Thread:
    """Accept one connection in a thread and run `handler` on it (exceptions kept)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn, _ = lst.accept()
            with conn:
                handler(conn)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.errors = errors  # type: ignore[attr-defined]
    t.start()
    return t


def _join(t: threading.Thread) -> None:
    t.join(10)
    assert not t.is_alive(), "server thread hung"
    errs = t.errors  # type: ignore[attr-defined]
    if errs:
        raise errs[0]


def _read_until_eof(sock: socket.socket, limit: int = 1 << 24) -> bytes:
    out = bytearray()
    while len(out) < limit:
        b = sock.recv(65536)
        if not b:
            break
        out += b
    return bytes(out)


def _tcp_info_segs(sock: socket.socket) -> tuple[int, int]:
    """(tcpi_segs_out, tcpi_segs_in) from TCP_INFO."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("II", info, 136)


def _no_reader_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("sockconf-capture")]


# ------------------------------------------------------------------ TCP conversations


@pytest.mark.parametrize("loop", LOOPBACKS)
def test_normal_close_shows_fin_and_no_rst(iso: netns.Isolation, loop: tuple[int, str]) -> None:
    fam, addr = loop
    with _listener(fam, addr) as lst, Capture() as cap:
        port = lst.getsockname()[1]

        def greet(conn: socket.socket) -> None:
            conn.sendall(GREETING)
            assert _read_until_eof(conn) == b""  # the client's FIN, then we close

        t = _serve_once(lst, greet)
        with socket.create_connection((addr, port), timeout=5) as cli:
            got = bytearray()
            while len(got) < len(GREETING):
                b = cli.recv(64)
                assert b
                got += b
            client_port = cli.getsockname()[1]
        _join(t)
        time.sleep(0.05)  # the last ACK
    assert bytes(got) == GREETING
    assert cap.drops == 0 and cap.lossless and Wire.of(cap).doubt() is None
    (conn,) = Wire.of(cap).tcp_connections(port)
    assert conn.server == (addr, port)
    assert conn.client == (addr, client_port)
    assert [s.flags for s in conn.segments[:3]] == ["S", "SA", "A"]
    assert [s.from_server for s in conn.segments[:3]] == [False, True, False]
    assert conn.payload(True) == GREETING
    assert conn.payload(False) == b""
    assert conn.fin(True) is not None and conn.fin(False) is not None
    assert conn.rst() == []
    text = conn.describe()
    assert "s>c PA 13B" in text and "c>s S" in text and "FA" in text, text
    # Packet numbers are pcap numbers: the segment is the frame at that position.
    for s in conn.segments:
        assert cap.frames[s.index - 1][0] == s.ts


def test_greeting_as_13_one_byte_segments(iso: netns.Isolation) -> None:
    """CLI-2's wire check: a greeting written one byte at a time (TCP_NODELAY, ~20 ms
    apart) shows up as 13 payload segments of 1 byte."""
    with _listener(socket.AF_INET, "127.0.0.1") as lst, Capture() as cap:
        port = lst.getsockname()[1]

        def trickle(conn: socket.socket) -> None:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(GREETING)):
                conn.sendall(GREETING[i : i + 1])
                time.sleep(0.02)
            conn.shutdown(socket.SHUT_WR)
            _read_until_eof(conn)

        t = _serve_once(lst, trickle)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as cli:
            got = _read_until_eof(cli)
        _join(t)
    assert got == GREETING
    (conn,) = Wire.of(cap).tcp_connections(port)
    segs = conn.payload_segments(True)
    assert [len(s.payload) for s in segs] == [1] * 13, conn.describe()
    assert b"".join(s.payload for s in segs) == GREETING == conn.payload(True)
    gaps = [b.ts - a.ts for a, b in zip(segs, segs[1:], strict=False)]
    assert min(gaps) > 0.01, gaps
    assert conn.rst() == [] and conn.fin(True) is not None


@pytest.mark.parametrize("loop", LOOPBACKS)
def test_linger_zero_close_shows_rst_and_no_fin(
    iso: netns.Isolation, loop: tuple[int, str]
) -> None:
    fam, addr = loop
    with _listener(fam, addr) as lst, Capture() as cap:
        port = lst.getsockname()[1]

        def abort(conn: socket.socket) -> None:
            conn.sendall(GREETING)
            time.sleep(0.05)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        t = _serve_once(lst, abort)
        with socket.create_connection((addr, port), timeout=5) as cli:
            _join(t)
            time.sleep(0.05)
            try:
                cli.recv(64)
                cli.recv(64)
            except ConnectionResetError:
                pass
    (conn,) = Wire.of(cap).tcp_connections(port)
    assert conn.rst(True), conn.describe()
    assert conn.fin(True) is None, conn.describe()
    assert all(s.from_server for s in conn.rst())


def test_close_with_unread_data_resets(iso: netns.Isolation) -> None:
    """The HELLO-3 hazard: closing with unread bytes in the receive buffer sends RST."""
    with _listener(socket.AF_INET, "127.0.0.1") as lst, Capture() as cap:
        port = lst.getsockname()[1]
        arrived = threading.Event()

        def rude(conn: socket.socket) -> None:
            conn.sendall(GREETING)
            arrived.wait(5)  # close with the client's bytes unread

        t = _serve_once(lst, rude)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as cli:
            cli.sendall(b"unsolicited")
            time.sleep(0.05)
            arrived.set()
            _join(t)
            time.sleep(0.05)
    (conn,) = Wire.of(cap).tcp_connections(port)
    assert conn.payload(False) == b"unsolicited"
    assert conn.rst(True) and conn.fin(True) is None, conn.describe()


def test_connections_in_order_and_filtered_by_port(iso: netns.Isolation) -> None:
    with (
        _listener(socket.AF_INET, "127.0.0.1") as a4,
        _listener(socket.AF_INET6, "::1") as a6,
        _listener(socket.AF_INET, "127.0.0.1") as other,
        Capture() as cap,
    ):
        port4, port6, other_port = (s.getsockname()[1] for s in (a4, a6, other))
        clients = []
        for lst, addr, msg in (
            (a4, "127.0.0.1", b"one"),
            (a6, "::1", b"two"),
            (a4, "127.0.0.1", b"three"),
            (other, "127.0.0.1", b"else"),
        ):
            with socket.create_connection((addr, lst.getsockname()[1]), timeout=5) as c:
                c.sendall(msg)
                srv, _ = lst.accept()
                with srv:
                    assert srv.recv(16) == msg
                clients.append(c.getsockname()[:2])
        time.sleep(0.05)
    conns = Wire.of(cap).tcp_connections(port4)
    assert [c.payload(False) for c in conns] == [b"one", b"three"]
    assert [c.client for c in conns] == [clients[0], clients[2]]
    (c6,) = Wire.of(cap).tcp_connections(port6)
    assert c6.server == ("::1", port6) and c6.client == clients[1] and c6.payload(False) == b"two"
    assert [c.payload(False) for c in Wire.of(cap).tcp_connections(other_port)] == [b"else"]
    assert Wire.of(cap).tcp_connections(1) == []


# ------------------------------------------------------------------------------- UDP


@pytest.mark.parametrize("loop", LOOPBACKS)
def test_udp_datagrams(iso: netns.Isolation, loop: tuple[int, str]) -> None:
    fam, addr = loop
    with (
        _listener(fam, addr, socket.SOCK_DGRAM) as srv,
        socket.socket(fam, socket.SOCK_DGRAM) as cli,
        Capture() as cap,
    ):
        port = srv.getsockname()[1]
        msgs = [b"", b"a", b"bb" * 1000, b"x" * 65507 if fam == socket.AF_INET else b"y" * 65000]
        for m in msgs:
            cli.sendto(m, (addr, port))
            data, peer = srv.recvfrom(70000)
            srv.sendto(data, peer)
            assert cli.recv(70000) == m
        cport = cli.getsockname()[1]
    dgs = Wire.of(cap).udp_datagrams(port)
    assert [d.payload for d in dgs] == [m for m in msgs for _ in (0, 1)]
    assert [(d.src, d.dst) for d in dgs[:2]] == [
        ((addr, cport), (addr, port)),
        ((addr, port), (addr, cport)),
    ]
    assert Wire.of(cap).udp_datagrams(cport) == dgs


@pytest.mark.parametrize("kernel_filter", [True, False], ids=["ignore_outgoing", "pkttype"])
def test_each_packet_exactly_once(
    private_netns: netns.Isolation, kernel_filter: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lo passes every frame twice through the tap; the outgoing copy must be dropped,
    by PACKET_IGNORE_OUTGOING or (kernels < 4.20) by sll_pkttype in the reader."""
    if not kernel_filter:
        monkeypatch.setattr(capture, "PACKET_IGNORE_OUTGOING", 0x7FFF)  # -> ENOPROTOOPT
    with (
        _listener(socket.AF_INET, "127.0.0.1", socket.SOCK_DGRAM) as srv,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli,
        Capture() as cap,
    ):
        for i in range(200):
            cli.sendto(b"dup-check-%05d." % i, srv.getsockname())
    for i in range(200):
        marker = b"dup-check-%05d." % i
        assert sum(marker in f for _, f in cap.frames) == 1, i
    # Without the kernel filter the socket receives both copies (kernel_packets counts them).
    assert len(cap.frames) == 200 and cap.kernel_packets == (200 if kernel_filter else 400)
    assert cap.drops == 0


# --------------------------------------------------------------------------- lossless


def test_lossless_10k_udp_datagrams(private_netns: netns.Isolation, record_property) -> None:
    n = 10_000
    with (
        _listener(socket.AF_INET, "127.0.0.1", socket.SOCK_DGRAM) as srv,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli,
    ):
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        dst = srv.getsockname()
        cap = Capture()
        with cap:
            t0 = time.perf_counter()
            for i in range(n):
                cli.sendto(i.to_bytes(4, "big"), dst)
            elapsed = time.perf_counter() - t0
    record_property("udp_pps", round(n / elapsed))
    assert cap.drops == 0 and cap.overflow == 0 and cap.lossless
    dgs = Wire.of(cap).udp_datagrams(dst[1])
    seen = [int.from_bytes(d.payload, "big") for d in dgs]
    assert len(seen) == n and sorted(seen) == list(range(n))  # each one, exactly once
    assert seen == list(range(n))  # and in order
    assert len(cap.frames) == n == cap.kernel_packets


def test_lossless_10k_small_tcp_segments(private_netns: netns.Isolation, record_property) -> None:
    """One-byte writes with TCP_NODELAY until the client has sent 10k data segments (by
    the kernel's own TCP_INFO count): every segment either side sent is in the capture,
    each once, and the stream reassembles exactly."""
    n = 10_000
    # Autocorking would merge writes while a segment is still queued below TCP; it is
    # a per-netns sysctl, and this netns is ours. (Writes are still merged while the
    # congestion window is full, hence the loop on the kernel's segment count.)
    Path("/proc/sys/net/ipv4/tcp_autocorking").write_text("0")
    sent = bytearray()
    with _listener(socket.AF_INET, "127.0.0.1") as lst, Capture() as cap:
        port = lst.getsockname()[1]
        got: list[bytes] = []

        def sink(conn: socket.socket) -> None:
            got.append(_read_until_eof(conn))
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # wait for the client to close

        t = _serve_once(lst, sink)
        cli = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.perf_counter()
            while _tcp_info_segs(cli)[0] < n + 2 and len(sent) < 20 * n:  # SYN, ACK
                for _ in range(64):
                    b = bytes([len(sent) % 251])
                    cli.send(b)
                    sent += b
            elapsed = time.perf_counter() - t0
            cli.shutdown(socket.SHUT_WR)
            assert cli.recv(1) == b""  # the server's FIN
            time.sleep(0.05)  # our last ACK
            segs_out, segs_in = _tcp_info_segs(cli)
        finally:
            cli.close()
        _join(t)
    assert got == [bytes(sent)]
    assert cap.drops == 0 and cap.lossless
    assert len(cap.frames) == cap.kernel_packets
    (conn,) = Wire.of(cap).tcp_connections(port)
    c2s = [s for s in conn.segments if not s.from_server]
    s2c = [s for s in conn.segments if s.from_server]
    assert (len(c2s), len(s2c)) == (segs_out, segs_in)  # every segment, each once
    assert conn.payload(False) == bytes(sent)
    carrying = conn.payload_segments(False)
    record_property("tcp_payload_segments", len(carrying))
    record_property("tcp_frames", len(cap.frames))
    record_property("tcp_pps", round(len(cap.frames) / elapsed))
    assert len(carrying) >= n, "the client did not send 10k data segments"
    assert sum(len(s.payload) for s in carrying) == len(sent)
    assert conn.rst() == []


def test_max_frames_overflow_is_counted(private_netns: netns.Isolation) -> None:
    with (
        _listener(socket.AF_INET, "127.0.0.1", socket.SOCK_DGRAM) as srv,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli,
        Capture(max_frames=10) as cap,
    ):
        for i in range(50):
            cli.sendto(b"%d" % i, srv.getsockname())
    assert len(cap.frames) == 10
    assert cap.overflow == 40 and cap.drops == 0
    assert not cap.lossless
    # A lossy capture is an observation that cannot back a verdict.
    doubt = Wire.of(cap).doubt()
    assert doubt is not None and doubt.kind == "skip"
    assert doubt.reason.startswith("capture dropped 40 packets"), doubt


def test_doubt_of_a_capture_running_dropping_or_failing() -> None:
    cap = Capture()
    assert cap.doubt() is not None  # never started: not stopped, no statistics
    cap.stop()
    assert cap.doubt() is None  # stopped with nothing lost
    cap.drops = 3
    assert cap.doubt() == Doubt("capture dropped 3 packets (kernel drops 3, over max_frames 0)")
    cap.drops = 0
    cap.errors.append("PACKET_STATISTICS: [Errno 9] Bad file descriptor")
    d = cap.doubt()
    assert d is not None and "losslessness unknown" in d.reason
    assert Wire([]).doubt() is not None  # frames of unknown provenance


# ------------------------------------------------------------------- output formats


def _small_exchange(addr: str = "127.0.0.1", fam: int = socket.AF_INET) -> tuple[Capture, int]:
    with _listener(fam, addr) as lst, Capture() as cap:
        port = lst.getsockname()[1]

        def echo(conn: socket.socket) -> None:
            conn.sendall(conn.recv(100))
            _read_until_eof(conn)

        t = _serve_once(lst, echo)
        with socket.create_connection((addr, port), timeout=5) as cli:
            cli.sendall(b"ping")
            assert cli.recv(100) == b"ping"
        _join(t)
        time.sleep(0.05)
    return cap, port


def test_write_pcap_readable_by_scapy(iso: netns.Isolation, tmp_path: Path) -> None:
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap

    cap, port = _small_exchange()
    assert cap.linktype == capture.LINKTYPE_ETHERNET  # lo: ARPHRD_LOOPBACK, 14-byte header
    path = cap.write_pcap(tmp_path / "x.pcap")
    pkts = rdpcap(str(path))
    assert len(pkts) == len(cap.frames)
    assert [bytes(p) for p in pkts] == [f for _, f in cap.frames]
    assert all(abs(float(p.time) - ts) < 2e-6 for p, (ts, _) in zip(pkts, cap.frames, strict=True))
    assert all(TCP in p for p in pkts)
    # Our dissector agrees with scapy's.
    (conn,) = Wire.of(cap).tcp_connections(port)
    for seg in conn.segments:
        tcp = pkts[seg.index - 1][TCP]
        assert (str(tcp.flags), tcp.seq, tcp.ack, bytes(tcp.payload)) == (
            seg.flags,
            seg.seq,
            seg.ack,
            seg.payload,
        )
    # And the file reads back into the same analysis.
    again = Capture.from_pcap(path)
    assert again.linktype == cap.linktype
    assert [f for _, f in again.frames] == [f for _, f in cap.frames]
    (c2,) = Wire.of(again).tcp_connections(port)
    # A file does not say whether its capture was lossless: no verdict rests on it.
    assert Wire.of(again).doubt() is not None and Wire.of(cap).doubt() is None
    assert [(s.index, s.flags, s.seq, s.ack, s.payload) for s in c2.segments] == [
        (s.index, s.flags, s.seq, s.ack, s.payload) for s in conn.segments
    ]
    # pcap keeps microseconds
    assert all(abs(a.ts - b.ts) < 2e-6 for a, b in zip(c2.segments, conn.segments, strict=True))


def test_write_pcap_readable_by_tcpdump(iso: netns.Isolation, tmp_path: Path) -> None:
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        pytest.skip("tcpdump is not installed")
    cap, port = _small_exchange("::1", socket.AF_INET6)
    path = cap.write_pcap(tmp_path / "x.pcap")
    # As root, tcpdump switches to its own user (-Z): stay ourselves (user namespaces).
    stay = ["-Z", pwd.getpwuid(os.geteuid()).pw_name] if os.geteuid() == 0 else []
    r = subprocess.run(
        [tcpdump, "-nn", *stay, "-r", str(path)], capture_output=True, text=True, timeout=30
    )
    if r.returncode != 0 and "Couldn't change to" in r.stderr and netns.in_user_namespace():
        pytest.skip(f"tcpdump cannot drop privileges in this user namespace: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(cap.frames)
    assert all(f"::1.{port}" in line for line in lines), lines
    assert "EN10MB" in r.stderr or "Ethernet" in r.stderr


def test_packets_is_a_scapy_packet_list(iso: netns.Isolation) -> None:
    from scapy.layers.inet6 import IPv6
    from scapy.plist import PacketList

    cap, port = _small_exchange("::1", socket.AF_INET6)
    wire = Wire.of(cap)
    pl = wire.packets()
    assert isinstance(pl, PacketList) and wire.packets() is pl
    assert len(pl) == len(cap.frames)
    assert all(IPv6 in p for p in pl)
    assert float(pl[0].time) == cap.frames[0][0]


# --------------------------------------------------------------- life cycle, errors


def test_stop_closes_everything_and_is_idempotent(iso: netns.Isolation) -> None:
    cap = Capture().start()
    assert cap.running
    cap.stop()
    assert not cap.running and _no_reader_threads()
    cap.stop()
    with pytest.raises(RuntimeError):
        cap.start()
    # An exception inside the with-block still stops the capture.
    with pytest.raises(KeyError), Capture() as cap2:
        assert cap2.running
        raise KeyError("boom")
    assert not cap2.running and _no_reader_threads()
    # Dissecting a running capture is refused.
    with Capture() as cap3, pytest.raises(RuntimeError, match="stop"):
        Wire.of(cap3)


def test_unknown_interface_is_unavailable(iso: netns.Isolation) -> None:
    with pytest.raises(CaptureUnavailable) as ei:
        Capture("nonexistent0").start()
    assert "nonexistent0" in ei.value.reason
    assert _no_reader_threads()


# ------------------------------------------------------------ synthetic dissection


def _tcp_frames(
    specs: list[tuple[bool, str, int, int, bytes]], v6: bool = False
) -> list[tuple[float, bytes]]:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    cli, srv = ("2001:db8::1", "2001:db8::2") if v6 else ("10.0.0.1", "10.0.0.2")
    out = []
    for i, (from_server, flags, seq, ack, payload) in enumerate(specs):
        src, dst, sport, dport = (srv, cli, 80, 40000) if from_server else (cli, srv, 40000, 80)
        ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
        pkt = Ether() / ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack) / payload
        out.append((1000.0 + i * 0.001, bytes(pkt)))
    return out


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_reassembly_dedups_retransmissions_across_seq_wrap(v6: bool) -> None:
    isn_c, isn_s = 0xFFFFFFF0, 0x7FFFFFFE
    c = (isn_c + 1) & 0xFFFFFFFF
    s = isn_s + 1

    def cs(off: int) -> int:
        return (c + off) & 0xFFFFFFFF

    frames = _tcp_frames(
        [
            (False, "S", isn_c, 0, b""),
            (False, "S", isn_c, 0, b""),  # SYN retransmission: same connection
            (True, "SA", isn_s, c, b""),
            (False, "A", c, s, b""),
            (False, "PA", cs(0), s, b"0123456789"),  # crosses the 2**32 wrap
            (False, "PA", cs(16), s, b"GHIJ"),  # out of order
            (False, "PA", cs(10), s, b"ABCDEF"),
            (False, "PA", cs(0), s, b"0123456789"),  # full retransmission
            (False, "PA", cs(14), s, b"EFGHIJKL"),  # overlaps, carries new bytes
            (True, "PA", s, cs(22), b"hello"),
            (True, "PA", s, cs(22), b"hello"),
            (True, "FA", s + 5, cs(22), b""),
            (False, "FA", cs(22), s + 6, b""),
            (True, "A", s + 6, cs(23), b""),
        ],
        v6=v6,
    )
    (conn,) = Wire(frames).tcp_connections(80)
    assert conn.client[1] == 40000 and conn.server[1] == 80
    assert conn.payload(False) == b"0123456789ABCDEFGHIJKL"
    assert [s.index for s in conn.payload_segments(False)] == [5, 6, 7, 9]
    assert conn.payload(True) == b"hello"
    assert [s.index for s in conn.payload_segments(True)] == [10]
    assert conn.gaps(False) == [] and conn.gaps(True) == []
    fin = conn.fin(True)
    assert fin is not None and fin.index == 12
    assert conn.rst() == []
    assert conn.segments[4].flags == "PA" and conn.segments[11].flags == "FA"
    assert "#2 +1.000ms c>s S" in conn.describe()


def test_reassembly_reports_holes_and_splits_reused_tuples() -> None:
    frames = _tcp_frames(
        [
            (False, "S", 100, 0, b""),
            (True, "SA", 500, 101, b""),
            (False, "PA", 101, 501, b"abc"),
            (False, "PA", 107, 501, b"ghi"),  # bytes 3..6 were never captured
            (False, "R", 110, 0, b""),
            (False, "S", 9000, 0, b""),  # the same 4-tuple again, new ISN
            (True, "SA", 700, 9001, b""),
            (False, "PA", 9001, 701, b"second"),
        ]
    )
    first, second = Wire(frames).tcp_connections(80)
    assert first.payload(False) == b"abcghi"
    assert first.gaps(False) == [(3, 6)]
    assert [s.flags for s in first.rst(False)] == ["R"] and first.rst(True) == []
    assert second.payload(False) == b"second" and second.segments[0].index == 6


# ------------------------------------------------------------------- non-root paths


_SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture(scope="module")
def nobody_python() -> str:
    if os.geteuid() != 0:
        pytest.skip("switching to user nobody needs root")
    if netns.in_user_namespace():
        pytest.skip("running inside a user namespace: user nobody cannot be switched to")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    for cand in ("/usr/bin/python3.11", "/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand):
            r = subprocess.run(
                [*_SETPRIV, cand, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if r.returncode == 0 and r.stdout.strip() == "True":
                return cand
    pytest.skip("no Python >= 3.10 executable by user nobody")


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """World-readable copies of capture.py, netns.py and what they import (all
    stdlib-only), as the package tree the script imports them from."""
    d = Path(tempfile.mkdtemp(prefix="sockconf-nobody-", dir="/tmp"))
    try:
        d.chmod(0o755)
        for name in ("__init__.py", "evidence.py", "harness/__init__.py", "harness/capture.py",
                     "harness/netns.py", "harness/wire.py"):
            (d / "conformance" / name).parent.mkdir(mode=0o755, exist_ok=True)
            (d / "conformance").chmod(0o755)
            shutil.copy(REPO / "conformance" / name, d / "conformance" / name)
            (d / "conformance" / name).chmod(0o644)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _run_as_nobody(py: str, d: Path, body: str) -> dict:
    import textwrap

    script = "import sys\nsys.path.insert(0, '.')\nfrom conformance.harness import capture, netns\n"
    script += "from conformance.harness.wire import Wire\n"
    (d / "script.py").write_text(script + textwrap.dedent(body))
    (d / "script.py").chmod(0o644)
    r = subprocess.run(
        [*_SETPRIV, py, "-E", "-s", str(d / "script.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=d,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )
    assert r.returncode == 0, f"child (as nobody) failed:\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_unavailable_without_cap_net_raw(nobody_python: str, nobody_dir: Path) -> None:
    res = _run_as_nobody(
        nobody_python,
        nobody_dir,
        """
        import json, threading
        out = {"available": capture.available()}
        try:
            capture.Capture().start()
        except capture.CaptureUnavailable as e:
            out["reason"] = e.reason
        out["threads"] = threading.active_count()
        print(json.dumps(out))
        """,
    )
    assert res["available"] == capture.NO_CAP_NET_RAW
    assert res["reason"] == capture.NO_CAP_NET_RAW
    assert res["threads"] == 1


def test_lossless_10k_udp_as_nobody_in_user_namespace(
    nobody_python: str, nobody_dir: Path, record_property
) -> None:
    """Non-root: no SO_RCVBUFFORCE (needs CAP_NET_ADMIN in the initial namespace), so
    the buffer is capped by rmem_max -- still lossless for 10k packets."""
    r = subprocess.run([*_SETPRIV, "unshare", "-Urn", "true"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are not allowed here: {r.stderr.strip()}")
    res = _run_as_nobody(
        nobody_python,
        nobody_dir,
        """
        import json, socket, time
        assert netns.enter_user_namespace()
        iso = netns.isolate()
        n = 10_000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv, \\
             socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli:
            srv.bind(("127.0.0.1", 0))
            cap = capture.Capture()
            with cap:
                t0 = time.perf_counter()
                for i in range(n):
                    cli.sendto(i.to_bytes(4, "big"), srv.getsockname())
                dt = time.perf_counter() - t0
            seen = [int.from_bytes(d.payload, "big") for d in Wire.of(cap).udp_datagrams(srv.getsockname()[1])]
        print(json.dumps({"iso": [iso.kind, iso.wire], "drops": cap.drops,
                          "frames": len(cap.frames), "kernel": cap.kernel_packets,
                          "all": seen == list(range(n)), "rcvbuf": cap.rcvbuf_effective,
                          "pps": round(n / dt)}))
        """,
    )
    record_property("nobody_udp_pps", res["pps"])
    record_property("nobody_rcvbuf", res["rcvbuf"])
    assert res["iso"] == ["userns", True]
    assert res["drops"] == 0
    assert res["frames"] == res["kernel"] == 10_000
    assert res["all"]
