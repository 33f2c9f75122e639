"""ECHO — byte-stream and datagram echo (ECHO-1..5; OPT-OOBINLINE is in test_opt.py).

Every stream check reads while it writes, as a real echo client must: a server
that echoes as it reads would otherwise block on a full buffer and look broken.
The fuzz checks (hypothesis) reuse one running server across examples (echo
servers are concurrent by profile) and start a new one only after a crash, so a
crash is reported by the example that caused it and shrinking stays meaningful.
"""

from __future__ import annotations

import random
import socket
import threading

import pytest

from conformance.checks import support
from conformance.checks.fuzzing import Fuzz, LiveServer
from conformance.clauses import clause, transports
from conformance.evidence import Inconclusive, Pass, Violation
from conformance.harness import peers
from conformance.harness.exchange import EchoConnection
from conformance.harness.testbed import Server, Testbed

MiB = 1 << 20
STREAMS = ("tcp4", "tcp6", "unix")


def payload_of(size: int, seed: int) -> bytes:
    """Deterministic random bytes (NULs, 0xff, every value): the same (size, seed)
    always gives the same payload, so a finding replays exactly."""
    return random.Random(seed).randbytes(size)


MAX_WRITES = 256


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` cut into writes of the given sizes (cycled) — at most MAX_WRITES of
    them, then the rest in 1 MiB writes (16 MiB in 1-byte writes would take
    minutes per example and teach nothing more than the first 256)."""
    if not data:
        return []
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)] if sizes and k < MAX_WRITES else MiB
        out.append(data[i:i + n])
        i += n
        k += 1
    return out


def _show(data: bytes) -> str:
    return f"{len(data)} byte(s)" + (f" {data[:48]!r}..." if len(data) > 48 else f" {data!r}")


def first_difference(sent: bytes, got: bytes) -> str:
    n = min(len(sent), len(got))
    i = next((k for k in range(n) if sent[k] != got[k]), n)
    if i == n and len(sent) == len(got):
        return "identical"
    return (f"first difference at byte {i}: sent {sent[i:i + 16]!r}, got {got[i:i + 16]!r} "
            f"(sent {len(sent)} bytes, got {len(got)})")


# How long an echo may pause once everything is written.  NUDGE: then we shut
# down our side, so a server that lost bytes ends the exchange at once (FIN)
# while one that still owes bytes sends them; IDLE: then it has stalled.
NUDGE, IDLE = 0.1, 3.0


def echo_roundtrip(srv: Server, chunks: list[bytes], *, half_close: bool, timeout: float,
                   gap: float = 0.0) -> peers.Received:
    scale = srv.timeout_scale      # the waits are hang guards: scaled
    with support.blamed_on_target("connecting", srv):
        sock = peers.connect(srv.transport, srv.port, srv.path, timeout=5.0 * scale)
    data = b"".join(chunks)
    try:
        return peers.stream(sock, chunks, expect=len(data), timeout=timeout * scale,
                            half_close=half_close, gap=gap, expected=data,
                            nudge=None if half_close else NUDGE, idle=IDLE * scale)
    finally:
        sock.close()


def _timeout_for(size: int) -> float:
    # Generous: only to stop a hang; 16 MiB through a slow interpreter stays well inside.
    return 10.0 + size / MiB


# -- ECHO-1 -----------------------------------------------------------------------------------

FIXED = [("empty", 0, 1), ("one-byte", 1, 1), ("all-byte-values", 256, 0),
         ("nul-heavy-64KiB", 64 * 1024, 2), ("1MiB", MiB, 3), ("16MiB", 16 * MiB, 4)]


@transports(*STREAMS)
@clause("ECHO-1")
@pytest.mark.parametrize("name,size,seed", FIXED, ids=[f[0] for f in FIXED])
def test_every_byte_back(bed: Testbed, server_transport: str, name: str, size: int,
                         seed: int) -> Pass:
    if name == "all-byte-values":
        data = bytes(range(256))
    elif name.startswith("nul-heavy"):
        data = (b"\0" * 7 + b"x") * (size // 8)
    else:
        data = payload_of(size, seed)
    srv = bed.start_server(server_transport)
    # 64 KiB writes, no half-close: ECHO-1 is about the bytes, not about the end.
    got = echo_roundtrip(srv, chunked(data, [64 * 1024]), half_close=False,
                         timeout=_timeout_for(size))
    if got.data != data:
        raise Violation(f"{name}: sent {_show(data)}, got back {len(got.data)} byte(s) then "
                        f"{got.end}: {first_difference(data, got.data)}")
    return Pass(f"{name} on {server_transport}: {len(data)} byte(s) in 64 KiB writes came "
                "back exactly")


# Bytes that break C-string, line, terminal or sign-extension handling, drawn on
# purpose: uniform bytes hit them too rarely to rely on.
SPECIAL = b"\x00\xff\n\r\x04\x1a\x7f\x80"


def _specialised(data: bytes) -> bytes:
    """`data` with every byte below 0x40 replaced by one of SPECIAL (a quarter of
    the bytes; b'\x00' stays b'\x00', so a shrunk finding reads the same)."""
    return bytes(SPECIAL[b & 7] if b < 0x40 else b for b in data)


def write_sizes(codes: bytes) -> list[int]:
    """One write size per code byte: 2**k - 1, 2**k or 2**k + 1 for k in 0..20
    (1 B .. 1 MiB + 1, the sizes where buffering and framing bugs live); b'\x00'
    is a 1-byte write."""
    return [max(1, (1 << (c % 21)) + (c // 21) % 3 - 1) for c in codes]


@transports(*STREAMS)
@clause("ECHO-1")
def test_echo_fuzz(bed: Testbed, server_transport: str) -> Pass:
    """Arbitrary payloads (0 B..16 MiB) in arbitrary write sizes; invariant: what
    comes back equals what went in, and the server is alive afterwards.

    One connection carries example after example while each comes back exactly
    (an echo is complete when every byte is back: nothing to wait for); any other
    outcome is judged again on a fresh connection, so a finding is the example's
    own and shrinks as one."""
    from hypothesis import given, note
    from hypothesis import strategies as st

    live = LiveServer(bed, server_transport)
    fuzz = Fuzz()
    conn = EchoConnection()

    # payload = core * repeat: arbitrary bytes up to 4 KiB, repeated up to 16 MiB.
    # Both shrink (repeat to 1, core to the fewest, smallest bytes), so a finding
    # ends as e.g. core=b'\x00', repeat=1 — where random 16 MiB payloads (the
    # fixed cases above) would shrink poorly and slowly.  Binary draws, not lists
    # of integers: hypothesis generates them several times faster.
    core_bytes = st.binary(max_size=4096) | st.binary(max_size=4096).map(_specialised)

    @given(core=core_bytes, repeat=st.integers(1, 4096),
           sizes=st.binary(min_size=1, max_size=12).map(write_sizes))
    def example(core: bytes, repeat: int, sizes: list[int]) -> None:
        # A death after an example echoed exactly (liveness is only looked at,
        # not waited for, after each) is reported here by the live server.
        srv = live.get()
        data = core * repeat
        chunks = chunked(data, sizes)
        note(f"payload {_show(data)}; writes of {[len(c) for c in chunks][:20]}")
        timeout = _timeout_for(len(data))
        scale = srv.timeout_scale      # the waits are hang guards: scaled
        with support.blamed_on_target("connecting", srv):
            got, carried = conn.echo(srv, chunks, timeout=timeout * scale, nudge=NUDGE,
                                     idle=IDLE * scale)
        if got.data != data:
            # A death shows here first (the exchange broke off): say so.
            live.require_alive(f"sending {_show(data)}", grace=0.02)
        if got.data != data and carried:
            # Not this example's alone yet: the connection had carried others.
            again = echo_roundtrip(srv, chunks, half_close=False, timeout=timeout)
            if again.data == data:
                raise Violation(
                    f"on a connection that had carried {carried} exact echo(es), sent "
                    f"{_show(data)} in {len(chunks)} write(s), got back {len(got.data)} "
                    f"byte(s) then {got.end}: {first_difference(data, got.data)} (on a fresh "
                    "connection the same writes came back exactly)")
            got = again
        if got.data != data:
            raise Violation(f"sent {_show(data)} in {len(chunks)} write(s), got back "
                            f"{len(got.data)} byte(s) then {got.end}: "
                            f"{first_difference(data, got.data)}")
        live.require_alive(f"after echoing {_show(data)}", grace=0)
        live.judged(f"{_show(data)} (echoed exactly)")
        fuzz.judged()

    try:
        passed = fuzz.run(example, f"arbitrary payloads in arbitrary writes on {server_transport} "
                                   "came back exactly, byte for byte, the server alive after "
                                   "each")
    finally:
        conn.close()
    live.require_alive(f"after the last of {fuzz.count} examples ({live.last})", grace=0.02)
    return passed


# -- ECHO-2 -----------------------------------------------------------------------------------

HALF_CLOSE = [("nothing", 0), ("small", 100), ("1MiB", MiB), ("8MiB", 8 * MiB)]


@transports(*STREAMS)
@clause("ECHO-2")
@pytest.mark.parametrize("name,size", HALF_CLOSE, ids=[h[0] for h in HALF_CLOSE])
def test_half_close(bed: Testbed, server_transport: str, name: str, size: int) -> Pass:
    """Write, shut down our side at once (while echoes are still pending), keep
    reading: everything comes back, then FIN."""
    data = payload_of(size, size)
    srv = bed.start_server(server_transport)
    got = echo_roundtrip(srv, chunked(data, [256 * 1024]), half_close=True,
                         timeout=_timeout_for(size))
    _judge_half_close(srv, data, got)
    return Pass(f"{name} on {server_transport}: {len(data)} byte(s) then SHUT_WR at once: "
                "all echoed, then FIN")


def _echoes_plainly(srv: Server, data: bytes) -> bool:
    """Does the server echo `data` right when nothing else is asked of it (no
    early half-close, one client)?  If not, that is ECHO-1's failure, and the
    clause that called this cannot judge its own property with this payload."""
    if srv.proc.poll() is not None:
        return False
    got = echo_roundtrip(srv, chunked(data, [256 * 1024]), half_close=False,
                         timeout=_timeout_for(len(data)))
    return got.data == data


def _judge_half_close(srv: Server, data: bytes, got: peers.Received) -> None:
    if (got.data != data or got.end != "fin") and not _echoes_plainly(srv, data):
        raise Inconclusive(f"the server does not echo these {len(data)} bytes even without "
                           "a half-close (ECHO-1's concern): nothing to judge here")
    if got.data != data:
        raise Violation(f"sent {_show(data)} then SHUT_WR: got back {len(got.data)} byte(s) "
                        f"then {got.end}: {first_difference(data, got.data)}")
    if got.end != "fin":
        raise Violation(f"sent {_show(data)} then SHUT_WR: all echoed, but then {got.end} "
                        "instead of FIN (the server must close after the pending echo)")


@transports(*STREAMS)
@clause("ECHO-2")
def test_half_close_fuzz(bed: Testbed, server_transport: str) -> Pass:
    """Half-close timing varied: right after the last write, or after a pause,
    with writes spread out; everything is echoed, then FIN."""
    from hypothesis import given, note
    from hypothesis import strategies as st

    live = LiveServer(bed, server_transport)
    fuzz = Fuzz()

    @given(size=st.integers(0, 4 * MiB), seed=st.integers(0, 2**32 - 1),
           sizes=st.lists(st.integers(1, MiB), min_size=1, max_size=8),
           gap=st.sampled_from([0.0, 0.0, 0.001, 0.02]))
    def example(size: int, seed: int, sizes: list[int], gap: float) -> None:
        srv = live.get()
        data = payload_of(size, seed)
        chunks = chunked(data, sizes)
        note(f"payload {_show(data)}; writes of {[len(c) for c in chunks][:20]}; gap {gap}")
        got = echo_roundtrip(srv, chunks, half_close=True, timeout=_timeout_for(size), gap=gap)
        if (got.data != data or got.end != "fin") and not _echoes_plainly(live.get(), data):
            fuzz.reject(f"{_show(data)} is not echoed even without a half-close (ECHO-1's "
                        "concern)")
        _judge_half_close(srv, data, got)
        live.require_alive(f"after {_show(data)} and SHUT_WR")
        fuzz.judged()

    return fuzz.run(example, f"payloads then SHUT_WR at varied moments on {server_transport}: "
                             "all echoed, then FIN")


# -- ECHO-3 -----------------------------------------------------------------------------------

@transports(*STREAMS)
@clause("ECHO-3")
@pytest.mark.parametrize("clients", [2, 8])
def test_streams_never_mix(bed: Testbed, server_transport: str, clients: int) -> Pass:
    """Clients write their own distinct streams at the same time, in small
    interleaved writes; each must get exactly its own bytes back."""
    srv = bed.start_server(server_transport)
    socks: list[socket.socket] = []
    try:
        with support.blamed_on_target(f"connecting {clients} clients", srv):
            for _ in range(clients):
                socks.append(peers.connect(srv.transport, srv.port, srv.path,
                                           timeout=5.0 * srv.timeout_scale))
    except BaseException:
        for s in socks:
            s.close()
        raise
    size = 256 * 1024
    datas = [bytes([65 + i]) * 16 + payload_of(size, 1000 + i) for i in range(clients)]
    results: list[peers.Received | None] = [None] * clients
    start = threading.Barrier(clients)

    def run(i: int) -> None:
        start.wait(5.0)
        try:
            results[i] = peers.stream(socks[i], chunked(datas[i], [1024 + 97 * i]),
                                      expect=len(datas[i]), timeout=20.0 * srv.timeout_scale,
                                      half_close=False, expected=datas[i], nudge=NUDGE,
                                      idle=IDLE * srv.timeout_scale)
        finally:
            # Done: let a server that serves one client at a time (LIFE-7's
            # concern, not this clause's) move on to the next.
            socks[i].close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30.0 * srv.timeout_scale)
    finally:
        for s in socks:
            s.close()
    for i, got in enumerate(results):
        if got is None:
            raise Violation(f"client {i + 1} of {clients}: no result (its exchange hung)")
        if got.data != datas[i] and not _echoes_plainly(srv, datas[i]):
            raise Inconclusive(f"client {i + 1}'s bytes are not echoed even when it is alone "
                               "(ECHO-1's concern): mixing cannot be judged")
        if got.data != datas[i]:
            foreign = [j + 1 for j in range(clients) if j != i and datas[j][16:48] in got.data]
            raise Violation(
                f"client {i + 1} of {clients} (concurrent) sent {_show(datas[i])}, got "
                f"{len(got.data)} byte(s) then {got.end}: {first_difference(datas[i], got.data)}"
                + (f"; it contains bytes of client(s) {foreign}" if foreign else ""))
    return Pass(f"{clients} concurrent clients on {server_transport}, "
                f"{len(datas[0])} bytes each in small interleaved writes: each got exactly "
                "its own bytes back")


# -- ECHO-4 -----------------------------------------------------------------------------------

DATAGRAMS = [0, 1, 100, 1472, 1473, 8192, 65507]


def _udp_echo(srv: Server, sock: socket.socket, data: bytes, timeout: float = 3.0) -> bytes | None:
    if srv.port is None:
        raise RuntimeError("a UDP server without a port")
    # ECONNREFUSED here is the ICMP port-unreachable of a server that is gone.
    with support.blamed_on_target(f"a datagram of {len(data)} byte(s)", srv):
        sock.sendto(data, ("127.0.0.1", srv.port))
        sock.settimeout(timeout * srv.timeout_scale)
        try:
            got, _ = sock.recvfrom(65536)
        except TimeoutError:
            return None
    return got


def _udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("127.0.0.1", 0))
    return s


@clause("ECHO-4")
def test_datagrams(bed: Testbed) -> Pass:
    """Two senders alternate; each datagram (0..65507 bytes) comes back whole,
    as one datagram, to its own sender — and never to the other."""
    bed.require_transport(bed.server_program, "udp4")
    srv = bed.start_server("udp4")
    a, b = _udp_socket(), _udp_socket()
    try:
        for k, size in enumerate(DATAGRAMS * 2):
            mine, other = (a, b) if k % 2 == 0 else (b, a)
            data = payload_of(size, k)
            got = _udp_echo(srv, mine, data)
            if got is None:
                raise Violation(f"datagram of {size} byte(s): no reply within "
                                f"{3 * srv.timeout_scale:g} s")
            if got != data:
                raise Violation(f"datagram of {size} byte(s) came back as {len(got)} byte(s): "
                                f"{first_difference(data, got)}")
            other.settimeout(0.0)
            try:
                stray, _ = other.recvfrom(65536)
            except BlockingIOError:
                continue
            raise Violation(f"a datagram of {len(stray)} byte(s) reached the other sender")
    finally:
        a.close()
        b.close()
    return Pass(f"{len(DATAGRAMS) * 2} datagrams of {min(DATAGRAMS)}..{max(DATAGRAMS)} bytes "
                "from two alternating senders: each came back whole, once, to its sender only")


@clause("ECHO-4")
def test_datagram_fuzz(bed: Testbed) -> Pass:
    bed.require_transport(bed.server_program, "udp4")
    from hypothesis import given, note
    from hypothesis import strategies as st

    live = LiveServer(bed, "udp4")
    fuzz = Fuzz("datagrams")
    sock = _udp_socket()

    @given(data=st.one_of(st.binary(max_size=2048),
                          st.builds(payload_of, st.integers(2049, 65507), st.integers(0, 2**32))))
    def example(data: bytes) -> None:
        srv = live.get()
        note(f"datagram {_show(data)}")
        # A reply to an earlier example that arrived late must not be taken
        # for this one's: drain first.
        sock.settimeout(0.0)
        try:
            while True:
                sock.recvfrom(65536)
        except BlockingIOError:
            pass
        got = _udp_echo(srv, sock, data)
        if got != data:
            raise Violation(f"datagram {_show(data)}: "
                            + (f"no reply within {3 * srv.timeout_scale:g} s" if got is None
                               else f"reply {_show(got)}: {first_difference(data, got)}"))
        live.require_alive(f"after datagram {_show(data)}")
        fuzz.judged()

    try:
        return fuzz.run(example, "arbitrary datagrams came back whole")
    finally:
        sock.close()


# -- ECHO-5 --------------------------------------------------------------------------------

def _urgent_exchange(bed: Testbed, transport: str, inline: bool) -> bytes:
    """b"ab", then b"X" as urgent data (MSG_OOB), then b"cd", then SHUT_WR; what
    came back before the server's FIN."""
    options: dict[str, dict[str, object]] | None = {"oobinline": {}} if inline else None
    srv = bed.start_server(transport, options=options)
    with support.blamed_on_target("b'ab', urgent b'X', b'cd', SHUT_WR", srv):
        sock = peers.connect(srv.transport, srv.port, srv.path, timeout=5.0)
        try:
            peers.send_urgent(sock)
            got = peers.read_until_end(sock, 5.0 * srv.timeout_scale)
        finally:
            sock.close()
    if got.end != "fin":
        raise Violation(f"sent b'ab', urgent b'X', b'cd', SHUT_WR: got {got.describe()} "
                        "(no FIN: the exchange did not complete)")
    return got.data


@transports("tcp4", "tcp6")
@clause("ECHO-5")
def test_urgent_byte_not_inline(bed: Testbed, server_transport: str) -> Pass:
    got = _urgent_exchange(bed, server_transport, inline=False)
    if got != b"abcd":
        raise Violation(f"without SO_OOBINLINE the urgent byte is not part of the stream: sent "
                        f"b'ab' + urgent b'X' + b'cd', expected b'abcd' back, got {got!r}")
    return Pass(f"without SO_OOBINLINE on {server_transport}: b'ab' + urgent b'X' + b'cd' "
                "came back as b'abcd', then FIN")


def _inline_declared(bed: Testbed) -> None:
    if not bed.server_program.supports("oobinline"):
        raise Inconclusive("the target does not declare option 'oobinline'", "not-applicable")


@transports("tcp4", "tcp6")
@clause("ECHO-5")
def test_urgent_byte_inline(bed: Testbed, server_transport: str) -> Pass:
    _inline_declared(bed)
    got = _urgent_exchange(bed, server_transport, inline=True)
    if got != b"abXcd":
        raise Violation(f"with the declared oobinline option: sent b'ab' + urgent b'X' + b'cd', "
                        f"expected b'abXcd' back (urgent byte in order), got {got!r}")
    return Pass(f"with the declared oobinline option on {server_transport}: b'ab' + urgent "
                "b'X' + b'cd' came back as b'abXcd', then FIN")
