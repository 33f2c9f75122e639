"""OPT — the hello client's options (`[client.options]`), in front of peers the
suite controls: rcvbuf (the SYN's window scale), sndbuf, linger 0, keepalive, debug.

While the peer holds the greeting back, the client sits in read() on its connected
socket: that is when its descriptor is duplicated and read.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from conformance.checks.options import (
    KEEPALIVE,
    LATE_FACTOR,
    LATE_S,
    RCVBUF,
    SNDBUF,
    judge_probes,
)
from conformance.clauses import clause, client_side
from conformance.evidence import NOT_APPLICABLE, Inconclusive, Pass, Violation, require
from conformance.harness import packets, peers, sockopts
from conformance.harness.firewall import Silence
from conformance.harness.inspect import SockEntry
from conformance.harness.process import Proc
from conformance.harness.testbed import Testbed

pytestmark = client_side

HOLD_S = 8.0   # how long a holding peer keeps the greeting back at most


def client_declared(bed: Testbed, option: str) -> str:
    """The TCP transport the client's option is judged on."""
    program = bed.client_program
    if not program.supports(option):
        raise Inconclusive(f"the target does not declare option {option!r} for its client",
                           NOT_APPLICABLE)
    for t in ("tcp4", "tcp6"):
        if t in program.transports:
            return t
    raise Inconclusive(f"{option} is judged on a TCP connection; the client declares only "
                       f"{', '.join(program.transports)}", NOT_APPLICABLE)


def _hold(release: threading.Event) -> peers.Behaviour:
    """Accept, keep the greeting back until `release` (or HOLD_S), then greet."""
    def run(conn: socket.socket, log: peers.PeerLog) -> None:
        release.wait(HOLD_S)
        peers.greet()(conn, log)
    return run


@contextmanager
def held_client(bed: Testbed, transport: str, options: dict[str, dict[str, object]]
                ) -> Iterator[tuple[Proc, SockEntry, peers.PeerServer]]:
    """The client, started with `options`, connected to a peer that holds the
    greeting back; its connected socket (found in /proc).  On leaving, the peer
    greets and the client is waited for (killed if it does not end)."""
    release = threading.Event()
    with peers.PeerServer(_hold(release), transport) as peer:
        proc, _log = bed.spawn_client(bed.client_argv(transport, peer.port, options=options))
        try:
            entry = sockopts.connection_of(proc.pid, (sockopts.LOOPBACK[transport], peer.port or 0),
                                           timeout=5.0)
            if entry is None:
                raise Inconclusive(f"the client's connected socket was not found within 5 s "
                                   f"(client {proc.status()}, stderr {proc.stderr()[:120]!r})")
            yield proc, entry, peer
        finally:
            release.set()
            if proc.wait(5.0) is None:
                proc.kill()


def _read_client(bed: Testbed, option: str, params: dict[str, object], level: int, optname: int,
                 what: str) -> sockopts.OptionReading:
    transport = client_declared(bed, option)
    with held_client(bed, transport, {option: params}) as (_proc, entry, _peer):
        reading = sockopts.read_option(entry, level, optname, what)
    require(reading)
    return reading


@clause("OPT-DEBUG")
def test_client_debug(bed: Testbed) -> Pass:
    client_declared(bed, "debug")
    if not sockopts.in_initial_userns():
        raise Inconclusive("setting SO_DEBUG needs CAP_NET_ADMIN in the initial user namespace "
                           "(run as root): the client would fail with EACCES here")
    reading = _read_client(bed, "debug", {}, socket.SOL_SOCKET, socket.SO_DEBUG,
                           "SO_DEBUG of the client's connected socket")
    if reading.value != 1:
        raise Violation(f"with the debug option: {reading} (expected 1)")
    return Pass(str(reading), reading)


@clause("OPT-SNDBUF")
def test_client_sndbuf(bed: Testbed) -> Pass:
    transport = client_declared(bed, "sndbuf")
    cal = sockopts.calibrate(transport, client_sndbuf=SNDBUF)
    reading = _read_client(bed, "sndbuf", {"bytes": SNDBUF}, socket.SOL_SOCKET, socket.SO_SNDBUF,
                           "SO_SNDBUF of the client's connected socket")
    if reading.value != cal.extra["client_sndbuf"]:
        raise Violation(f"with sndbuf {SNDBUF}: {reading} (calibration {cal.extra['client_sndbuf']})",
                        expected=str(cal.extra["client_sndbuf"]), seen=str(reading.value))
    return Pass(f"{reading}, as the calibration", reading, cal)


