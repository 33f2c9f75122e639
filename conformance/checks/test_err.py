"""ERR — how system-call failures are reported."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from conformance.checks import profiles, support
from conformance.clauses import clause, client_side
from conformance.harness import peers
from conformance.harness import trace as tracing
from conformance.harness.inspect import listening
from conformance.harness.process import describe_status
from conformance.harness.testbed import Server, Testbed, Violation, lines


def _server_run(bed: Testbed, srv: Server, timeout: float) -> support.ClientRun:
    rc = srv.proc.wait(timeout)
    if rc is None:
        srv.proc.kill()
    return support.ClientRun(srv.proc, rc, rc is None, srv.trace_log)


def _expect_injected_failure(bed: Testbed, srv: Server, message: str, what: str) -> None:
    """An injected failure: the message, exit 1, and no listener left behind."""
    value = srv.proc.wait(3.0)
    if value is None:
        found = listening(srv.pid)
        srv.proc.kill()
        support.require_landed(srv.trace_log, what)
        where = f" and still listens on {found[0].local}" if found else ""
        raise Violation(f"{what}: still running 3 s later{where}; expected {message!r} and exit 1")
    run = support.ClientRun(srv.proc, value, False, srv.trace_log)
    if message not in lines(run.stderr) or value != 1:
        support.require_landed(srv.trace_log, what)
    if message not in lines(run.stderr):
        raise Violation(f"{what}: expected the stderr line {message!r}; {run.describe()}")
    if value != 1:
        raise Violation(f"{what}: reported {message!r} but {srv.proc.status()} (expected exit 1)")


# -- ERR-1 ------------------------------------------------------------------------------------

@clause("ERR-1")
def test_bind_failure(bed: Testbed) -> None:
    transport = bed.primary(bed.server_program)
    if transport == "unix":
        pytest.skip("ERR-1 is about a port held by another listening socket")
    port = bed.free_port(transport)
    with support.hold_port(transport, port):
        t0 = time.monotonic()
        srv = bed.spawn_server(bed.server_argv(transport, port, None), transport=transport)
        run = _server_run(bed, srv, 2.0)
        took = time.monotonic() - t0
    if run.timed_out:
        raise Violation(f"port {port} held by another listener: still running after 2 s; "
                        f"expected 'bind() error' and exit 1; stderr={run.stderr[:200]!r}")
    support.expect_error(run, "bind() error")
    assert took <= 2.5, f"took {took:.2f} s"


# -- ERR-2 ------------------------------------------------------------------------------------

@client_side
@clause("ERR-2")
def test_connect_refused(bed: Testbed) -> None:
    transport = bed.primary(bed.client_program)
    if transport == "unix":
        path = bed.unix_path("nobody-listens.sock")
        argv = bed.client_argv(transport, None, path)
    else:
        argv = bed.client_argv(transport, bed.free_port(transport))
    run = bed.run(argv, timeout=5.0)
    support.expect_error(run, "connect() error!")


# -- ERR-3 ------------------------------------------------------------------------------------

EARLY_ENDS = [(0, False), (0, True), (5, False), (5, True)]


@client_side
@clause("ERR-3")
@pytest.mark.parametrize("nbytes,reset", EARLY_ENDS,
                         ids=[f"{n}B-then-{'RST' if r else 'FIN'}" for n, r in EARLY_ENDS])
def test_server_ends_early(bed: Testbed, nbytes: int, reset: bool) -> None:
    transport = bed.primary(bed.client_program)
    if transport == "unix":
        pytest.skip("the early-end peers are TCP (RST has no AF_UNIX equivalent)")
    with peers.PeerServer(peers.cut_short(nbytes, reset=reset), transport) as peer:
        run = bed.run(bed.client_argv(transport, peer.port), timeout=5.0)
    end = "RST" if reset else "FIN"
    if run.stdout:
        raise Violation(f"server sent {nbytes} byte(s) then {end}: the client printed "
                        f"{run.stdout[:100]!r} (a partial greeting must never be printed)")
    try:
        support.expect_error(run, "read() error!")
    except Violation as v:
        raise Violation(f"server sent {nbytes} byte(s) then {end}: {v}") from None


# -- ERR-4 ------------------------------------------------------------------------------------

@clause("ERR-4")
def test_server_socket_emfile(bed: Testbed) -> None:
    p = support.point(support.server_points(bed), "socket", "server")
    srv = bed.start_server(injections=[p.injection("EMFILE")], ready=False, name="server-emfile")
    _expect_injected_failure(bed, srv, "socket() error", "socket() failed with EMFILE")


def _accept_failing(bed: Testbed, errno_: str) -> tuple[Server, socket.socket | None]:
    """A server whose first accept()/accept4() fails with `errno_`, and a client
    connection to make it call accept (an event loop only accepts when poll()
    reports a pending connection).  The caller closes the client socket."""
    bed.need_strace()
    srv = bed.start_server(injections=[tracing.Injection(("accept", "accept4"), errno_, 1)],
                           ready=False, name=f"server-accept-{errno_}")
    # A blocking accept() fails at once (the injected call never waits), so the
    # server may be gone before it is seen listening: both are fine here.
    what, _ = bed.exit_or_listen(srv.proc, bed.server_program.startup_timeout)
    if what != "listen":
        return srv, None
    try:
        return srv, peers.connect(srv.transport, srv.port, srv.path, timeout=2.0)
    except OSError:
        return srv, None


# The lifecycle calls ERR-5/ERR-7 make fail, with errnos no correct program
# retries (EADDRINUSE, ECONNABORTED, EINTR, EMFILE belong to other clauses).
SERVER_FAULTS = [("socket", "EACCES", "socket() error"), ("bind", "EACCES", "bind() error"),
                 ("listen", "EOPNOTSUPP", "listen() error"), ("accept", "ENOMEM", "accept() error")]


@contextmanager
def _failing_server(bed: Testbed, step: str, errno_: str) -> Iterator[Server]:
    """The server with its `step` call failing with `errno_` (2-phase located;
    accept with a client connection to make an event loop call it)."""
    client = None
    if step == "accept":
        srv, client = _accept_failing(bed, errno_)
    else:
        inj = support.point(support.server_points(bed), step, "server").injection(errno_)
        srv = bed.start_server(injections=[inj], ready=False, name=f"server-{step}")
    try:
        yield srv
    finally:
        if client is not None:
            client.close()


@clause("ERR-4")
def test_server_accept_emfile(bed: Testbed) -> None:
    srv, client = _accept_failing(bed, "EMFILE")
    try:
        _expect_injected_failure(bed, srv, "accept() error", "accept() failed with EMFILE")
    finally:
        if client is not None:
            client.close()


@client_side
@clause("ERR-4")
def test_client_socket_emfile(bed: Testbed) -> None:
    p = support.point(support.client_points(bed), "socket", "client")
    with peers.PeerServer(peers.greet(), "tcp4") as peer:
        run = bed.run(bed.client_argv("tcp4", peer.port), injections=[p.injection("EMFILE")])
    if run.rc != 1 or "socket() error" not in lines(run.stderr):
        support.require_landed(run.trace_log, "socket() failed with EMFILE")
    support.expect_error(run, "socket() error", stdout_empty=False)


# -- ERR-5 ------------------------------------------------------------------------------------

def _stdout_clean(run: support.ClientRun, scenario: str) -> None:
    if run.timed_out:
        pytest.skip(f"{scenario}: the program did not end (judged by other clauses)")
    if run.stdout:
        support.require_landed(run.trace_log, scenario)
        raise Violation(f"{scenario}: error text on stdout {run.stdout[:200]!r} "
                        f"(stdout carries only the usage line or the success output)")


@clause("ERR-5")
@pytest.mark.parametrize("step,errno_,message", SERVER_FAULTS, ids=[s for s, _, _ in SERVER_FAULTS])
def test_server_errors_not_on_stdout(bed: Testbed, step: str, errno_: str, message: str) -> None:
    with _failing_server(bed, step, errno_) as srv:
        _stdout_clean(_server_run(bed, srv, 3.0), f"{step}() failed with {errno_}")


@clause("ERR-5")
def test_server_bad_port_not_on_stdout(bed: Testbed) -> None:
    transport = bed.primary(bed.server_program)
    if transport == "unix":
        pytest.skip("the server's command line takes no port")
    srv = bed.spawn_server(bed.server_argv(transport, "abc", None), transport=transport)
    _stdout_clean(_server_run(bed, srv, 3.0), "server given port 'abc'")


@client_side
@clause("ERR-5")
@pytest.mark.parametrize("step,errno_", [("socket", "EACCES"), ("connect", "ENETUNREACH"),
                                         ("read", "EIO")])
def test_client_errors_not_on_stdout(bed: Testbed, step: str, errno_: str) -> None:
    p = support.point(support.client_points(bed), step, "client")
    with peers.PeerServer(peers.greet(), "tcp4") as peer:
        run = bed.run(bed.client_argv("tcp4", peer.port), injections=[p.injection(errno_)])
    _stdout_clean(run, f"client {step}() failed with {errno_}")


@client_side
@clause("ERR-5")
def test_client_bad_ip_not_on_stdout(bed: Testbed) -> None:
    run = bed.run(bed.client_argv("tcp4", bed.free_port(), host="999.1.1.1"), timeout=5.0)
    _stdout_clean(run, "client given IP '999.1.1.1'")


# -- ERR-6 ------------------------------------------------------------------------------------

@clause("ERR-6")
@pytest.mark.parametrize("read_first", [0, 1], ids=["reset-at-once", "reset-after-1-byte"])
def test_no_sigpipe_death(bed: Testbed, read_first: int) -> None:
    if not profiles.of(bed).one_shot:
        _resets_while_answering(bed, read_first)
        return
    srv = bed.start_server()
    sock = peers.connect(srv.transport, srv.port, srv.path)
    try:
        if read_first:
            sock.settimeout(5.0)
            sock.recv(read_first)
        if srv.transport != "unix":
            peers.set_linger_abort(sock)
    finally:
        sock.close()
    rc = srv.proc.wait(5.0)
    if rc is not None and rc < 0:
        raise Violation(f"peer reset the connection: server {srv.proc.status()}")
    if rc is not None and rc not in (0, 1):
        raise Violation(f"peer reset the connection: server {srv.proc.status()} (expected 0 or 1)")
    # Still running 5 s later: it survived the reset (whether a one-shot server
    # must exit by then is LIFE-3's concern, not this clause's).


def _resets_while_answering(bed: Testbed, rounds: int) -> None:
    """A concurrent server: clients pour in requests without reading the answers,
    then reset — so the server writes answers to reset connections (first
    ECONNRESET, then EPIPE, which raises SIGPIPE unless ignored or MSG_NOSIGNAL).
    Only death by a signal is this clause's concern; a server that stops serving
    otherwise fails LIFE-8."""
    srv = bed.start_server(support.stream_transport(bed))
    flood = profiles.of(bed).flood(512 * 1024)
    for _ in range(3 + rounds):
        sock = peers.connect(srv.transport, srv.port, srv.path)
        try:
            sock.settimeout(0.5)
            try:
                sock.sendall(flood)
            except OSError:
                pass  # our buffers are full because the server echoes: enough
            if srv.transport != "unix":
                peers.set_linger_abort(sock)
        finally:
            sock.close()
        if srv.proc.wait(0.2) is not None:
            break
    rc = srv.proc.wait(0.5)
    if rc is not None and rc < 0:
        raise Violation(f"clients reset while the server was answering: server {srv.proc.status()}")


# -- ERR-7 ------------------------------------------------------------------------------------

@clause("ERR-7")
@pytest.mark.parametrize("step,errno_,message", SERVER_FAULTS, ids=[s for s, _, _ in SERVER_FAULTS])
def test_server_fault_injection(bed: Testbed, step: str, errno_: str, message: str) -> None:
    with _failing_server(bed, step, errno_) as srv:
        _expect_injected_failure(bed, srv, message, f"{step}() failed with {errno_}")


CLIENT_FAULTS = [("socket", "EACCES", "socket() error"),
                 ("connect", "ENETUNREACH", "connect() error!"), ("read", "EIO", "read() error!")]


@client_side
@clause("ERR-7")
@pytest.mark.parametrize("step,errno_,message", CLIENT_FAULTS, ids=[s for s, _, _ in CLIENT_FAULTS])
def test_client_fault_injection(bed: Testbed, step: str, errno_: str, message: str) -> None:
    p = support.point(support.client_points(bed), step, "client")
    with peers.PeerServer(peers.greet(), "tcp4") as peer:
        run = bed.run(bed.client_argv("tcp4", peer.port), injections=[p.injection(errno_)])
    if run.timed_out or run.rc != 1 or message not in lines(run.stderr):
        support.require_landed(run.trace_log, f"{step}() failed with {errno_}")
    if run.timed_out:
        raise Violation(f"{step}() failed with {errno_}: still running after 5 s")
    if message not in lines(run.stderr):
        raise Violation(f"{step}() failed with {errno_}: expected the stderr line {message!r}; {run.describe()}")
    if run.rc != 1:
        raise Violation(f"{step}() failed with {errno_}: {run.proc.status()} (expected exit 1)")


# -- ERR-8 ------------------------------------------------------------------------------------

@clause("ERR-8")
@pytest.mark.parametrize("step", ["accept", "read", "write"])
def test_server_eintr_retried(bed: Testbed, step: str) -> None:
    if step != "accept" and not profiles.of(bed).one_shot:
        _eintr_in_connection(bed, step)
        return
    base = support.server_baseline(bed)
    if step == "accept":
        inj = tracing.Injection(("accept", "accept4"), "EINTR", 1)
    else:
        inj = support.point(base.points, step, "server").injection("EINTR")
    srv = bed.start_server(support.stream_transport(bed), injections=[inj], ready=False,
                           name=f"server-eintr-{step}")
    # An interrupted blocking accept() returns at once: a server that gives up
    # on EINTR may be gone before it is ever seen listening.
    what, _ = bed.exit_or_listen(srv.proc, bed.server_program.startup_timeout)
    got = peers.Received(end="nothing: the server never listened")
    if what == "listen":
        got = support.exchange(bed, srv)
    rc = support.finish(bed, srv)
    status = srv.proc.status()
    # "Retried" means: the exchange goes exactly as it does without the EINTR.
    assert base.received is not None
    same_exchange = got.data == base.received.data and got.end == base.received.end
    if same_exchange and rc == base.rc:
        return
    srv.proc.kill()  # the strace log is complete only once the tracee is gone
    support.require_landed(srv.trace_log, f"EINTR in {step}()")
    if not same_exchange:
        raise Violation(f"EINTR in {step}(): the client got {got.describe()}; without it "
                        f"{base.received.describe()} (server {status}, "
                        f"stderr {srv.proc.stderr()[:120]!r})")
    raise Violation(f"EINTR in {step}(): server {status} where a normal run ends "
                    f"with {describe_status(base.rc)}; stderr {srv.proc.stderr()[:120]!r}")


def _eintr_in_connection(bed: Testbed, step: str) -> None:
    """A concurrent server serves connections in other threads or processes: the
    EINTR is injected through strace attached to the running server, so that it
    lands on the first read/write of the connection's own thread."""
    base = support.attached_baseline(bed)
    p = support.point(base.points, step, "server")
    srv = bed.start_server(support.stream_transport(bed), name=f"server-eintr-{step}")
    bed.attach_trace(srv, [p.injection("EINTR")], name=f"eintr-{step}")
    got = support.exchange(bed, srv)
    assert base.received is not None
    if got.data == base.received.data and got.end == base.received.end:
        return
    rc = support.finish(bed, srv)
    bed.trace_done(srv)
    support.require_landed(srv.trace_log, f"EINTR in {step}()")
    raise Violation(f"EINTR in the connection's {step}(): the client got {got.describe()}; "
                    f"without it {base.received.describe()} (server {describe_status(rc)}, "
                    f"stderr {srv.proc.stderr()[-120:]!r})")


@client_side
@clause("ERR-8")
@pytest.mark.parametrize("step", ["connect", "read"])
def test_client_eintr_retried(bed: Testbed, step: str) -> None:
    base = support.client_baseline(bed)
    p = support.point(base.points, step, "client")
    with peers.PeerServer(peers.greet(), "tcp4") as peer:
        run = bed.run(bed.client_argv("tcp4", peer.port), injections=[p.injection("EINTR")])
    if run.rc != base.rc or run.stdout != base.stdout:
        support.require_landed(run.trace_log, f"EINTR in {step}()")
        raise Violation(f"EINTR in {step}(): {run.describe()}; without it: "
                        f"{describe_status(base.rc)}, stdout {base.stdout[:80]!r}")
