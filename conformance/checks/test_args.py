"""ARGS — the command line of server and client."""

from __future__ import annotations

import pytest

from conformance.checks import support
from conformance.clauses import clause, client_side
from conformance.evidence import Inconclusive, Observation, Pass
from conformance.harness import strace, syscalls
from conformance.harness.testbed import Testbed, Violation


def _no_socket_opened(run: support.ClientRun, path: str | None, usage: Pass) -> Pass:
    """The 'opens no socket' half, judged from the strace log of the same run:
    no internet socket and nothing at the suite's AF_UNIX path (a runtime's own
    sockets — nscd, socketpairs, netlink — do not count)."""
    if run.trace_log is None:
        raise Inconclusive("output verified; 'opens no socket' needs strace: " + strace.STRACE_HINT)
    trace = syscalls.parse(run.trace_log)
    opened = syscalls.opened_sockets(trace, path)
    if opened:
        c = opened[0]
        raise Violation(f"opened a socket before/while printing usage: line {c.line}: "
                        f"{c.name}({c.args[:100]})")
    return Pass.all([usage, Pass("the trace shows no internet socket"
                                 + (f" and nothing at {path}" if path else ""), trace)])


def _traced() -> bool:
    return strace.strace_path() is not None


@clause("ARGS-1")
@pytest.mark.parametrize("count", [0, 2], ids=["no-port", "two-args"])
def test_server_usage(bed: Testbed, count: int) -> Pass:
    prog = bed.server_program
    transport = bed.primary(prog)
    template = prog.argv_for(transport)
    path = bed.unix_path() if transport == "unix" else None
    full = bed.server_argv(transport, bed.free_port(transport), path)
    if count == 0:
        argv = support.without_positionals(full, template, ("port", "path"))
    else:
        argv = full + ["extra"]
    run = bed.run(argv, timeout=5.0, trace=_traced(),
                  name="server")
    usage = support.expect_usage(run, support.program_names(full, template, bed.target.base_dir),
                                 "<port>")
    return _no_socket_opened(run, path, usage)


@client_side
@clause("ARGS-2")
@pytest.mark.parametrize("count", [0, 1, 3], ids=["no-args", "ip-only", "three-args"])
def test_client_usage(bed: Testbed, count: int) -> Pass:
    prog = bed.client_program
    transport = bed.primary(prog)
    template = prog.argv_for(transport)
    path = bed.unix_path("peer.sock") if transport == "unix" else None
    full = bed.client_argv(transport, bed.free_port(transport), path)
    if count == 0:
        argv = support.without_positionals(full, template, ("host", "port", "path"))
    elif count == 1:
        argv = support.without_positionals(full, template, ("port",))
    else:
        argv = full + ["extra"]
    run = bed.run(argv, timeout=5.0, trace=_traced(),
                  name="client")
    usage = support.expect_usage(run, support.program_names(full, template, bed.target.base_dir),
                                 "<IP> <port>")
    return _no_socket_opened(run, path, usage)


BAD_PORTS = ["abc", "0", "-1", "65536", "70000", "12ab", ""]


@clause("ARGS-3")
@pytest.mark.parametrize("port", BAD_PORTS, ids=[p or "empty" for p in BAD_PORTS])
def test_server_bad_port(bed: Testbed, port: str) -> Pass:
    prog = bed.server_program
    transport = bed.primary(prog)
    if not any("{port}" in a for a in prog.argv_for(transport)):
        raise Inconclusive("the server's command line takes no {port}", "not-applicable")
    srv = bed.spawn_server(bed.server_argv(transport, port, None), transport=transport)
    what, value = bed.exit_or_listen(srv.proc, 3.0 * prog.timeout_scale)
    if what == "listen":
        where = ", ".join(f"{e.local}" for e in value)  # type: ignore[attr-defined]
        raise Violation(f"given port {port!r} it listens ({where}) instead of refusing it")
    if what == "running":
        raise Violation(f"given port {port!r} it neither exited nor listened within 3 s")
    if value != 1:
        raise Violation(f"given port {port!r}: {srv.proc.status()} (expected exit status 1)")
    if not srv.proc.stderr().strip():
        raise Violation(f"given port {port!r}: exit 1 but no message on stderr")
    return Pass(f"given port {port!r}: exit 1 with a message on stderr, never listened")


BAD_CLIENT_ARGS = [("999.1.1.1", None), ("1.2.3", None), ("abc", None),
                   (None, "abc"), (None, "0"), (None, "70000"), (None, "-1"), (None, "")]


@client_side
@clause("ARGS-4")
@pytest.mark.parametrize("host,port", BAD_CLIENT_ARGS,
                         ids=[f"ip-{h}" if h else f"port-{p or 'empty'}" for h, p in BAD_CLIENT_ARGS])
def test_client_bad_address(bed: Testbed, host: str | None, port: str | None) -> Pass:
    prog = bed.client_program
    if "tcp4" not in prog.transports:
        raise Inconclusive("ARGS-4 is about IPv4 addresses; the client declares no tcp4",
                           "not-applicable")
    argv = bed.client_argv("tcp4", port if port is not None else bed.free_port(),
                           host=host if host is not None else "127.0.0.1")
    run = bed.run(argv, timeout=5.0, trace=_traced())
    shown = f"{host!r}" if host is not None else f"port {port!r}"
    if run.timed_out:
        raise Violation(f"given {shown} it was still running after the timeout")
    if run.rc != 1:
        raise Violation(f"given {shown}: {run.proc.status()} (expected exit status 1)")
    if not run.stderr.strip():
        raise Violation(f"given {shown}: exit 1 but no message on stderr")
    if run.trace_log is not None:
        trace = syscalls.parse(run.trace_log)
        sent = syscalls.network_sends(trace)
        if sent:
            c = sent[0]
            raise Violation(f"given {shown} it still tried the network: line {c.line}: "
                            f"{c.name}({c.args[:80]})")
        return Pass(f"given {shown}: exit 1 with a message on stderr; the trace shows no "
                    "connect/send on an internet socket", trace)
    if bed.isolation.kind != "host" and bed.capture is not None:
        capture = bed.wire()
        if capture.frames:
            raise Violation(f"given {shown} it sent {len(capture.frames)} packet(s)")
        seen = [capture] if isinstance(capture, Observation) else []
        return Pass(f"given {shown}: exit 1 with a message on stderr; no packet on the wire",
                    *seen)
    raise Inconclusive("exit status verified; 'sends no packet' needs strace or a private "
                       "network namespace: " + strace.STRACE_HINT)
