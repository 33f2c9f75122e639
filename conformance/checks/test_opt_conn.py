"""OPT — the options that shape a connection's life: SO_REUSEADDR (restart during
TIME_WAIT), SO_LINGER (how a connection ends) and keepalive (probes, then RST).

These are judged on behaviour, on the wire (lossless capture, scapy) and in
sock_diag; a descriptor reading backs the cases where the wire cannot tell (a
drain-style program's FIN comes from shutdown(), whatever SO_LINGER says).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from conformance.checks import profiles, support
from conformance.checks.options import (
    KEEPALIVE,
    LATE_FACTOR,
    LATE_S,
    connected,
    declared,
    judge_probes,
    tcp_transport,
)
from conformance.clauses import clause
from conformance.evidence import NOT_APPLICABLE, Doubt, Inconclusive, Pass, Violation, require
from conformance.harness import inspect, packets, peers, sockopts
from conformance.harness.firewall import Silence
from conformance.harness.testbed import Server, Testbed

BLOCK_SAMPLE_S = 0.05  # /proc sampling and scheduling slack around close()'s 1 s


@dataclass(frozen=True)
class Seen:
    """A thread of the target observed in close() in /proc (found: sound)."""
    what: str

    def doubt(self) -> Doubt | None:
        return None


# -- shared ---------------------------------------------------------------------------------------

def _time_wait(port: int) -> list[dict[str, object]]:
    return [r for r in inspect.tcp_diag(port, "tcp", local_only=True)
            if r["state"] == "TIME_WAIT"]


def _server_closes_first(bed: Testbed, srv: Server) -> sockopts.DiagRecord:
    """One connection that the server closes first, so that the TIME_WAIT is on its
    side (hello: the one-shot exchange; concurrent: SIGTERM while connected)."""
    assert srv.port is not None
    if profiles.of(bed).one_shot:
        got = peers.fetch_greeting(srv.transport, srv.port, None, timeout=5.0)
        if srv.wait_exit(5.0) is None:
            raise Inconclusive(f"the server did not exit after one client ({got.describe()}): "
                               "LIFE-3's concern")
    else:
        support.stop_while_connected(bed, srv)
    waiting = _time_wait(srv.port)
    if not waiting:
        raise Inconclusive("the server did not close first (no TIME_WAIT on its side): "
                           "nothing to restart into")
    return sockopts.DiagRecord(f"TIME_WAIT on port {srv.port}", dict(waiting[0]))


# -- OPT-REUSEADDR --------------------------------------------------------------------------------

@clause("OPT-REUSEADDR")
def test_reuseaddr(bed: Testbed) -> Pass:
    """With the option: a restart during the server's TIME_WAIT listens; a second
    instance beside a listening one does not (SO_REUSEPORT would let it); where the
    option can be left off, a restart without it during TIME_WAIT does not listen."""
    declared(bed, "reuseaddr")
    transport = tcp_transport(bed, "reuseaddr")
    on: dict[str, dict[str, object]] = {"reuseaddr": {}}
    wait = bed.server_program.startup_timeout
    first = bed.start_server(transport, options=on, name="first")
    port = first.port
    assert port is not None
    tw = _server_closes_first(bed, first)
    restart = bed.start_server(transport, port=port, options=on, ready=False, name="restart")
    what, _ = bed.exit_or_listen(restart.proc, wait)
    if what != "listen":
        raise Violation(f"with reuseaddr, a restart on port {port} during TIME_WAIT did not listen: "
                        f"{restart.proc.status()}, stderr {restart.proc.stderr()[:160]!r}")
    bed.wait_ready(restart)
    second = bed.start_server(transport, port=port, options=on, ready=False, name="second")
    what, _ = bed.exit_or_listen(second.proc, wait)
    if what == "listen":
        raise Violation(f"with reuseaddr, a second instance listens on port {port} beside the "
                        "running one: that is SO_REUSEPORT's behaviour, not SO_REUSEADDR's")
    second.kill()
    evidence = (f"restart during TIME_WAIT listened; a second instance beside it did not "
                f"({second.proc.status()})")
    if bed.server_program.options["reuseaddr"]:
        tw2 = _server_closes_first(bed, restart)
        off = bed.start_server(transport, port=port, ready=False, name="without")
        what, _ = bed.exit_or_listen(off.proc, wait)
        if what == "listen":
            raise Violation(f"without the reuseaddr option a restart on port {port} during "
                            "TIME_WAIT listens too: the option is not what makes it work")
        off.kill()
        evidence += f"; without the option a restart during TIME_WAIT did not ({off.proc.status()})"
        return Pass(evidence, tw, tw2)
    return Pass(evidence, tw)


# -- OPT-LINGER ----------------------------------------------------------------------------------

def _exchange(bed: Testbed, sock: socket.socket) -> peers.Received:
    """The profile's normal exchange on our socket, ending with what the server
    sent up to its FIN or RST: hello reads; echo/jsondoc send, SHUT_WR, read."""
    payload = profiles.of(bed).probe
    if payload:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server already ended the connection: what it sent is readable
    return peers.read_until_end(sock, 5.0)


def _linger_reading(srv: Server, peer: tuple[str, int]) -> sockopts.OptionReading | None:
    entry = sockopts.connection_of(srv.pid, peer, timeout=1.0)
    if entry is None:
        return None
    return sockopts.read_option(entry, socket.SOL_SOCKET, socket.SO_LINGER,
                                "SO_LINGER of the accepted socket", buflen=8)


@clause("OPT-LINGER")
def test_linger_abort(bed: Testbed) -> Pass:
    """linger 0: RST and no FIN, every byte readable before ECONNRESET, no
    TIME_WAIT on the server side; a drain-style program (shutdown() before close()
    sends FIN by design) by SO_LINGER (1, 0) on a duplicate of its socket."""
    declared(bed, "linger")
    transport = tcp_transport(bed, "linger")
    bed.require_wire()
    srv = bed.start_server(transport, options={"linger": {"seconds": 0}})
    assert srv.port is not None
    sock = peers.connect(transport, srv.port, None, timeout=5.0)
    try:
        peer = sock.getsockname()[:2]
        reading = _linger_reading(srv, peer)
        got = _exchange(bed, sock)
    finally:
        sock.close()
    if profiles.of(bed).one_shot:
        srv.wait_exit(5.0)
    support.settle(0.1)
    waiting = _time_wait(srv.port)
    wire = bed.wire()
    conv = packets.conversation(packets.tcp_packets(wire, srv.port), srv.port, peer)
    from_server = [p for p in conv if p.src[1] == srv.port]
    fin = next((p for p in from_server if "F" in p.flags), None)
    rst = next((p for p in from_server if "R" in p.flags), None)
    if fin is not None:
        # shutdown(SHUT_WR) sent this FIN; close() with linger 0 never does.
        if reading is None:
            raise Inconclusive(f"the server sent FIN ({fin.describe()}) and its socket of the "
                               "connection could not be found to read SO_LINGER")
        require(reading)
        if reading.ints()[:2] != (1, 0):
            raise Violation(f"with linger 0 the server ended with FIN ({fin.describe()}) and "
                            f"{reading} (expected (1, 0))")
        return Pass(f"drain-style end (FIN from shutdown(): {fin.describe()}); {reading}", reading)
    require(wire, context="no FIN from the server")
    if rst is None:
        raise Violation(f"with linger 0 the server sent neither FIN nor RST; socket saw "
                        f"{got.describe()}")
    sent = b"".join(c.payload(from_server=True) for c in wire.tcp_connections(srv.port)
                    if c.client[1] == peer[1])
    if got.end != "rst" or got.data != sent:
        raise Violation(f"with linger 0: the server sent {len(sent)} byte(s) then RST; our socket "
                        f"read {got.describe()} (expected every byte, then ECONNRESET)")
    if waiting:
        raise Violation(f"with linger 0 the server's side is left in TIME_WAIT: {waiting[0]}")
    evidence = (f"RST ({rst.describe()}), no FIN; read {len(got.data)} byte(s) then ECONNRESET; "
                "no TIME_WAIT on the server side")
    if reading is not None and reading.doubt() is None:
        evidence += f"; {reading}"
    return Pass(evidence, wire)


@clause("OPT-LINGER")
def test_linger_seconds(bed: Testbed) -> Pass:
    """linger 1: SO_LINGER (1, 1) on a duplicate of the accepted socket, and the
    exchange loses no data (it ends with every byte, then FIN)."""
    declared(bed, "linger")
    transport = tcp_transport(bed, "linger")
    srv = bed.start_server(transport, options={"linger": {"seconds": 1}})
    with connected(srv) as (sock, accepted):
        reading = sockopts.read_option(accepted, socket.SOL_SOCKET, socket.SO_LINGER,
                                       "SO_LINGER of the accepted socket", buflen=8)
        got = _exchange(bed, sock)
    require(reading)
    if reading.ints()[:2] != (1, 1):
        raise Violation(f"with linger 1: {reading} (expected (1, 1))")
    if got.end != "fin" or not got.data:
        raise Violation(f"with linger 1 the exchange ended with {got.describe()} "
                        "(expected the whole answer, then FIN)")
    return Pass(f"{reading}; the exchange ended with {len(got.data)} byte(s), then FIN", reading)


@clause("OPT-LINGER")
def test_linger_blocks(bed: Testbed) -> Pass:
    """linger 1 on a concurrent server: with the peer's ACKs dropped (nftables), the
    thread that closes the connection sits in close() about 1 s, and every byte
    of the answer still arrives.  (A one-shot hello server is drain-style by its
    protocol: test_linger_seconds's descriptor reading is its evidence.)"""
    declared(bed, "linger")
    profile = profiles.of(bed)
    if profile.one_shot:
        raise Inconclusive("a one-shot server drains before it closes: the descriptor is the "
                           "evidence (test_linger_seconds)", NOT_APPLICABLE)
    transport = tcp_transport(bed, "linger")
    srv = bed.start_server(transport, options={"linger": {"seconds": 1}})
    assert srv.port is not None
    sock = socket.socket(sockopts.FAMILY[transport], socket.SOCK_STREAM)
    try:
        sock.bind((sockopts.LOOPBACK[transport], 0))
        peer = sock.getsockname()[:2]
        # Pure ACKs only (flags exactly ACK, no payload: 52 bytes with the timestamp
        # option): our data and our FIN still arrive, our acknowledgements do not.
        bare_ack = ("tcp flags == ack " + ("ip length 52" if transport == "tcp4"
                                             else "ip6 length 32"))
        with Silence(peer[1], srv.port, extra=bare_ack):
            sock.settimeout(5.0)
            sock.connect((sockopts.LOOPBACK[transport], srv.port))
            sock.sendall(profile.probe)
            entry = sockopts.connection_of(srv.pid, peer)
            if entry is None or entry.pid is None or entry.fd is None:
                raise Inconclusive("the server's socket of our connection was not found")
            sock.shutdown(socket.SHUT_WR)
            seen, took, why = sockopts.time_in_close(entry.pid, entry.fd, 1 * LATE_FACTOR + 1.5)
            got = peers.read_until_end(sock, 2.0)
    finally:
        sock.close()
    if why is not None:
        raise Inconclusive(why)
    if not seen and sockopts.connection_of(srv.pid, peer, timeout=0.0) is not None:
        raise Inconclusive("the server did not close the connection after our EOF "
                           "(ECHO-2/JSON-1's concern)")
    if not 1.0 - BLOCK_SAMPLE_S <= took <= 1.0 * LATE_FACTOR + LATE_S + BLOCK_SAMPLE_S:
        shown = f"took {took:.2f} s" if seen else "returned at once (never seen in close())"
        raise Violation(f"with linger 1 and its data unacknowledged, the server's close() of the "
                        f"connection {shown}; expected about 1 s")
    if got.end != "fin" or not got.data:
        raise Violation(f"with linger 1 the answer did not arrive whole: {got.describe()}")
    return Pass(f"close() sat {took:.2f} s with the data unacknowledged; {len(got.data)} byte(s) "
                "then FIN arrived", Seen(f"pid {entry.pid} fd {entry.fd} in close()"))


# -- OPT-KEEPALIVE --------------------------------------------------------------------------------

def _idle_connection(bed: Testbed, srv: Server) -> socket.socket:
    """A connection that has done its exchange and now idles, held open by us
    (hello: greeting and FIN read, the server drains; others: one round trip)."""
    if profiles.of(bed).one_shot:
        sock = peers.connect(srv.transport, srv.port, None, timeout=5.0)
        got = peers.read_until_end(sock, 5.0)
        if got.end != "fin":
            sock.close()
            raise Inconclusive(f"the greeting exchange did not end with FIN ({got.describe()}): "
                               "HELLO/LIFE-4's concern")
        return sock
    session = support.Session(bed, srv)
    session.roundtrip(1)
    return session.sock


def _armed(port: int, peer: tuple[str, int], idle: int) -> sockopts.DiagRecord:
    """Wait (well within `idle`) until sock_diag shows the server's socket with
    nothing unacknowledged and its keepalive timer running."""
    deadline = time.monotonic() + idle * 0.6
    while True:
        rec = sockopts.connection_diag(port, peer)
        r = rec.record
        if r is not None:
            unacked = (r.get("tcp_info") or {}).get("tcpi_unacked", 0)
            if r["timer"] == "keepalive" and not unacked:
                return rec
        if time.monotonic() >= deadline:
            if r is None:
                raise Inconclusive(f"sock_diag lost the connection before the probes: {rec.reason}")
            if r["timer"] == "keepalive":
                raise Inconclusive("the connection still had unacknowledged data: "
                                   "keepalive cannot start")
            raise Violation(f"with keepalive {' '.join(map(str, KEEPALIVE))}: the idle connection's "
                            f"timer is {r['timer']!r}, not keepalive (SO_KEEPALIVE not set?)")
        time.sleep(0.01)


@clause("OPT-KEEPALIVE")
def test_keepalive(bed: Testbed) -> Pass:
    """keepalive 1 1 2: the idle connection's timer is keepalive; once the peer is
    silenced (nftables), exactly 2 probes 1 s apart follow 1 s of idleness, then
    an RST; the connection is gone from the server, which serves a new client (a
    one-shot server ends instead)."""
    declared(bed, "keepalive")
    transport = tcp_transport(bed, "keepalive")
    bed.require_wire()
    idle, interval, count = KEEPALIVE
    srv = bed.start_server(transport, options={
        "keepalive": {"idle": idle, "interval": interval, "count": count}})
    assert srv.port is not None
    sock = _idle_connection(bed, srv)
    try:
        peer = sock.getsockname()[:2]
        entry = sockopts.connection_of(srv.pid, peer)
        names = [("SO_KEEPALIVE", socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
                 ("TCP_KEEPIDLE", socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle),
                 ("TCP_KEEPINTVL", socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval),
                 ("TCP_KEEPCNT", socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)]
        readings = [] if entry is None else [
            sockopts.read_option(entry, level, opt, f"{name} of the accepted socket")
            for name, level, opt, _ in names]
        armed = _armed(srv.port, peer, idle)
        assert armed.record is not None
        due_ms = armed.record["expires_ms"]
        if due_ms > (idle * LATE_FACTOR + LATE_S) * 1000:
            raise Violation(f"with keepalive {idle} {interval} {count}: the idle connection's "
                            f"keepalive timer fires in {due_ms / 1000:.0f} s, not after {idle} s "
                            "(TCP_KEEPIDLE not set?)")
        limit = (idle + count * interval) * LATE_FACTOR + LATE_S + 1.0
        with Silence(peer[1], srv.port):
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                if sockopts.connection_diag(srv.port, peer).record is None:
                    break
                time.sleep(0.05)
            gone = sockopts.connection_diag(srv.port, peer).record is None
    finally:
        sock.close()
    wire = bed.wire()
    require(wire)
    conv = packets.conversation(packets.tcp_packets(wire, srv.port), srv.port, peer)
    probes, rst, since = judge_probes(conv, srv.port)
    if not gone:
        raise Violation(f"the server still holds the connection {limit:.1f} s after its peer "
                        "stopped answering")
    for (_name, *_rest, want), r in zip(names, readings, strict=False):
        if r.doubt() is None and r.value != want:
            raise Violation(f"keepalive {idle} {interval} {count}: {r} (expected {want})")
    after = _after_keepalive(bed, srv)
    timing = ", ".join(f"+{since(p):.2f} s" for p in probes)
    return Pass(f"timer keepalive with nothing unacked; probes at {timing}, RST at "
                f"+{since(rst):.2f} s; connection gone; {after}"
                + "".join(f"; {r}" for r in readings if r.doubt() is None),
                armed, wire)


def _after_keepalive(bed: Testbed, srv: Server) -> str:
    if profiles.of(bed).one_shot:
        rc = srv.wait_exit(5.0)
        if rc is None:
            raise Violation("the one-shot server is still running 5 s after keepalive ended "
                            "its connection")
        if rc not in (0, 1):
            raise Violation(f"after keepalive ended its connection the server {srv.status()}")
        return f"the one-shot server then {srv.status()}"
    if not srv.running():
        raise Violation(f"the server ended when keepalive dropped a connection: {srv.status()}")
    try:
        got = support.exchange(bed, srv)
    except OSError as e:
        raise Violation(f"after keepalive dropped a connection, a new client failed: {e}") from None
    if got.end != "fin" or not got.data:
        raise Violation(f"after keepalive dropped a connection, a new client got {got.describe()}")
    return "a new client was then served"
