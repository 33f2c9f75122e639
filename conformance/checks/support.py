"""Judgements shared by several checks: expected texts, argv surgery, 2-phase
fault-injection points.  No process is spawned here except through the testbed."""

from __future__ import annotations

import errno
import importlib.util
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance.checks import profiles
from conformance.evidence import Inconclusive, Pass, require
from conformance.harness import peers
from conformance.harness import trace as tracing
from conformance.harness.testbed import (
    STREAM_TRANSPORTS,
    ClientRun,
    Server,
    Testbed,
    Violation,
    lines,
)

GREETING = peers.GREETING
CLIENT_OUTPUT = b"Message from server: Hello World! \n"
READ_FAMILY = ("read", "readv", "recvfrom", "recvmsg", "recvmmsg", "pread64")
WRITE_FAMILY = ("write", "writev", "sendto", "sendmsg", "sendmmsg", "pwrite64", "sendfile")


# -- texts ---------------------------------------------------------------------------------

def program_names(argv: list[str], base_dir: Path) -> set[str]:
    """The names a program may legitimately print as its argv[0].

    A C program sees argv[0] exactly as exec'd; a script run through its shebang
    sees the resolved path; a Python program run as `python file.py` or
    `python -m mod` sees the file's path."""
    argv0 = argv[0]
    names = {argv0}
    if "/" in argv0:
        names.add(str((base_dir / argv0).resolve()))
    else:
        import shutil

        from conformance.harness.process import child_env
        found = shutil.which(argv0, path=child_env(None)["PATH"])
        if found:
            names.add(found)
    if os.path.basename(argv0).startswith("python") and len(argv) > 1:
        if argv[1] == "-m" and len(argv) > 2:
            spec = importlib.util.find_spec(argv[2])
            if spec and spec.origin:
                names.add(spec.origin)
        elif not argv[1].startswith("-"):
            names |= {argv[1], str((base_dir / argv[1]).resolve())}
    return names


def expect_usage(run: ClientRun, names: set[str], rest: str) -> Pass:
    """The usage line on stdout and exit 1; the Pass cites the run."""
    require(run)  # a run strace never started says nothing about the program
    wanted = {f"Usage : {n} {rest}\n".encode() for n in names}
    if run.timed_out:
        raise Violation(f"expected the usage line and exit 1; the program was still running: {run.describe()}")
    if run.stdout not in wanted:
        shown = sorted(wanted, key=len)[0]
        raise Violation(f"expected stdout {shown!r}, saw {run.stdout[:200]!r} (stderr {run.stderr[:120]!r})")
    if run.rc != 1:
        raise Violation(f"usage printed, but {run.proc.status()} (expected exit status 1)")
    return Pass(f"printed {run.stdout!r} and exited 1", run)


def expect_error(run: ClientRun, message: str, *, stdout_empty: bool = True) -> Pass:
    """exit 1 with `message` as a line of stderr (error_handling), stdout empty;
    the Pass cites the run."""
    require(run)  # a run strace never started says nothing about the program
    if run.timed_out:
        raise Violation(f"expected {message!r} and exit 1; still running: {run.describe()}")
    if message not in lines(run.stderr):
        raise Violation(f"expected the stderr line {message!r}; {run.describe()}")
    if run.rc != 1:
        raise Violation(f"reported {message!r} but {run.proc.status()} (expected exit status 1)")
    if stdout_empty and run.stdout:
        raise Violation(f"stdout must stay empty on an error, saw {run.stdout[:200]!r}")
    return Pass(f"{message!r} on stderr, exit status 1"
                + (", stdout empty" if stdout_empty else ""), run)


# -- the profile's normal exchange -------------------------------------------------------------

def stream_transport(bed: Testbed) -> str:
    """The transport of the generic (not transport-specific) server checks: a
    stream one, since they judge connections; skip for a datagram-only target."""
    program = bed.server_program
    transport = bed.primary(program)
    if transport in STREAM_TRANSPORTS:
        return transport
    raise Inconclusive(f"the target declares no stream transport "
                       f"(only {', '.join(program.transports)})")


