"""ERR — how system-call failures are reported."""

from __future__ import annotations

import time

import pytest

from conformance.checks import faults, profiles, support
from conformance.checks.faults import CLIENT_EMFILE, CLIENT_FAULTS, SERVER_EMFILE, SERVER_FAULTS
from conformance.clauses import clause, client_side
from conformance.evidence import NOT_APPLICABLE, Inconclusive, Pass, require
from conformance.harness import peers, strace
from conformance.harness.process import describe_status
from conformance.harness.syscalls import parse
from conformance.harness.testbed import Server, Testbed, Violation


def _server_run(srv: Server, timeout: float, *, judged: bool = False) -> support.ClientRun:
    """A server expected to exit by itself: waited for `timeout` s — a hang guard
    scaled for the server, or with `judged` the clause's own bound — else killed."""
    rc = srv.proc.wait(timeout) if judged else srv.wait_exit(timeout)
    if rc is None:
        srv.kill()
    return support.ClientRun(srv.proc, rc, rc is None, srv.trace_log)


def _ids(faults_: list[tuple[str, str]]) -> list[str]:
    return [f"{step}-{errno_}" for step, errno_ in faults_]


def _reported(run: faults.FaultRun) -> Pass:
    """ERR-4/ERR-7: the injected failure is reported with an error line naming a
    lifecycle call, exit 1, and no listener is left behind.  Judged only on a
    fault that landed."""
    fault = run.fault
    require(fault)
    if run.rc is None:
        where = f" and still listens on {run.still_listening[0].where}" if run.still_listening else ""
        raise Violation(f"{fault}: still running at the end of the wait{where}; expected an error "
                        "line naming a lifecycle call and exit 1")
    if not run.error_lines:
        raise Violation(f"{fault}: expected an error line on stderr naming a lifecycle call "
                        f"(e.g. {faults.ERROR_LINES[fault.step]!r}); {run.describe()}")
    if run.rc != 1:
        raise Violation(f"{fault}: reported {run.error_lines[0]!r} but {run.status} "
                        "(expected exit 1)")
    return Pass(f"{fault}: reported {run.error_lines[0]!r} and exited 1", fault)


# -- ERR-1 ------------------------------------------------------------------------------------

@clause("ERR-1")
def test_bind_failure(bed: Testbed) -> Pass:
    transport = bed.primary(bed.server_program)
    if transport == "unix":
        raise Inconclusive("ERR-1 is about a port held by another listening socket; the "
                           "target's server declares only AF_UNIX", NOT_APPLICABLE)
    port = bed.free_port(transport)
    with support.hold_port(transport, port):
        t0 = time.monotonic()
        srv = bed.spawn_server(bed.server_argv(transport, port, None), transport=transport)
        run = _server_run(srv, 2.0, judged=True)
        took = time.monotonic() - t0
    if run.timed_out:
        raise Violation(f"port {port} held by another listener: still running after 2 s; "
                        f"expected 'bind() error' and exit 1; stderr={run.stderr[:200]!r}")
    reported = support.expect_error(run, "bind() error")
    return Pass(f"port {port} held by another listener: 'bind() error', exit 1, empty stdout, "
                f"after {took:.2f} s", *reported.observations)


# -- ERR-2 ------------------------------------------------------------------------------------

@client_side
@clause("ERR-2")
def test_connect_refused(bed: Testbed) -> Pass:
    transport = bed.primary(bed.client_program)
    if transport == "unix":
        path = bed.unix_path("nobody-listens.sock")
        argv = bed.client_argv(transport, None, path)
    else:
        argv = bed.client_argv(transport, bed.free_port(transport))
    run = bed.run(argv, timeout=5.0)
    return support.expect_error(run, "connect() error!")


# -- ERR-3 ------------------------------------------------------------------------------------

EARLY_ENDS = [(0, False), (0, True), (5, False), (5, True)]


@client_side
@clause("ERR-3")
@pytest.mark.parametrize("nbytes,reset", EARLY_ENDS,
                         ids=[f"{n}B-then-{'RST' if r else 'FIN'}" for n, r in EARLY_ENDS])
