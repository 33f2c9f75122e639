"""LIFE — the server lifecycle, from syscall order to the last FIN."""

from __future__ import annotations

import signal
import time

import pytest

from conformance.checks import support
from conformance.clauses import clause
from conformance.harness import peers
from conformance.harness import trace as tracing
from conformance.harness.inspect import listen_diag, sockets_on_port
from conformance.harness.testbed import Server, Testbed, Violation

WILDCARDS = {"tcp4": ("0.0.0.0", "::"), "tcp6": ("::",)}


# -- LIFE-0 -----------------------------------------------------------------------------------

@clause("LIFE-0")
def test_server_syscall_order(bed: Testbed) -> None:
    srv = bed.start_server(trace=True)
    peers.fetch_greeting(srv.transport, srv.port, srv.path, timeout=5.0)
    complete = srv.proc.wait(5.0) is not None
    if not complete:
        srv.proc.kill()
    assert srv.trace_log is not None
    bad = tracing.lifecycle_violations(tracing.parse(srv.trace_log), "server", complete=complete)
    if bad:
        raise Violation(f"server lifecycle: {bad[0]}" + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))


@clause("LIFE-0")
def test_client_syscall_order(bed: Testbed) -> None:
    bed.need_strace()
    transport = bed.primary(bed.client_program)
    path = bed.unix_path("peer.sock") if transport == "unix" else None
    with peers.PeerServer(peers.greet(), transport, path=path) as peer:
        run = bed.run(bed.client_argv(transport, peer.port, path), trace=True)
    assert run.trace_log is not None
    bad = tracing.lifecycle_violations(tracing.parse(run.trace_log), "client",
                                       complete=not run.timed_out)
    if bad:
        raise Violation(f"client lifecycle: {bad[0]}" + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))


# -- LIFE-1 -----------------------------------------------------------------------------------

@clause("LIFE-1")
def test_listens_on_wildcard(bed: Testbed, server_transport: str) -> None:
    srv = bed.start_server(server_transport)
    assert srv.listener is not None
    entry = srv.listener.entry
    if server_transport == "unix":
        if entry.local != srv.path:
            raise Violation(f"listens on {entry.local!r}, not on the given path {srv.path!r}")
        return
    assert isinstance(entry.local, tuple)
    addr, port = entry.local
    if port != srv.port:
        raise Violation(f"listens on port {port}, not on the given port {srv.port}")
    if addr not in WILDCARDS[server_transport]:
        raise Violation(f"listens on {addr}:{port}, not on the wildcard address "
                        f"({' or '.join(WILDCARDS[server_transport])})")
    if server_transport == "tcp4" and addr == "::" and entry.v6only:
        raise Violation(f"listens on [::]:{port} with IPV6_V6ONLY: IPv4 clients cannot connect")


# -- LIFE-2 -----------------------------------------------------------------------------------

@clause("LIFE-2")
def test_backlog_at_least_5(bed: Testbed) -> None:
    transport = bed.primary(bed.server_program)
    if transport == "unix":
        pytest.skip("the backlog is read from the TCP LISTEN socket")
    srv = bed.start_server(transport)
    assert srv.port is not None
    diags = listen_diag(srv.port, "tcp6" if srv.listener and srv.listener.entry.kind == "tcp6" else "tcp4")
    if not diags:
        pytest.skip("sock_diag shows no LISTEN socket on the port")
    backlog = diags[0].backlog
    if backlog < 5:
        raise Violation(f"listen backlog is {backlog} (at least 5 required)")


# -- LIFE-3 -----------------------------------------------------------------------------------

@clause("LIFE-3")
def test_one_shot(bed: Testbed, server_transport: str) -> None:
    srv = bed.start_server(server_transport)
    got = peers.fetch_greeting(srv.transport, srv.port, srv.path, timeout=5.0)
    rc = srv.proc.wait(5.0)
    if rc is None:
        raise Violation(f"after serving one client ({got.describe()}) the server is still running 5 s later")
    if rc != 0:
        raise Violation(f"after serving one client: {srv.proc.status()} (expected exit status 0); "
                        f"stderr {srv.proc.stderr()[:120]!r}")
    _port_free(srv, "after exit")