# What our socket says when the server refused, dropped or reset us, or never
# accepted (a full backlog): the target's doing.  Any other errno (EMFILE in our
# own process, ...) is the suite's trouble and stays an error.
PEER_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
                         errno.ETIMEDOUT, errno.ENOENT, errno.EAGAIN, errno.EHOSTUNREACH})


@contextmanager
def blamed_on_target(what: str, srv: Server) -> Iterator[None]:
    """Turn our socket's failure caused by the server (refused, reset, timed out)
    into a Violation saying what the server did."""
    try:
        yield
    except OSError as e:
        if not isinstance(e, TimeoutError) and e.errno not in PEER_ERRNOS:
            raise
        raise Violation(f"{what}: {e.strerror or e} (server {srv.status()})") from None


def exchange(bed: Testbed, srv: Server, timeout: float = 5.0) -> peers.Received:
    """The profile's normal exchange on one connection, as a correct client does
    it (`Profile.exchange`), with `timeout` scaled for the server."""
    with blamed_on_target("the normal exchange", srv):
        return profiles.of(bed).exchange(srv, timeout * srv.timeout_scale)


def finish(bed: Testbed, srv: Server, timeout: float = 5.0) -> int | None:
    """End a server after its normal exchange, by its profile's end-of-service
    rule: a one-shot server ends by itself (waited for up to `timeout`); a
    concurrent one is sent SIGTERM (its process group) and waited for up to 2 s.
    Killed if it does not end then: None."""
    if profiles.of(bed).one_shot:
        return srv.stop(0, timeout)
    return srv.stop(signal.SIGTERM, min(timeout, 2.0))


class Session:
    """An open connection to a concurrent server that does the profile's round
    trips on demand (echo: a tagged line comes back; jsondoc: a ping with an id
    is answered with that id) — what LIFE-5/7/8 use to tell "served" from not.

    Our socket failing (reset, refused) means the server dropped or refused us:
    that is reported as a Violation saying so, not as our error."""

    def __init__(self, bed: Testbed, srv: Server, timeout: float = 5.0) -> None:
        self.profile = profiles.of(bed)
        self.scale = srv.timeout_scale
        self.timeout = timeout * self.scale
        self.srv = srv
        with blamed_on_target("connecting", srv):
            self.sock = peers.connect(srv.transport, srv.port, srv.path, self.timeout)
        self.buf = b""

    def send(self, tag: int) -> bytes:
        msg = self.profile.request(tag)
        with blamed_on_target(f"round trip {tag}: sending {msg!r}", self.srv):
            self.sock.sendall(msg)
        return msg

    def receive(self, tag: int, sent: bytes, timeout: float | None = None) -> None:
        """Wait for the answer to `send(tag)`; Violation if it does not come."""
        limit = self.timeout if timeout is None else timeout * self.scale
        deadline = time.monotonic() + limit
        while True:
            done, self.buf = self.profile.take_answer(self.buf, tag, sent)
            if done:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise Violation(f"round trip {tag}: no answer to {sent!r} within "
                                f"{limit:g} s (got {self.buf[:80]!r})")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue  # judged above: no answer in time
            except OSError as e:
                if e.errno not in PEER_ERRNOS:
                    raise
                raise Violation(f"round trip {tag}: waiting for the answer to {sent!r}: "
                                f"{e.strerror} (server {self.srv.status()})") from None
            if not chunk:
                raise Violation(f"round trip {tag}: the server closed the connection "
                                f"instead of answering {sent!r}")
            self.buf += chunk

    def roundtrip(self, tag: int, timeout: float | None = None) -> None:
        self.receive(tag, self.send(tag), timeout)

    def close(self) -> None:
        self.sock.close()


# -- argv surgery --------------------------------------------------------------------------