def test_server_ends_early(bed: Testbed, nbytes: int, reset: bool) -> Pass:
    transport = bed.primary(bed.client_program)
    if transport == "unix":
        raise Inconclusive("the early-end peers are TCP (RST has no AF_UNIX equivalent); the "
                           "target's client declares only AF_UNIX", NOT_APPLICABLE)
    # 0.2 s (times the client's timeout_scale) for the client to see its connect
    # complete before the server ends the connection early.
    early_end = peers.cut_short(nbytes, reset=reset, after=0.2 * bed.client_program.timeout_scale)
    with peers.PeerServer(early_end, transport) as peer:
        run = bed.run(bed.client_argv(transport, peer.port), timeout=5.0)
    end = "RST" if reset else "FIN"
    if run.stdout:
        raise Violation(f"server sent {nbytes} byte(s) then {end}: the client printed "
                        f"{run.stdout[:100]!r} (a partial greeting must never be printed)")
    try:
        reported = support.expect_error(run, "read() error!")
    except Violation as v:
        raise Violation(f"server sent {nbytes} byte(s) then {end}: {v}") from None
    return Pass(f"server sent {nbytes} byte(s) then {end}: 'read() error!', exit 1, nothing "
                "printed", *reported.observations)


# -- ERR-4 ------------------------------------------------------------------------------------

@clause("ERR-4")
@pytest.mark.parametrize("step,errno_", SERVER_EMFILE, ids=_ids(SERVER_EMFILE))
def test_server_emfile(bed: Testbed, step: str, errno_: str) -> Pass:
    return _reported(faults.server_fault(bed, step, errno_))


@client_side
@clause("ERR-4")
@pytest.mark.parametrize("step,errno_", CLIENT_EMFILE, ids=_ids(CLIENT_EMFILE))
def test_client_emfile(bed: Testbed, step: str, errno_: str) -> Pass:
    return _reported(faults.client_fault(bed, step, errno_))


# -- ERR-5 ------------------------------------------------------------------------------------

def _stdout_clean(stdout: bytes, timed_out: bool, scenario: str,
                  fault: faults.Fault | None = None) -> Pass:
    if fault is not None:
        require(fault)
    if timed_out:
        raise Inconclusive(f"{scenario}: the program did not end (judged by other clauses)")
    if stdout:
        raise Violation(f"{scenario}: error text on stdout {stdout[:200]!r} "
                        f"(stdout carries only the usage line or the success output)")
    if fault is not None:
        return Pass(f"{scenario}: nothing on stdout", fault)
    return Pass(f"{scenario}: nothing on stdout")


def _fault_stdout_clean(run: faults.FaultRun) -> Pass:
    return _stdout_clean(run.stdout, run.rc is None, str(run.fault), run.fault)


@clause("ERR-5")
@pytest.mark.parametrize("step,errno_", SERVER_FAULTS, ids=_ids(SERVER_FAULTS))
def test_server_errors_not_on_stdout(bed: Testbed, step: str, errno_: str) -> Pass:
    return _fault_stdout_clean(faults.server_fault(bed, step, errno_))


@clause("ERR-5")
def test_server_bad_port_not_on_stdout(bed: Testbed) -> Pass:
    transport = bed.primary(bed.server_program)
    if transport == "unix":
        raise Inconclusive("the server's command line takes no port", "not-applicable")
    srv = bed.spawn_server(bed.server_argv(transport, "abc", None), transport=transport)
    run = _server_run(srv, 3.0)
    return _stdout_clean(run.stdout, run.timed_out, "server given port 'abc'")


@client_side
@clause("ERR-5")
@pytest.mark.parametrize("step,errno_", CLIENT_FAULTS, ids=_ids(CLIENT_FAULTS))
def test_client_errors_not_on_stdout(bed: Testbed, step: str, errno_: str) -> Pass:
    return _fault_stdout_clean(faults.client_fault(bed, step, errno_))


@client_side
@clause("ERR-5")
def test_client_bad_ip_not_on_stdout(bed: Testbed) -> Pass:
    run = bed.run(bed.client_argv("tcp4", bed.free_port(), host="999.1.1.1"), timeout=5.0)
    return _stdout_clean(run.stdout, run.timed_out, "client given IP '999.1.1.1'")


# -- ERR-6 ------------------------------------------------------------------------------------

