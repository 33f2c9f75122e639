"""CLI — the hello client, in front of peers the suite controls."""

from __future__ import annotations

import re

from conformance.checks import support
from conformance.clauses import clause, client_side
from conformance.evidence import Inconclusive, Pass, Violation, require
from conformance.harness import peers, syscalls
from conformance.harness.testbed import Testbed

SEGMENT_GAP_S = 0.1   # CLI-2: far apart enough that each byte is its own segment and read
FIN_TO_EXIT_S = 1.0   # CLI-3
# CLI-1 is judged on the output once complete: a client that prints the line and
# exits late is CLI-3's failure only, so it gets far longer than CLI-3's second.
# Only a hang guard.
CLIENT_GUARD_S = 12.0


def _peer(bed: Testbed, transport: str, behaviour: peers.Behaviour) -> peers.PeerServer:
    path = bed.unix_path("peer.sock") if transport == "unix" else None
    return peers.PeerServer(behaviour, transport, path=path)


pytestmark = client_side


@clause("CLI-1")
def test_prints_greeting(bed: Testbed, client_transport: str) -> Pass:
    bed.require_transport(bed.client_program, client_transport)
    with _peer(bed, client_transport, peers.greet()) as peer:
        run = bed.run(bed.client_argv(client_transport, peer.port, peer.path),
                      timeout=CLIENT_GUARD_S)
    if run.stdout != support.CLIENT_OUTPUT:
        if run.timed_out:
            raise Violation(f"still running {run.timeout_s:.0f} s after connecting (killed) "
                            f"without printing {support.CLIENT_OUTPUT!r}: stdout "
                            f"{run.stdout[:200]!r}")
        raise Violation(f"expected stdout {support.CLIENT_OUTPUT!r}, saw {run.stdout[:200]!r}")
    if run.timed_out:
        raise Inconclusive(f"printed {support.CLIENT_OUTPUT!r}, but was still running "
                           f"{run.timeout_s:.0f} s after connecting (killed): its exit status "
                           "is unknown (exiting in time is CLI-3's clause)")
    if run.rc != 0:
        raise Violation(f"printed the greeting but {run.proc.status()} (expected 0); "
                        f"stderr {run.stderr[:120]!r}")
    return Pass(f"on {client_transport} printed {support.CLIENT_OUTPUT!r} and exited 0", run)


@clause("CLI-2")
def test_one_byte_segments(bed: Testbed) -> Pass:
    transport = "tcp4" if "tcp4" in bed.client_program.transports else "tcp6"
    bed.require_transport(bed.client_program, transport)
    # No require_wire() up front: wrong output is a violation even where the
    # segmentation cannot be verified; only a pass needs the wire.
    # "Printed whole": as this client prints a greeting that arrives at once
    # (whether that line is right is CLI-1's business).
    with _peer(bed, transport, peers.greet()) as normal_peer:
        normal = bed.run(bed.client_argv(transport, normal_peer.port), timeout=CLIENT_GUARD_S,
                         name="normal")
    if normal.rc != 0 or not normal.stdout:
        raise Inconclusive(f"the client does not print a greeting delivered at once "
                           f"({normal.describe()}): CLI-1's failure; nothing to compare with")
    with _peer(bed, transport, peers.greet(segments=13, gap=SEGMENT_GAP_S)) as peer:
        run = bed.run(bed.client_argv(transport, peer.port), timeout=CLIENT_GUARD_S)
        peer.wait(5.0)
    if run.stdout != normal.stdout or run.rc != 0:
        raise Violation(f"greeting sent as 13 one-byte segments: {run.describe()}; "
                        f"sent at once it printed {normal.stdout[:80]!r}")
    if peer.port is None:
        raise RuntimeError("a TCP peer without a port")
    wire = bed.wire()
    conns = wire.tcp_connections(peer.port)
    sizes = [len(s.payload) for s in conns[0].payload_segments(from_server=True)] if conns else []
    if sizes != [1] * 13:
        require(wire, context="CLI-2")
        raise Inconclusive(f"the peer could not put the greeting on the wire as 13 one-byte "
                           f"segments (saw payload sizes {sizes}): the clause was not exercised")
    return Pass(f"the greeting as 13 one-byte segments ({SEGMENT_GAP_S * 1000:.0f} ms apart, "
                f"verified on the wire) printed {run.stdout[:60]!r}, as when sent at once", wire)