def without_positionals(argv: list[str], template: tuple[str, ...], placeholders: tuple[str, ...]
                        ) -> list[str]:
    """`argv` minus the arguments whose template carries one of `placeholders`."""
    return [a for a, t in zip(argv, template, strict=True)
            if not any("{" + p + "}" in t for p in placeholders)]


# -- 2-phase fault injection -------------------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """A lifecycle call found in a trace of a normal run: inject at its ordinal."""
    syscall: str
    when: int

    def injection(self, error: str) -> tracing.Injection:
        return tracing.Injection((self.syscall,), error, self.when)


@dataclass(frozen=True)
class Baseline:
    """A traced normal run: where the lifecycle calls are, and what happened."""
    points: dict[str, Point]
    received: peers.Received | None = None   # server runs: what our client got
    rc: int | None = None                    # exit status (None: still running, killed)
    stdout: bytes = b""                      # client runs: what it printed


_baselines: dict[tuple[object, ...], Baseline] = {}


def _fd_role_points(trace: tracing.Trace, role: str) -> dict[str, Point]:
    """Ordinals of the lifecycle calls in a normal run's trace.

    server: the socket()/bind()/listen() of the descriptor that was listen()ed on,
    the first read and write on the first accepted connection.
    client: the socket()/connect() of the descriptor that read data, its first read."""
    calls = trace.calls
    points: dict[str, Point] = {}

    def last_before(idx: int, pid: int, pred: Callable[[tracing.Call], bool]) -> tracing.Call | None:
        for c in reversed(calls[:idx]):
            if c.pid == pid and pred(c):
                return c
        return None

    if role == "server":
        li = next((i for i, c in enumerate(calls) if c.name == "listen" and c.ret == 0), None)
        if li is None:
            return points
        lst = calls[li]
        fd, pid = lst.fd, lst.pid
        for name, pred in (
            ("socket", lambda c: c.name == "socket" and c.ret == fd),
            ("bind", lambda c: c.name == "bind" and c.fd == fd),
        ):
            c = last_before(li, pid, pred)
            if c is not None and (p := _point_of(calls, c)):
                points[name] = p
        points["listen"] = _point_of(calls, lst) or Point("listen", 1)
        acc = next((c for c in calls[li:] if c.name in ("accept", "accept4") and c.ret is not None
                    and c.ret >= 0), None)
        if acc is not None:
            if p := _point_of(calls, acc):
                points["accept"] = p
            conn = acc.ret
            after = calls[calls.index(acc):]
            rd = next((c for c in after if c.pid == acc.pid and c.fd == conn and c.name in READ_FAMILY), None)
            wr = next((c for c in after if c.pid == acc.pid and c.fd == conn and c.name in WRITE_FAMILY), None)
            if rd is not None and (p := _point_of(calls, rd)):
                points["read"] = p
            if wr is not None and (p := _point_of(calls, wr)):
                points["write"] = p
    else:
        rd_i = next((i for i, c in enumerate(calls) if c.name in READ_FAMILY and c.sock
                     and c.ret is not None and c.ret > 0), None)
        if rd_i is None:
            return points
        rd = calls[rd_i]
        fd, pid = rd.fd, rd.pid
        con = last_before(rd_i, pid, lambda c: c.name == "connect" and c.fd == fd)
        if con is not None:
            ci = calls.index(con)
            sock = last_before(ci, pid, lambda c: c.name == "socket" and c.ret == fd)
            for name, c in (("socket", sock), ("connect", con)):
                if c is not None and (p := _point_of(calls, c)):
                    points[name] = p
            first_read = next((c for c in calls[ci:] if c.pid == pid and c.fd == fd
                               and c.name in READ_FAMILY), None)
            if first_read is not None and (p := _point_of(calls, first_read)):
                points["read"] = p
    return points