def _port_free(srv: Server, when: str) -> None:
    """"The port is free": nothing listens on it (or accepts on the unix path) any
    more.  TIME_WAIT left by an active close is normal TCP; restarting through it
    is LIFE-5's concern."""
    if srv.transport == "unix":
        try:
            peers.connect("unix", path=srv.path, timeout=1.0).close()
        except OSError:
            return
        raise Violation(f"{when}: something still accepts on {srv.path}")
    assert srv.port is not None
    listeners = [e for e in sockets_on_port(srv.port) if e.state == "LISTEN"]
    if listeners:
        raise Violation(f"{when}: port {srv.port} still has a listener ({listeners[0].local})")


# -- LIFE-4 -----------------------------------------------------------------------------------

@clause("LIFE-4")
def test_graceful_end(bed: Testbed, server_transport: str) -> None:
    srv = bed.start_server(server_transport)
    got = peers.fetch_greeting(srv.transport, srv.port, srv.path, timeout=5.0)
    srv.proc.wait(5.0)
    if server_transport == "unix":
        # No wire on AF_UNIX: the socket itself tells FIN (EOF) from reset.
        if got.end != "fin":
            raise Violation(f"the connection ended by {got.end} after {len(got.data)} byte(s), not EOF")
        return
    support.settle()
    conns = bed.wire().tcp_connections(srv.port)  # type: ignore[arg-type]
    if not conns:
        raise Violation(f"no TCP connection to port {srv.port} on the wire (socket saw {got.describe()})")
    conn = conns[0]
    rst = conn.rst()
    if rst:
        who = "server" if rst[0].from_server else "client"
        raise Violation(f"{who} sent RST at packet {rst[0].index}: {conn.describe()}")
    fin = conn.fin(from_server=True)
    if fin is None:
        raise Violation(f"no FIN from the server: {conn.describe()}")
    late = [s for s in conn.payload_segments(from_server=True) if s.index > fin.index]
    if late:
        raise Violation(f"server data at packet {late[0].index} after its FIN at packet {fin.index}")
    if got.end != "fin" or got.data != conn.payload(from_server=True):
        raise Violation(f"the client socket read {got.describe()}; the wire carried "
                        f"{conn.payload(from_server=True)!r}")


# -- LIFE-5 -----------------------------------------------------------------------------------

@clause("LIFE-5")
def test_restart_during_time_wait(bed: Testbed) -> None:
    transport = bed.primary(bed.server_program)
    if transport == "unix":
        pytest.skip("TIME_WAIT is a TCP state")
    srv = bed.start_server(transport)
    assert srv.port is not None
    got = peers.fetch_greeting(srv.transport, srv.port, srv.path, timeout=5.0)
    if srv.proc.wait(5.0) is None:
        pytest.skip(f"the server did not exit after one client ({got.describe()}): LIFE-3's concern")
    waiting = [e for e in sockets_on_port(srv.port) if e.state == "TIME_WAIT"
               and e.local[1] == srv.port]  # type: ignore[index]
    if not waiting:
        pytest.skip("the server did not close first (no TIME_WAIT on its side): nothing to test")
    again = bed.start_server(transport, port=srv.port, ready=False, name="restart")
    what, value = bed.exit_or_listen(again.proc, bed.server_program.startup_timeout)
    if what != "listen":
        status = again.proc.status() if what == "exit" else "not listening"
        raise Violation(f"restart on port {srv.port} during TIME_WAIT failed: {status}, "
                        f"stderr {again.proc.stderr()[:120]!r} (SO_REUSEADDR before bind?)")


# -- LIFE-6 -----------------------------------------------------------------------------------

@clause("LIFE-6")
def test_sigterm(bed: Testbed, server_transport: str) -> None:
    srv = bed.start_server(server_transport)
    t0 = time.monotonic()
    srv.proc.signal(signal.SIGTERM)
    rc = srv.proc.wait(1.0)
    if rc is None:
        raise Violation("still running 1 s after SIGTERM")
    took = time.monotonic() - t0
    _port_free(srv, f"ended {took:.2f} s after SIGTERM ({srv.proc.status()})")
