"""What the OPT checks share: whether an option applies, and the target's sockets
of a connection of ours (listener, accepted socket) to read options from."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

from conformance.evidence import NOT_APPLICABLE, Inconclusive, Violation
from conformance.harness import packets, peers, sockopts
from conformance.harness.inspect import SockEntry
from conformance.harness.testbed import Server, Testbed

# The values the suite passes (REQUIREMENTS.md: "the values the suite passes are
# its own").  8192 gives a buffer and a window scale (16384, scale 0) that differ
# from every default; 24000 a send buffer (48000) that auto-tuning never lands on;
# backlog 3 differs from the customary 5 and SOMAXCONN.
RCVBUF = 8192
SNDBUF = 24000
BACKLOG = 3
KEEPALIVE = (1, 1, 2)       # idle, interval, count
LATE_FACTOR, LATE_S = 1.15, 0.1   # timing tolerance: +15 % + 0.1 s late ...
EARLY_S = 0.02              # ... never early (only the capture's timestamp jitter)


def declared(bed: Testbed, option: str) -> None:
    if not bed.server_program.supports(option):
        raise Inconclusive(f"the target does not declare option {option!r}", NOT_APPLICABLE)


def tcp_transport(bed: Testbed, option: str) -> str:
    for t in ("tcp4", "tcp6"):
        if t in bed.server_program.transports:
            return t
    raise Inconclusive(f"{option} is judged on a TCP connection; the target declares only "
                       f"{', '.join(bed.server_program.transports)}", NOT_APPLICABLE)


@contextlib.contextmanager
def connected(srv: Server, sock: socket.socket | None = None
              ) -> Iterator[tuple[socket.socket, SockEntry]]:
    """A connection of ours to `srv` (a new one, or `sock`), and the target's
    accepted socket of it (found in /proc); ours is closed on leaving, the
    target's is left to the target."""
    if sock is None:
        try:
            sock = peers.connect(srv.transport, srv.port, None, timeout=5.0)
        except OSError as e:
            raise Violation(f"could not connect to the server ({e}); it {srv.status()}"
                            ) from None
    try:
        peer = sock.getsockname()[:2]
        entry = sockopts.connection_of(srv.pid, peer)
        if entry is None:
            raise Inconclusive(f"the server's socket of our connection from {peer} was not found "
                               f"in its descriptors within 2 s (server {srv.status()})")
        yield sock, entry
    finally:
        sock.close()


def listener(srv: Server) -> SockEntry:
    assert srv.port is not None
    entry = sockopts.listener_of(srv.pid, srv.port)
    if entry is None:
        raise Inconclusive(f"the server's listening socket on port {srv.port} was not found "
                           f"(server {srv.status()})")
    return entry


def judge_probes(conv: list[packets.TcpPacket], port: int
                 ) -> tuple[list[packets.TcpPacket], packets.TcpPacket,
                            Callable[[packets.TcpPacket], float]]:
    """Keepalive with the suite's values, judged on a conversation (dissected with
    scapy) whose peer stopped answering: the probes and the RST that the target
    (on `port`) sent, and the clock of the idle time (seconds since it began)."""
    idle, interval, count = KEEPALIVE
    from_target = [p for p in conv if p.src[1] == port]
    rst = next((p for p in from_target if "R" in p.flags), None)
    if rst is None:
        raise Violation(f"no RST from the target after the peer stopped answering: "
                        f"{[p.describe() for p in from_target[-4:]]}")
    # A probe: a bare ACK without payload whose seq is one below what the peer
    # acknowledged last (seq = snd_una - 1), so that the peer must answer it.
    probes = []
    acked = None
    for p in conv:
        if p.index >= rst.index:
            break
        if p.dst[1] == port and "A" in p.flags:
            acked = p.ack
        elif (p.src[1] == port and p.flags == "A" and p.payload_len == 0
              and acked is not None and (p.seq + 1) % 2**32 == acked):
            probes.append(p)
    first = probes[0] if probes else rst
    heard = [p for p in conv if p.dst[1] == port and p.index < first.index]
    if not heard:
        raise Inconclusive("no packet of the peer before the probes in the capture")
    since = _idle_clock(conv, port, heard[-1], first)
    if len(probes) != count:
        raise Violation(f"keepalive {idle} {interval} {count}: {len(probes)} probe(s) before the "
                        f"RST, expected {count}: " + "; ".join(
                            f"+{since(p):.2f} s {p.describe()}" for p in [*probes, rst]))
    due = [idle + k * interval for k in range(count + 1)]
    for p, at in zip([*probes, rst], due, strict=True):
        took = since(p)
        if not at - EARLY_S <= took <= at * LATE_FACTOR + LATE_S:
            raise Violation(f"keepalive {idle} {interval} {count}: {p.describe()} at +{took:.3f} s "
                            f"after the last packet of the peer, expected +{at} s "
                            f"(up to {at * LATE_FACTOR + LATE_S:.2f} s)")
    return probes, rst, since


def _idle_clock(conv: list[packets.TcpPacket], port: int, heard: packets.TcpPacket,
                first: packets.TcpPacket) -> Callable[[packets.TcpPacket], float]:
    """Seconds from the start of the idle time to a packet of the target.

    The target's own clock where it can be read: the TCP timestamps (TSval, ms)
    of its packets, counted from its last packet before the last one it heard
    (so never after the true idle start: a delay can only look late, never
    early).  The capture's receive times are the fallback; they are taken by a
    reader thread and can lag under load, which could make a probe look early."""
    before = [p for p in conv if p.src[1] == port and p.index < heard.index]
    stamped = bool(before) and all("Timestamp" in p.options for p in [before[-1], first])
    if stamped:
        ref = before[-1].options["Timestamp"][0]

        def by_tsval(p: packets.TcpPacket) -> float:
            ts = p.options.get("Timestamp")
            if ts is None:
                return p.time - heard.time
            return ((ts[0] - ref) % 2**32) / 1000.0
        return by_tsval
    return lambda p: p.time - heard.time