def server_baseline(bed: Testbed) -> Baseline:
    """One traced normal run of the server (cached per target for the worker's
    session): where its lifecycle calls are, and how a normal exchange ends."""
    bed.need_strace()
    transport = stream_transport(bed)
    key = ("server", repr(bed.target), transport)
    if key not in _baselines:
        srv = bed.start_server(transport, trace=True, name="trace-server")
        got = exchange(bed, srv)
        rc = finish(bed, srv)
        assert srv.trace_log is not None
        points = _fd_role_points(tracing.parse(srv.trace_log), "server")
        _baselines[key] = Baseline(points, got, rc)
    return _baselines[key]


def _connection_points(trace: tracing.Trace) -> dict[str, Point]:
    """In a trace attached to a running server (with nothing else going on): the
    first socket read and write — those of the one connection we made — in
    whichever thread or child process serves it, with ordinals counted from the
    attach in that thread, as strace counts them.  (The accept() the server was
    blocked in when strace attached is often not in the log at all.)"""
    calls = trace.calls
    points: dict[str, Point] = {}
    for step, family in (("read", READ_FAMILY), ("write", WRITE_FAMILY)):
        hit = next((c for c in calls if c.sock and c.name in family), None)
        if hit is not None and (p := _point_of(calls, hit)):
            points[step] = p
    return points


def _point_of(calls: list[tracing.Call], target: tracing.Call) -> Point | None:
    """`target` as an injection point: its ordinal among the calls of the same
    name in the same thread (strace counts `when=` per thread)."""
    n = 0
    for c in calls:
        if c.pid == target.pid and c.name == target.name:
            n += 1
        if c is target:
            return Point(c.name, n)
    return None


def attached_baseline(bed: Testbed) -> Baseline:
    """A normal exchange with a concurrent server traced from after its start-up
    (strace attached to the listening server): where a connection's first read and
    write are, counted the way an injection attached the same way counts them."""
    bed.need_strace()
    transport = stream_transport(bed)
    key = ("attached", repr(bed.target), transport)
    if key not in _baselines:
        srv = bed.start_server(transport, name="attached-server")
        log = bed.attach_trace(srv, name="attached-trace")
        got = exchange(bed, srv)
        rc = finish(bed, srv)
        bed.trace_done(srv)
        _baselines[key] = Baseline(_connection_points(tracing.parse(log)), got, rc)
    return _baselines[key]


def client_baseline(bed: Testbed) -> Baseline:
    """One traced normal run of the client against a correct peer (tcp4)."""
    bed.need_strace()
    bed.require_transport(bed.client_program, "tcp4")
    key = ("client", repr(bed.target))
    if key not in _baselines:
        with peers.PeerServer(peers.greet()) as peer:
            run = bed.run(bed.client_argv("tcp4", peer.port), trace=True, name="trace-client")
            peer.wait(5.0)
        assert run.trace_log is not None
        points = _fd_role_points(tracing.parse(run.trace_log), "client")
        _baselines[key] = Baseline(points, None, run.rc, run.stdout)
    return _baselines[key]


def server_points(bed: Testbed) -> dict[str, Point]:
    return server_baseline(bed).points


def client_points(bed: Testbed) -> dict[str, Point]:
    return client_baseline(bed).points


def require_landed(log: Path | None, what: str) -> None:
    """Skip, rather than judge, a fault-injection run whose fault never happened
    (a program that takes another path than in its traced normal run)."""
    if log is None:
        return
    hit = [c for c in tracing.injected_calls(tracing.parse(log)) if c.sock or c.name == "socket"]
    if not hit:
        pytest.skip(f"{what}: the injected fault did not land on a socket call (the program took "
                    "another path than in its traced normal run); nothing to judge")


def point(points: dict[str, Point], step: str, who: str) -> Point:
    if step not in points:
        pytest.skip(f"could not locate the {who}'s {step}() in a trace of a normal run")
    return points[step]


def hold_port(transport: str, port: int) -> socket.socket:
    """A listening socket holding the wildcard of `port` (what ERR-1 collides with)."""
    if transport == "tcp6":
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("0.0.0.0", port))
    s.listen(1)
    return s


def settle(seconds: float = 0.05) -> None:
    """Let in-flight segments land before the capture is judged."""
    time.sleep(seconds)
