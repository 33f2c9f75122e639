"""HELLO — the greeting protocol, as the server speaks it."""

from __future__ import annotations

import pytest

from conformance.checks import support
from conformance.clauses import clause
from conformance.harness import peers
from conformance.harness.testbed import Testbed, Violation

HELLO_TIMEOUT = 5.0
PROMPT_S = 1.0  # HELLO-2: "right after accept()": well within a second


@clause("HELLO-1")
def test_exact_greeting(bed: Testbed, server_transport: str) -> None:
    srv = bed.start_server(server_transport)
    got = peers.fetch_greeting(srv.transport, srv.port, srv.path, timeout=HELLO_TIMEOUT)
    if got.data != support.GREETING:
        raise Violation(f"expected exactly {support.GREETING!r} (13 bytes), got {got.describe()}")
    if got.end == "timeout":
        raise Violation(f"after the 13 bytes the server neither closed nor reset within "
                        f"{HELLO_TIMEOUT:.0f} s (cannot tell it wrote nothing else)")


@clause("HELLO-2")
def test_greeting_without_client_data(bed: Testbed) -> None:
    srv = bed.start_server()
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


def _exchange_ends_in_rst(bed: Testbed, port: int) -> str | None:
    for conn in bed.wire().tcp_connections(port):
        rst = conn.rst()
        if rst:
            return f"{'server' if rst[0].from_server else 'client'} RST at packet {rst[0].index}: {conn.describe()}"
    return None


SCENARIOS = {"before": (b"x" * 100, b""), "after": (b"", b"y" * 100), "both": (b"x" * 100, b"y" * 100)}


@clause("HELLO-3")
@pytest.mark.parametrize("when", list(SCENARIOS))
def test_client_data_harmless(bed: Testbed, when: str) -> None:
    transport = bed.primary(bed.server_program)
    if transport == "unix":
        pytest.skip("HELLO-3 is judged on the TCP wire (RST); the target declares no TCP transport")
    bed.require_wire()
    # The baseline: a data-free exchange that already ends in RST is LIFE-4's
    # failure; client data cannot be blamed for it.
    base = bed.start_server(transport, name="baseline")
    normal = peers.fetch_greeting(base.transport, base.port, base.path, timeout=HELLO_TIMEOUT)
    base.proc.wait(5.0)
    support.settle()
    assert base.port is not None
    before, after = SCENARIOS[when]
    srv = bed.start_server(transport)
    got = peers.fetch_greeting(srv.transport, srv.port, srv.path, timeout=HELLO_TIMEOUT,
                               send_before=before, send_after=after)
    srv.proc.wait(5.0)
    support.settle()
    baseline_rst = _exchange_ends_in_rst(bed, base.port)
    if baseline_rst:
        pytest.skip(f"the exchange without client data already ends in RST (LIFE-4): {baseline_rst}")
    assert srv.port is not None
    # "Does not change the greeting": compared with what this server sends
    # without client data (whether that is right is HELLO-1's business).
    if got.data != normal.data:
        raise Violation(f"with client data {when} the greeting the client got {got.describe()}; "
                        f"without client data it got {normal.data!r}")
    rst = _exchange_ends_in_rst(bed, srv.port)
    if rst:
        raise Violation(f"with client data {when} the greeting the connection ended in RST: {rst}")
