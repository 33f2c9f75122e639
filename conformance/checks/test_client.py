"""CLI — the hello client, in front of peers the suite controls."""

from __future__ import annotations

import re

import pytest

from conformance.checks import support
from conformance.clauses import clause, client_side
from conformance.harness import peers, syscalls
from conformance.harness.testbed import Testbed, Violation

SEGMENT_GAP_S = 0.1   # CLI-2: far apart enough that each byte is its own segment and read
FIN_TO_EXIT_S = 1.0   # CLI-3


def _peer(bed: Testbed, transport: str, behaviour: peers.Behaviour) -> peers.PeerServer:
    path = bed.unix_path("peer.sock") if transport == "unix" else None
    return peers.PeerServer(behaviour, transport, path=path)


pytestmark = client_side


@clause("CLI-1")
def test_prints_greeting(bed: Testbed, client_transport: str) -> None:
    bed.require_transport(bed.client_program, client_transport)
    with _peer(bed, client_transport, peers.greet()) as peer:
        run = bed.run(bed.client_argv(client_transport, peer.port, peer.path), timeout=5.0)
    if run.timed_out:
        raise Violation(f"still running 5 s after connecting; stdout so far {run.stdout[:100]!r}")
    if run.stdout != support.CLIENT_OUTPUT:
        raise Violation(f"expected stdout {support.CLIENT_OUTPUT!r}, saw {run.stdout[:200]!r}")
    if run.rc != 0:
        raise Violation(f"printed the greeting but {run.proc.status()} (expected 0); "
                        f"stderr {run.stderr[:120]!r}")


@clause("CLI-2")
def test_one_byte_segments(bed: Testbed) -> None:
    transport = "tcp4" if "tcp4" in bed.client_program.transports else "tcp6"
    bed.require_transport(bed.client_program, transport)
    # "Printed whole": as this client prints a greeting that arrives at once
    # (whether that line is right is CLI-1's business).
    with _peer(bed, transport, peers.greet()) as normal_peer:
        normal = bed.run(bed.client_argv(transport, normal_peer.port), timeout=5.0, name="normal")
    if normal.rc != 0 or not normal.stdout:
        pytest.skip(f"the client does not print a greeting delivered at once ({normal.describe()}): "
                    "CLI-1's failure; nothing to compare with")
    with _peer(bed, transport, peers.greet(segments=13, gap=SEGMENT_GAP_S)) as peer:
        run = bed.run(bed.client_argv(transport, peer.port), timeout=8.0)
        peer.wait(5.0)
    if run.stdout != normal.stdout or run.rc != 0:
        raise Violation(f"greeting sent as 13 one-byte segments: {run.describe()}; "
                        f"sent at once it printed {normal.stdout[:80]!r}")
    if bed.capture is None:
        pytest.skip(f"client output right, but the segmentation cannot be verified: {bed.capture_reason}")
    assert peer.port is not None
    conns = bed.wire().tcp_connections(peer.port)
    sizes = [len(s.payload) for s in conns[0].payload_segments(from_server=True)] if conns else []
    if sizes != [1] * 13:
        pytest.skip(f"the peer could not put the greeting on the wire as 13 one-byte segments "
                    f"(saw payload sizes {sizes}): the clause was not exercised")


@clause("CLI-3")
def test_closes_after_reading(bed: Testbed) -> None:
    transport = bed.primary(bed.client_program)
    with _peer(bed, transport, peers.greet(drain_timeout=5.0)) as peer:
        proc, _ = bed.spawn_client(bed.client_argv(transport, peer.port, peer.path))
        rc = proc.wait(5.0)
        peer.wait(6.0)
        log = peer.log
    if log.our_fin_at is None:
        pytest.skip(f"the peer never sent its FIN ({log.error}): nothing to judge")
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


BIND_PORT = re.compile(r"(?:sin6?_port=htons\((\d+)\))")


@clause("CLI-4")
def test_no_explicit_bind(bed: Testbed) -> None:
    bed.need_strace()
    transport = bed.primary(bed.client_program)
    if transport == "unix":
        pytest.skip("CLI-4 is about TCP local ports")
    with _peer(bed, transport, peers.greet()) as peer:
        run = bed.run(bed.client_argv(transport, peer.port), trace=True, timeout=5.0)
    assert run.trace_log is not None
    for c in syscalls.calls_named(syscalls.parse(run.trace_log), "bind"):
        m = BIND_PORT.search(c.args)
        if c.sock and m and int(m.group(1)) != 0:
            raise Violation(f"binds an explicit local port: line {c.line}: bind({c.args[:100]})")


@clause("CLI-5")
def test_sends_nothing(bed: Testbed) -> None:
    transport = bed.primary(bed.client_program)
    with _peer(bed, transport, peers.greet(drain_timeout=3.0)) as peer:
        bed.run(bed.client_argv(transport, peer.port, peer.path), timeout=5.0)
        peer.wait(5.0)
    if peer.log.received:
        raise Violation(f"the client sent {len(peer.log.received)} byte(s): {peer.log.received[:60]!r}")
    if transport == "unix" or bed.capture is None:
        return  # the peer's socket saw every byte the client sent: real evidence
    assert peer.port is not None
    for conn in bed.wire().tcp_connections(peer.port):
        sent = conn.payload(from_server=False)
        if sent:
            raise Violation(f"the client sent {len(sent)} payload byte(s) on the wire: {sent[:60]!r}")