@clause("ERR-6")
@pytest.mark.parametrize("read_first", [0, 1], ids=["reset-at-once", "reset-after-1-byte"])
def test_no_sigpipe_death(bed: Testbed, read_first: int) -> Pass:
    if not profiles.of(bed).one_shot:
        return _resets_while_answering(bed, read_first)
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
    rc = srv.wait_exit(5.0)
    if rc is not None and rc < 0:
        raise Violation(f"peer reset the connection: server {srv.proc.status()}")
    if rc is not None and rc not in (0, 1):
        raise Violation(f"peer reset the connection: server {srv.proc.status()} (expected 0 or 1)")
    # Still running 5 s later: it survived the reset (whether a one-shot server
    # must exit by then is LIFE-3's concern, not this clause's).
    return Pass(f"peer reset the connection: server {describe_status(rc)}, not killed by a signal")


def _resets_while_answering(bed: Testbed, rounds: int) -> Pass:
    """A concurrent server: clients pour in requests without reading the answers,
    then reset — so the server writes answers to reset connections (first
    ECONNRESET, then EPIPE, which raises SIGPIPE unless ignored or MSG_NOSIGNAL).
    Only death by a signal is this clause's concern; a server that stops serving
    otherwise fails LIFE-8."""
    srv = bed.start_server(support.stream_transport(bed))
    flood = profiles.of(bed).flood(512 * 1024)
    for _ in range(3 + rounds):
        try:
            sock = peers.connect(srv.transport, srv.port, srv.path)
        except OSError as e:
            rc = srv.proc.wait(1.0)
            if rc is not None and rc < 0:
                break  # judged below
            raise Inconclusive(f"after clients reset while it answered, the server refused a "
                               f"new connection ({e}) without dying by a signal: LIFE-8's "
                               "concern") from None
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
    return Pass(f"{3 + rounds} clients reset while the server was answering: server "
                f"{describe_status(rc)}, not killed by a signal")


# -- ERR-7 ------------------------------------------------------------------------------------

@clause("ERR-7")
@pytest.mark.parametrize("step,errno_", SERVER_FAULTS, ids=_ids(SERVER_FAULTS))
def test_server_fault_injection(bed: Testbed, step: str, errno_: str) -> Pass:
    return _reported(faults.server_fault(bed, step, errno_))


@client_side
@clause("ERR-7")
@pytest.mark.parametrize("step,errno_", CLIENT_FAULTS, ids=_ids(CLIENT_FAULTS))
def test_client_fault_injection(bed: Testbed, step: str, errno_: str) -> Pass:
    return _reported(faults.client_fault(bed, step, errno_))


# -- ERR-8 ------------------------------------------------------------------------------------

def _same_exchange(got: peers.Received, base: peers.Received | None) -> bool:
    if base is None:
        raise RuntimeError("a server baseline without its exchange")
    return got.data == base.data and got.end == base.end


@clause("ERR-8")
@pytest.mark.parametrize("step", ["accept", "read", "write"])
def test_server_eintr_retried(bed: Testbed, step: str) -> Pass:
    if step != "accept" and not profiles.of(bed).one_shot:
        return _eintr_in_connection(bed, step)
    base = faults.server_baseline(bed)
    point = None
    if step == "accept":
        inj = faults.Injection(("accept", "accept4"), "EINTR", 1)
    else:
        point = faults.point(base.points, step, "server")
        inj = point.injection("EINTR")
    srv = bed.start_server(support.stream_transport(bed), injections=[inj], ready=False,
                           name=f"server-eintr-{step}")
    # An interrupted blocking accept() returns at once: a server that gives up
    # on EINTR may be gone before it is ever seen listening.
    what, _ = bed.exit_or_listen(srv.proc, bed.traced_startup_timeout)
    got = peers.Received(end="nothing: the server never listened")
    if what == "listen":
        got = support.exchange(bed, srv)
    rc = support.finish(bed, srv)
    if srv.trace_log is None:
        raise RuntimeError("an injected server without its log")
    fault = faults.Fault.observe(inj, step, parse(srv.trace_log),
                                 faults.Endpoint(srv.port, srv.path), point)
    require(fault)
    # "Retried" means: the exchange goes exactly as it does without the EINTR.
    if not _same_exchange(got, base.received):
        raise Violation(f"EINTR in {step}(): the client got {got.describe()}; without it "
                        f"{base.received.describe() if base.received else '?'} (server "
                        f"{describe_status(rc)}, stderr {srv.proc.stderr()[:120]!r})")
    if base.rc is None:
        raise Inconclusive(f"EINTR in {step}(): the exchange went as without it, but a normal "
                           "run of the server did not end either (LIFE-3/LIFE-6's concern): no "
                           "end to compare with")
    if rc != base.rc:
        raise Violation(f"EINTR in {step}(): server {describe_status(rc)} where a normal run "
                        f"ends with {describe_status(base.rc)}; stderr {srv.proc.stderr()[:120]!r}")
    return Pass(f"{fault}: retried — the exchange and the server's end ({describe_status(rc)}) "
                "are those of a normal run", fault)


