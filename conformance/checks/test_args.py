"""ARGS — the command line of server and client."""

from __future__ import annotations

import pytest

from conformance.checks import support
from conformance.clauses import clause, client_side
from conformance.harness import trace as tracing
from conformance.harness.testbed import Testbed, Violation

NETWORK_SENDS = ("connect", "sendto", "sendmsg", "sendmmsg")


def _no_socket_opened(bed: Testbed, run: support.ClientRun) -> None:
    """The 'opens no socket' half: judged from the strace log of the same run."""
    if run.trace_log is None:
        pytest.skip("output verified; 'opens no socket' needs strace: " + tracing.STRACE_HINT)
    opened = tracing.socket_calls(tracing.parse(run.trace_log))
    if opened:
        c = opened[0]
        raise Violation(f"opened a socket before/while printing usage: line {c.line}: {c.name}({c.args})")


def _traced() -> bool:
    return tracing.strace_path() is not None


@clause("ARGS-1")
@pytest.mark.parametrize("count", [0, 2], ids=["no-port", "two-args"])
def test_server_usage(bed: Testbed, count: int) -> None:
    prog = bed.server_program
    transport = bed.primary(prog)
    template = prog.argv_for(transport)
    argv = bed.server_argv(transport, bed.free_port(transport), None)
    if count == 0:
        argv = support.without_positionals(argv, template, ("port", "path"))
    else:
        argv = argv + ["extra"]
    run = bed.run(argv, timeout=5.0, trace=_traced(), name="server")
    support.expect_usage(run, support.program_names(argv, bed.target.base_dir), "<port>")
    _no_socket_opened(bed, run)


@client_side
@clause("ARGS-2")
@pytest.mark.parametrize("count", [0, 1, 3], ids=["no-args", "ip-only", "three-args"])
def test_client_usage(bed: Testbed, count: int) -> None:
    prog = bed.client_program
    transport = bed.primary(prog)
    template = prog.argv_for(transport)
    port = bed.free_port(transport)
    argv = bed.client_argv(transport, port)
    if count == 0:
        argv = support.without_positionals(argv, template, ("host", "port", "path"))
    elif count == 1:
        argv = support.without_positionals(argv, template, ("port",))
    else:
        argv = argv + ["extra"]
    run = bed.run(argv, timeout=5.0, trace=_traced(), name="client")
    support.expect_usage(run, support.program_names(argv, bed.target.base_dir), "<IP> <port>")
    _no_socket_opened(bed, run)


BAD_PORTS = ["abc", "0", "-1", "65536", "70000", "12ab", ""]


@clause("ARGS-3")
@pytest.mark.parametrize("port", BAD_PORTS, ids=[p or "empty" for p in BAD_PORTS])
def test_server_bad_port(bed: Testbed, port: str) -> None:
    prog = bed.server_program
    transport = bed.primary(prog)
    if not any("{port}" in a for a in prog.argv_for(transport)):
        pytest.skip("the server's command line takes no {port}")
    srv = bed.spawn_server(bed.server_argv(transport, port, None), transport=transport)
    what, value = bed.exit_or_listen(srv.proc, 3.0)
    if what == "listen":
        where = ", ".join(f"{e.local}" for e in value)  # type: ignore[attr-defined]
        raise Violation(f"given port {port!r} it listens ({where}) instead of refusing it")
    if what == "running":
        raise Violation(f"given port {port!r} it neither exited nor listened within 3 s")
    if value != 1:
        raise Violation(f"given port {port!r}: {srv.proc.status()} (expected exit status 1)")
    if not srv.proc.stderr().strip():
        raise Violation(f"given port {port!r}: exit 1 but no message on stderr")


BAD_CLIENT_ARGS = [("999.1.1.1", None), ("1.2.3", None), ("abc", None),
                   (None, "abc"), (None, "0"), (None, "70000"), (None, "-1"), (None, "")]


@client_side
@clause("ARGS-4")
@pytest.mark.parametrize("host,port", BAD_CLIENT_ARGS,
                         ids=[f"ip-{h}" if h else f"port-{p or 'empty'}" for h, p in BAD_CLIENT_ARGS])
def test_client_bad_address(bed: Testbed, host: str | None, port: str | None) -> None:
    prog = bed.client_program
    if "tcp4" not in prog.transports:
        pytest.skip("ARGS-4 is about IPv4 addresses; the client declares no tcp4")
    argv = bed.client_argv("tcp4", port if port is not None else bed.free_port(),
                           host=host if host is not None else "127.0.0.1")
    run = bed.run(argv, timeout=5.0, trace=_traced())
    shown = f"{host!r}" if host is not None else f"port {port!r}"
    if run.timed_out:
        raise Violation(f"given {shown} it was still running after 5 s")
    if run.rc != 1:
        raise Violation(f"given {shown}: {run.proc.status()} (expected exit status 1)")
    if not run.stderr.strip():
        raise Violation(f"given {shown}: exit 1 but no message on stderr")
    if run.trace_log is not None:
        sent = tracing.calls_named(tracing.parse(run.trace_log), *NETWORK_SENDS)
        if sent:
            c = sent[0]
            raise Violation(f"given {shown} it still tried the network: line {c.line}: {c.name}({c.args[:80]})")
    elif bed.isolation.kind != "host" and bed.capture is not None:
        frames = bed.wire().frames
        if frames:
            raise Violation(f"given {shown} it sent {len(frames)} packet(s)")
    else:
        pytest.skip("exit status verified; 'sends no packet' needs strace or a private "
                    "network namespace: " + tracing.STRACE_HINT)