@clause("CLI-3")
def test_closes_after_reading(bed: Testbed) -> Pass:
    transport = bed.primary(bed.client_program)
    with _peer(bed, transport, peers.greet(drain_timeout=5.0)) as peer:
        proc, _ = bed.spawn_client(bed.client_argv(transport, peer.port, peer.path))
        rc = proc.wait(5.0)
        peer.wait(6.0)
        log = peer.log
    if log.our_fin_at is None:
        raise Inconclusive(f"the peer never sent its FIN ({log.error}): nothing to judge")
    if rc is None:
        proc.kill()
        raise Violation(f"still running 5 s after the server's FIN (client FIN seen: "
                        f"{log.client_fin_at is not None})")
    exit_after = (proc.ended or 0) - log.our_fin_at
    if exit_after > FIN_TO_EXIT_S:
        raise Violation(f"exited {exit_after:.2f} s after the server's FIN (at most {FIN_TO_EXIT_S:.0f} s)")
    if log.client_rst:
        raise Violation("the client reset the connection instead of closing it (server saw RST)")
    if log.client_fin_at is None:
        raise Violation("the server never saw the client's FIN")
    return Pass(f"the peer saw the client's FIN; the client exited {max(exit_after, 0.0):.2f} s "
                "after the peer's FIN")


BIND_PORT = re.compile(r"(?:sin6?_port=htons\((\d+)\))")


@clause("CLI-4")
def test_no_explicit_bind(bed: Testbed) -> Pass:
    bed.need_strace()
    transport = bed.primary(bed.client_program)
    if transport == "unix":
        raise Inconclusive("CLI-4 is about TCP local ports; the client declares no TCP transport")
    with _peer(bed, transport, peers.greet()) as peer:
        run = bed.run(bed.client_argv(transport, peer.port), trace=True, timeout=CLIENT_GUARD_S)
    if run.trace_log is None:
        raise RuntimeError("a traced run without a trace log")
    trace = syscalls.parse(run.trace_log)
    binds = syscalls.calls_named(trace, "bind")
    for c in binds:
        m = BIND_PORT.search(c.args)
        if c.sock and m and int(m.group(1)) != 0:
            raise Violation(f"binds an explicit local port: line {c.line}: bind({c.args[:100]})")
    # The absence of a bind is read off the whole trace (a line the parser could
    # not read may be the one): the Pass is built from the trace, which says.
    return Pass(f"the traced client made {len(trace.calls)} calls, "
                + (f"{len(binds)} bind() to port 0" if binds else "no bind()"), run, trace)


@clause("CLI-5")
def test_sends_nothing(bed: Testbed) -> Pass:
    transport = bed.primary(bed.client_program)
    with _peer(bed, transport, peers.greet(drain_timeout=3.0)) as peer:
        run = bed.run(bed.client_argv(transport, peer.port, peer.path), timeout=CLIENT_GUARD_S)
        peer.wait(5.0)
    if peer.log.received:
        raise Violation(f"the client sent {len(peer.log.received)} byte(s): {peer.log.received[:60]!r}")
    if peer.log.accepted_at is None:
        raise Inconclusive(f"the client never connected to the peer ({run.describe()}): "
                           "nothing to judge")
    if transport == "unix":
        # The peer's socket saw every byte the client sent: AF_UNIX has no wire.
        return Pass("the peer's socket received no byte from the client (AF_UNIX)")
    if peer.port is None:
        raise RuntimeError("a TCP peer without a port")
    # What our socket read may miss bytes that a reset destroyed: the wire shows
    # them all, when it is known to be complete.
    wire = bed.wire()
    for conn in wire.tcp_connections(peer.port):
        sent = conn.payload(from_server=False)
        if sent:
            raise Violation(f"the client sent {len(sent)} payload byte(s) on the wire: {sent[:60]!r}")
    require(wire, context="CLI-5 (no payload is an absence)")
    return Pass("neither the peer's socket nor the wire saw a payload byte from the client",
                wire)
