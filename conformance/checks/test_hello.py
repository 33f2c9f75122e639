"""HELLO — the greeting protocol, as the server speaks it."""

from __future__ import annotations

import pytest

from conformance.checks import support
from conformance.clauses import clause
from conformance.evidence import Inconclusive, Pass, Violation, require
from conformance.harness import peers
from conformance.harness.testbed import Testbed
from conformance.harness.wire import Wire

HELLO_TIMEOUT = 5.0
PROMPT_S = 1.0  # HELLO-2: "right after accept()": well within a second


@clause("HELLO-1")
def test_exact_greeting(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    with support.blamed_on_target("connecting for the greeting", srv):
        got = peers.fetch_greeting(srv.transport, srv.port, srv.path,
                                   timeout=HELLO_TIMEOUT * srv.timeout_scale)
    if got.data != support.GREETING:
        raise Violation(f"expected exactly {support.GREETING!r} (13 bytes), got {got.describe()}")
    if got.end == "timeout":
        # "Nothing else" is known only once the connection ended; one that never
        # ends, even after our EOF, is LIFE-3/LIFE-4's failure, not this clause's.
        raise Inconclusive(f"the 13 bytes arrived, but the server did not end the connection "
                           f"within {HELLO_TIMEOUT * srv.timeout_scale:.0f} s, even after our EOF: cannot tell that "
                           "it writes nothing else (LIFE-4's concern)")
    return Pass(f"read exactly {support.GREETING!r} on {server_transport}, then {got.end}"
                + (" after our EOF" if got.eof_sent_s is not None else ""))


@clause("HELLO-2")
def test_greeting_without_client_data(bed: Testbed) -> Pass:
    srv = bed.start_server()
    with support.blamed_on_target("connecting and waiting for the greeting", srv):
        sock = peers.connect(srv.transport, srv.port, srv.path)
        try:
            got = peers.read_until_end(sock, PROMPT_S, limit=len(support.GREETING))
        finally:
            sock.close()
    # Waiting shows as a read that times out short of a greeting: neither 13
    # bytes nor the end of what the server had to say arrived.  (Whether the bytes
    # are the right ones is HELLO-1's business.)
    if got.end == "timeout" and len(got.data) < len(support.GREETING):
        raise Violation(f"without client data, {len(got.data)} of 13 greeting bytes arrived within "
                        f"{PROMPT_S:.0f} s of connecting, and the server did not close")
    return Pass(f"without any client data the server wrote {len(got.data)} byte(s) "
                f"within {PROMPT_S:.0f} s of connecting (then {got.end})")


def _rst_in(wire: Wire, port: int) -> str | None:
    for conn in wire.tcp_connections(port):
        rst = conn.rst()
        if rst:
            return (f"{'server' if rst[0].from_server else 'client'} RST at packet "
                    f"{rst[0].index}: {conn.describe()}")
    return None


SCENARIOS = {"before": (b"x" * 100, b""), "after": (b"", b"y" * 100), "both": (b"x" * 100, b"y" * 100)}


@clause("HELLO-3")
@pytest.mark.parametrize("when", list(SCENARIOS))
def test_client_data_harmless(bed: Testbed, when: str) -> Pass:
    transport = bed.primary(bed.server_program)
    if transport == "unix":
        raise Inconclusive("HELLO-3 is judged on the TCP wire (RST); the target declares no "
                           "TCP transport")
    bed.require_wire()
    # The baseline: a data-free exchange that already ends in RST is LIFE-4's
    # failure; client data cannot be blamed for it.
    base = bed.start_server(transport, name="baseline")
    with support.blamed_on_target("the exchange without client data", base):
        normal = peers.fetch_greeting(base.transport, base.port, base.path,
                                      timeout=HELLO_TIMEOUT * base.timeout_scale)
    base.wait_exit(5.0)
    support.settle()
    before, after = SCENARIOS[when]
    srv = bed.start_server(transport)
    with support.blamed_on_target(f"the exchange with client data {when} the greeting", srv):
        got = peers.fetch_greeting(srv.transport, srv.port, srv.path,
                                   timeout=HELLO_TIMEOUT * srv.timeout_scale,
                                   send_before=before, send_after=after)
    srv.wait_exit(5.0)
    support.settle()
    if base.port is None or srv.port is None:
        raise RuntimeError("a TCP server without a port")
    # "Does not change the greeting": compared with what this server sends
    # without client data (whether that is right is HELLO-1's business).
    if got.data != normal.data:
        raise Violation(f"with client data {when} the greeting the client got {got.describe()}; "
                        f"without client data it got {normal.data!r}")
    wire = bed.wire()
    # Blaming an RST on the client data rests on the baseline having none: a
    # capture that lost packets cannot show that absence.
    require(wire, context="HELLO-3")
    baseline_rst = _rst_in(wire, base.port)
    if baseline_rst:
        raise Inconclusive(f"the exchange without client data already ends in RST (LIFE-4): "
                           f"{baseline_rst}")
    rst = _rst_in(wire, srv.port)
    if rst:
        raise Violation(f"with client data {when} the greeting the connection ended in RST: {rst}")
    conns = wire.tcp_connections(srv.port)
    if not conns:
        raise RuntimeError(f"the capture shows no connection to port {srv.port}")
    return Pass(f"with client data {when} the greeting: the same {len(got.data)} bytes "
                f"as without, and no RST on the wire ({len(conns[0].segments)} segments)",
                wire)