def _eintr_in_connection(bed: Testbed, step: str) -> Pass:
    """A concurrent server serves connections in other threads or processes: the
    EINTR is injected through strace attached to the running server, so that it
    lands on the first read/write of the connection's own thread."""
    base = faults.attached_baseline(bed)
    point = faults.point(base.points, step, "server")
    inj = point.injection("EINTR")
    srv = bed.start_server(support.stream_transport(bed), name=f"server-eintr-{step}")
    listener = srv.listener.entry.inode if srv.listener is not None else None
    bed.attach_trace(srv, [inj], name=f"eintr-{step}")
    got = support.exchange(bed, srv, timeout=5.0 * strace.slowdown())  # traced since the attach
    rc = support.finish(bed, srv)
    bed.trace_done(srv)
    if srv.trace_log is None:
        raise RuntimeError("an attached trace without its log")
    fault = faults.Fault.observe(inj, step, parse(srv.trace_log),
                                 faults.Endpoint(srv.port, srv.path, listener, attached=True),
                                 point)
    require(fault)
    if not _same_exchange(got, base.received):
        raise Violation(f"EINTR in the connection's {step}(): the client got {got.describe()}; "
                        f"without it {base.received.describe() if base.received else '?'} "
                        f"(server {describe_status(rc)}, stderr {srv.proc.stderr()[-120:]!r})")
    return Pass(f"{fault}: retried — the exchange is that of a normal run", fault)


@client_side
@clause("ERR-8")
def test_client_eintr_retried(bed: Testbed) -> Pass:
    """EINTR in the client's read (not connect: an interrupted connect() goes on
    in the background, which an injected EINTR cannot reproduce)."""
    base = faults.client_baseline(bed)
    run = faults.client_fault(bed, "read", "EINTR")
    require(run.fault)
    if run.rc != base.rc or run.stdout != base.stdout:
        raise Violation(f"EINTR in read(): {run.describe()}; without it: "
                        f"{describe_status(base.rc)}, stdout {base.stdout[:80]!r}")
    return Pass(f"{run.fault}: retried — same output and exit as a normal run", run.fault)


# -- ERR-9 ------------------------------------------------------------------------------------

def _names_failed_call(run: faults.FaultRun) -> Pass:
    """On a landed ERR-4/ERR-7 run that was reported: the error line names the
    call that failed."""
    fault = run.fault
    require(fault)
    if run.rc != 1 or not run.error_lines:
        raise Inconclusive(f"{fault}: not reported with an error line naming a lifecycle call "
                           "and exit 1 (ERR-4/ERR-7's failure): nothing to judge here")
    expected = faults.ERROR_LINES[fault.step]
    if expected not in run.error_lines:
        raise Violation(f"{fault}: the error line names another call, {run.error_lines[0]!r}; "
                        f"expected {expected!r}")
    return Pass(f"{fault}: reported {expected!r}", fault)


@clause("ERR-9")
@pytest.mark.parametrize("step,errno_", SERVER_FAULTS + SERVER_EMFILE,
                         ids=_ids(SERVER_FAULTS + SERVER_EMFILE))
def test_server_names_failed_call(bed: Testbed, step: str, errno_: str) -> Pass:
    return _names_failed_call(faults.server_fault(bed, step, errno_))


@client_side
@clause("ERR-9")
@pytest.mark.parametrize("step,errno_", CLIENT_FAULTS + CLIENT_EMFILE,
                         ids=_ids(CLIENT_FAULTS + CLIENT_EMFILE))
def test_client_names_failed_call(bed: Testbed, step: str, errno_: str) -> Pass:
    return _names_failed_call(faults.client_fault(bed, step, errno_))