@clause("OPT-RCVBUF")
def test_client_rcvbuf(bed: Testbed) -> Pass:
    """The client's receive buffer equals the calibration's, and its SYN (scapy,
    lossless capture) carries the calibrated window scale: set before connect()."""
    transport = client_declared(bed, "rcvbuf")
    bed.require_wire()
    cal = sockopts.calibrate(transport, client_rcvbuf=RCVBUF)
    with held_client(bed, transport, {"rcvbuf": {"bytes": RCVBUF}}) as (_proc, entry, peer):
        reading = sockopts.read_option(entry, socket.SOL_SOCKET, socket.SO_RCVBUF,
                                       "SO_RCVBUF of the client's connected socket")
        client = entry.local
    require(reading)
    assert peer.port is not None and isinstance(client, tuple)
    wire = bed.wire()
    require(wire)
    syn = packets.syn(packets.conversation(packets.tcp_packets(wire, peer.port),
                                           peer.port, client), peer.port)
    if syn is None:
        raise Inconclusive("no SYN of the client in the (lossless) capture")
    scale = syn.options.get("WScale")
    if reading.value != cal.extra["client_rcvbuf"] or scale != cal.client_wscale:
        raise Violation(f"with rcvbuf {RCVBUF}: {reading}, SYN window scale {scale} (calibration "
                        f"{cal.extra['client_rcvbuf']}, scale {cal.client_wscale}; set before "
                        "connect()?)")
    return Pass(f"{reading}; SYN {syn.describe()} window scale {scale}, as the calibration",
                reading, wire, cal)


@clause("OPT-LINGER")
def test_client_linger_abort(bed: Testbed) -> Pass:
    """linger 0: after the greeting the client's close() sends RST, no FIN."""
    transport = client_declared(bed, "linger")
    bed.require_wire()
    with peers.PeerServer(peers.greet(), transport) as peer:
        run = bed.run(bed.client_argv(transport, peer.port, options={"linger": {"seconds": 0}}),
                      timeout=5.0)
        peer.wait(5.0)
    if run.rc != 0:
        raise Inconclusive(f"the client did not complete the exchange ({run.describe()}): "
                           "CLI-1's concern")
    assert peer.port is not None
    wire = bed.wire()
    conns = wire.tcp_connections(peer.port)
    if not conns:
        raise Inconclusive("no connection of the client in the capture")
    client = conns[0].client
    conv = packets.conversation(packets.tcp_packets(wire, peer.port), peer.port, client)
    from_client = [p for p in conv if p.dst[1] == peer.port]
    fin = next((p for p in from_client if "F" in p.flags), None)
    rst = next((p for p in from_client if "R" in p.flags), None)
    if fin is not None:
        raise Violation(f"with linger 0 the client ended with FIN: {fin.describe()}")
    require(wire, context="no FIN from the client")
    if rst is None:
        raise Violation("with linger 0 the client sent neither FIN nor RST")
    return Pass(f"the client ended with RST ({rst.describe()}), no FIN", wire)


@clause("OPT-KEEPALIVE")
def test_client_keepalive(bed: Testbed) -> Pass:
    """keepalive 1 1 2 while the client waits for the greeting: once the peer is
    silenced (nftables), 2 probes 1 s apart after 1 s idle, then RST; the client
    then ends (its read fails) instead of waiting for ever."""
    transport = client_declared(bed, "keepalive")
    bed.require_wire()
    idle, interval, count = KEEPALIVE
    params: dict[str, object] = {"idle": idle, "interval": interval, "count": count}
    limit = (idle + count * interval) * LATE_FACTOR + LATE_S + 1.0
    with held_client(bed, transport, {"keepalive": params}) as (proc, entry, peer):
        assert peer.port is not None and isinstance(entry.local, tuple)
        client = entry.local
        with Silence(peer.port, client[1]):
            rc = proc.wait(limit)
    if rc is None:
        raise Violation(f"the client still waits {limit:.1f} s after its peer stopped answering "
                        "(keepalive did not end the connection)")
    wire = bed.wire()
    require(wire)
    conv = packets.conversation(packets.tcp_packets(wire, peer.port), peer.port, client)
    probes, rst, since = judge_probes(conv, client[1])
    timing = ", ".join(f"+{since(p):.2f} s" for p in probes)
    return Pass(f"probes at {timing}, RST at +{since(rst):.2f} s; the client then "
                f"{proc.status()}", wire)
