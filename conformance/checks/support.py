"""Judgements shared by several checks: expected texts, argv surgery, 2-phase
fault-injection points.  No process is spawned here except through the testbed."""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance.harness import peers
from conformance.harness import trace as tracing
from conformance.harness.testbed import ClientRun, Testbed, Violation, lines

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

        from conformance.harness.process import _env
        found = shutil.which(argv0, path=_env(None)["PATH"])
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


def expect_usage(run: ClientRun, names: set[str], rest: str) -> None:
    wanted = {f"Usage : {n} {rest}\n".encode() for n in names}
    if run.timed_out:
        raise Violation(f"expected the usage line and exit 1; the program was still running: {run.describe()}")
    if run.stdout not in wanted:
        shown = sorted(wanted, key=len)[0]
        raise Violation(f"expected stdout {shown!r}, saw {run.stdout[:200]!r} (stderr {run.stderr[:120]!r})")
    if run.rc != 1:
        raise Violation(f"usage printed, but {run.proc.status()} (expected exit status 1)")


def expect_error(run: ClientRun, message: str, *, stdout_empty: bool = True) -> None:
    """exit 1 with `message` as a line of stderr (error_handling), stdout empty."""
    if run.timed_out:
        raise Violation(f"expected {message!r} and exit 1; still running: {run.describe()}")
    if message not in lines(run.stderr):
        raise Violation(f"expected the stderr line {message!r}; {run.describe()}")
    if run.rc != 1:
        raise Violation(f"reported {message!r} but {run.proc.status()} (expected exit status 1)")
    if stdout_empty and run.stdout:
        raise Violation(f"stdout must stay empty on an error, saw {run.stdout[:200]!r}")


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

    def ordinal_of(target: tracing.Call) -> Point | None:
        n = 0
        for c in calls:
            if c.pid == target.pid and c.name == target.name:
                n += 1
            if c is target:
                return Point(c.name, n)
        return None

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
            if c is not None and (p := ordinal_of(c)):
                points[name] = p
        points["listen"] = ordinal_of(lst) or Point("listen", 1)
        acc = next((c for c in calls[li:] if c.name in ("accept", "accept4") and c.ret is not None
                    and c.ret >= 0), None)
        if acc is not None:
            if p := ordinal_of(acc):
                points["accept"] = p
            conn = acc.ret
            after = calls[calls.index(acc):]
            rd = next((c for c in after if c.pid == acc.pid and c.fd == conn and c.name in READ_FAMILY), None)
            wr = next((c for c in after if c.pid == acc.pid and c.fd == conn and c.name in WRITE_FAMILY), None)
            if rd is not None and (p := ordinal_of(rd)):
                points["read"] = p
            if wr is not None and (p := ordinal_of(wr)):
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
                if c is not None and (p := ordinal_of(c)):
                    points[name] = p
            first_read = next((c for c in calls[ci:] if c.pid == pid and c.fd == fd
                               and c.name in READ_FAMILY), None)
            if first_read is not None and (p := ordinal_of(first_read)):
                points["read"] = p
    return points


def server_baseline(bed: Testbed) -> Baseline:
    """One traced normal run of the server (cached per target for the worker's
    session): where its lifecycle calls are, and how a normal exchange ends."""
    bed.need_strace()
    transport = bed.primary(bed.server_program)
    key = ("server", repr(bed.target), transport)
    if key not in _baselines:
        srv = bed.start_server(transport, trace=True, name="trace-server")
        got = peers.fetch_greeting(srv.transport, srv.port, srv.path, timeout=5.0)
        rc = bed.stop(srv, 5.0)
        assert srv.trace_log is not None
        points = _fd_role_points(tracing.parse(srv.trace_log), "server")
        _baselines[key] = Baseline(points, got, rc)
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
