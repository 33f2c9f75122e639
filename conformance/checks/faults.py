"""Fault injection for ERR-4/5/7/8/9: where a lifecycle call is, how to make it
fail, and whether the fault landed.

A fault is injected in two phases: a traced normal run (`Baseline`, cached per
target and worker) says which invocation of a syscall is the lifecycle call
(`Point`: strace counts `when=` per thread); a second run injects the failure
there.  Whether the target took the same path the second time is not assumed:
the injected run's own trace shows where the failure went, and a `Fault` is an
observation that is sound only when it **landed** — the injected call is the
target's lifecycle call (a socket() with the listener's arguments, a bind() of
the address under test, a listen()/accept() on the socket bound there or seen
listening, a read/write on a connection accepted from it, the client's connect()
to the suite's peer or a read on that connection).  A check builds its Pass from
the landed Fault, and requires it before judging a violation: a fault that hit
something else (call counts drift between runs, another thread or code path)
gives `skip` "fault did not land", never a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conformance.checks import support
from conformance.evidence import Doubt, Inconclusive, require
from conformance.harness import peers
from conformance.harness.inspect import SockEntry, listening
from conformance.harness.strace import Injection, slowdown
from conformance.harness.syscalls import (
    ACCEPT_CALLS,
    READ_CALLS,
    WRITE_CALLS,
    Call,
    Trace,
    families,
    injected_calls,
    names_address,
    parse,
)
from conformance.harness.testbed import Server, Testbed, lines

# The error lines of error_handling() that name a lifecycle call (ERR-4/ERR-7
# accept any of them; ERR-9 wants the one of the call that failed).
ERROR_LINES = {"socket": "socket() error", "bind": "bind() error", "listen": "listen() error",
               "accept": "accept() error", "connect": "connect() error!", "read": "read() error!"}
LIFECYCLE_ERROR_LINES = frozenset(ERROR_LINES.values())

# Errnos only that call returns, where such exist (REQUIREMENTS ERR-7): no correct
# program retries them, and none can be mistaken for another call's failure.
SERVER_FAULTS = [("socket", "EAFNOSUPPORT"), ("bind", "EADDRNOTAVAIL"), ("listen", "EOPNOTSUPP"),
                 ("accept", "ENOMEM")]
CLIENT_FAULTS = [("socket", "EAFNOSUPPORT"), ("connect", "ENETUNREACH"), ("read", "EIO")]
# Resource exhaustion (ERR-4).
SERVER_EMFILE = [("socket", "EMFILE"), ("accept", "EMFILE")]
CLIENT_EMFILE = [("socket", "EMFILE")]

STEP_CALLS = {"socket": ("socket",), "bind": ("bind",), "listen": ("listen",),
              "accept": ACCEPT_CALLS, "connect": ("connect",), "read": READ_CALLS,
              "write": WRITE_CALLS}


# -- where the lifecycle calls are ----------------------------------------------------------

@dataclass(frozen=True)
class Point:
    """A lifecycle call found in a trace of a normal run: inject at its ordinal.
    `args`: the call's arguments where they identify it (socket(): the family,
    type and protocol of the listener or client socket)."""
    syscall: str
    when: int
    args: str = ""

    def injection(self, error: str) -> Injection:
        return Injection((self.syscall,), error, self.when)


@dataclass(frozen=True)
class Baseline:
    """A traced normal run: where the lifecycle calls are, and what happened."""
    points: dict[str, Point]
    received: peers.Received | None = None   # server runs: what our client got
    rc: int | None = None                    # exit status (None: still running, killed)
    stdout: bytes = b""                      # client runs: what it printed


_baselines: dict[tuple[object, ...], Baseline] = {}


def point_of(calls: list[Call], target: Call, args: str = "") -> Point | None:
    """`target` as an injection point: its ordinal among the calls of the same
    name in the same thread (strace counts `when=` per thread)."""
    n = 0
    for c in calls:
        if c.pid == target.pid and c.name == target.name:
            n += 1
        if c is target:
            return Point(c.name, n, args)
    return None


def _first(calls: list[Call], names: tuple[str, ...], inodes: set[int]) -> Call | None:
    return next((c for c in calls if c.name in names and c.inode in inodes), None)


def _server_points(trace: Trace, listener: int) -> dict[str, Point]:
    """socket()/bind()/listen()/accept() of the listener (by inode), the first
    read and write on the first connection accepted from it."""
    calls = trace.calls
    found: dict[str, Call | None] = {
        "socket": next((c for c in calls if c.name == "socket" and c.ret_inode == listener), None),
        "bind": _first(calls, ("bind",), {listener}),
        "listen": _first(calls, ("listen",), {listener}),
        "accept": next((c for c in calls if c.name in ACCEPT_CALLS and c.inode == listener
                        and c.ret_inode is not None), None),
    }
    conns = _accepted(trace, {listener})
    found["read"] = _first(calls, READ_CALLS, conns)
    found["write"] = _first(calls, WRITE_CALLS, conns)
    return _points(calls, found)


def _connection_points(trace: Trace, listener: int) -> dict[str, Point]:
    """In a trace attached to a running server: the first read and write on the
    connection accepted from the listener, counted from the attach in that
    thread, as an injection attached the same way counts them."""
    conns = _accepted(trace, {listener}, attached=True)
    return _points(trace.calls, {"read": _first(trace.calls, READ_CALLS, conns),
                                 "write": _first(trace.calls, WRITE_CALLS, conns)})


def _client_points(trace: Trace, port: int | None) -> dict[str, Point]:
    """socket()/connect() of the socket connected to the suite's peer, its first read."""
    calls = trace.calls
    con = next((c for c in calls if c.name == "connect" and names_address(c.args, port=port)),
               None)
    if con is None or con.inode is None:
        return {}
    after = calls[calls.index(con) + 1:]  # a read before connect() is no lifecycle read
    return _points(calls, {
        "socket": next((c for c in calls if c.name == "socket" and c.ret_inode == con.inode),
                       None),
        "connect": con, "read": _first(after, READ_CALLS, {con.inode})})


def _points(calls: list[Call], found: dict[str, Call | None]) -> dict[str, Point]:
    out = {}
    for step, c in found.items():
        if c is not None:
            p = point_of(calls, c, c.args if step == "socket" else "")
            if p is not None:
                out[step] = p
    return out


def _accepted(trace: Trace, listeners: set[int], attached: bool = False) -> set[int]:
    """The connections accepted from `listeners`.  In a log attached to a running
    server, the accept() the server was blocked in may be missing (strace attached
    in the middle of it; seen under load): a socket served by a thread or process
    born after the attach, which the log does not show created, was handed to it
    by the accepting thread — a runtime's own sockets predate the attach and are
    served by threads that do too."""
    out = {c.ret_inode for c in trace.calls if c.name in ACCEPT_CALLS and c.inode in listeners
           and c.ret_inode is not None}
    if attached:
        created = set(families(trace)) | {c.ret_inode for c in trace.calls
                                          if c.name in ACCEPT_CALLS and c.ret_inode is not None}
        out |= {c.inode for c in trace.calls if c.inode is not None and c.pid in trace.parents
                and c.name in (*READ_CALLS, *WRITE_CALLS) and c.inode not in created
                and c.inode not in listeners}
    return out


def _listener_inode(srv: Server) -> int:
    if srv.listener is None:
        raise Inconclusive("the server was not seen listening; no injection point")
    return srv.listener.entry.inode


def server_baseline(bed: Testbed) -> Baseline:
    """One traced normal run of the server (cached per target for the worker's
    session): where its lifecycle calls are, and how a normal exchange ends."""
    bed.need_strace()
    transport = support.stream_transport(bed)
    key = ("server", repr(bed.target), transport)
    if key not in _baselines:
        srv = bed.start_server(transport, trace=True, name="trace-server")
        got = support.exchange(bed, srv)
        rc = support.finish(bed, srv)
        if srv.trace_log is None:
            raise RuntimeError("a traced server without its log")
        points = _server_points(parse(srv.trace_log), _listener_inode(srv))
        _baselines[key] = Baseline(points, got, rc)
    return _baselines[key]


def attached_baseline(bed: Testbed) -> Baseline:
    """A normal exchange with a concurrent server traced from after its start-up
    (strace attached to the listening server): where a connection's first read
    and write are, counted the way an injection attached the same way counts them."""
    bed.need_strace()
    transport = support.stream_transport(bed)
    key = ("attached", repr(bed.target), transport)
    if key not in _baselines:
        srv = bed.start_server(transport, name="attached-server")
        log = bed.attach_trace(srv, name="attached-trace")
        got = support.exchange(bed, srv, timeout=5.0 * slowdown())  # traced since the attach
        rc = support.finish(bed, srv)
        bed.trace_done(srv)
        points = _connection_points(parse(log), _listener_inode(srv))
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
        if run.trace_log is None:
            raise RuntimeError("a traced client run without its log")
        require(run)  # strace ran the program
        points = _client_points(parse(run.trace_log), peer.port)
        _baselines[key] = Baseline(points, None, run.rc, run.stdout)
    return _baselines[key]


def point(points: dict[str, Point], step: str, who: str) -> Point:
    if step not in points:
        raise Inconclusive(f"could not locate the {who}'s {step}() on its lifecycle socket in "
                           "a trace of a normal run")
    return points[step]


# -- the injected fault, observed -------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """The target's lifecycle socket as the suite knows it from outside: the port
    or AF_UNIX path under test (the server's, or with `peer` the client's peer's),
    and the listener's inode when readiness saw it (`attached`: the trace starts
    at an attach to the running server)."""
    port: int | None = None
    path: str | None = None
    listener: int | None = None
    peer: bool = False
    attached: bool = False  # the trace starts at an attach to the running server


@dataclass
class Fault:
    """An injected failure as observed in the injected run's trace.  `hit` is the
    injected call on the target's lifecycle socket; `landed` when there is one."""

    injection: Injection
    step: str
    hit: Call | None
    elsewhere: list[Call] = field(default_factory=list)  # injected calls that missed

    @property
    def landed(self) -> bool:
        return self.hit is not None

    def doubt(self) -> Doubt | None:
        if self.hit is not None:
            return None
        if self.elsewhere:
            c = self.elsewhere[0]
            seen = f"it hit line {c.line}: {str(c)[:120]} instead"
        else:
            seen = "no call was made to fail (the program made fewer such calls than in its " \
                   "traced normal run)"
        return Doubt(f"fault did not land: {self.injection} was meant for the {self.step}() of "
                     f"the target's lifecycle socket; {seen}. The program took another path "
                     "than in its traced normal run; nothing to judge")

    def __str__(self) -> str:
        if self.hit is None:
            return str(self.injection)
        return f"{self.hit.name}() failing with {self.injection.error} (log line {self.hit.line})"

    @classmethod
    def observe(cls, injection: Injection, step: str, trace: Trace, at: Endpoint,
                point: Point | None = None) -> Fault:
        injected = injected_calls(trace)
        hit = next((c for c in injected if _lands(c, step, trace, at, point)), None)
        return cls(injection, step, hit, [c for c in injected if c is not hit])


def _lands(c: Call, step: str, trace: Trace, at: Endpoint, point: Point | None) -> bool:
    if c.name not in STEP_CALLS[step]:
        return False
    if step == "socket":  # nothing to anchor on yet: the same call as the lifecycle one
        return point is not None and c.args == point.args
    if step in ("bind", "connect"):
        return names_address(c.args, port=at.port, path=at.path)
    if at.peer:  # a client: reads on its connection to the peer, once connect() was made
        return any(k.name == "connect" and k.inode == c.inode and k.end_line < c.line
                   and names_address(k.args, port=at.port, path=at.path) for k in trace.calls)
    listeners = {b.inode for b in trace.calls if b.name == "bind" and b.inode is not None
                 and b.errno is None and names_address(b.args, port=at.port, path=at.path)}
    if at.listener is not None:
        listeners.add(at.listener)
    if step in ("listen", "accept"):
        return c.inode in listeners
    return c.inode in _accepted(trace, listeners, attached=at.attached)


# -- injected runs ------------------------------------------------------------------------------

@dataclass
class FaultRun:
    """One run of the target with a fault injected: the fault and how it ended."""
    fault: Fault
    rc: int | None              # None: still running at the end of the wait (then killed)
    status: str
    stdout: bytes
    stderr: bytes
    still_listening: list[SockEntry] = field(default_factory=list)

    @property
    def error_lines(self) -> list[str]:
        """The stderr lines that name a lifecycle call."""
        return [ln for ln in lines(self.stderr) if ln in LIFECYCLE_ERROR_LINES]

    def describe(self) -> str:
        return f"{self.status}; stdout={self.stdout[:200]!r}; stderr={self.stderr[:200]!r}"


_runs: dict[tuple[object, ...], FaultRun] = {}


def server_fault(bed: Testbed, step: str, errno_: str) -> FaultRun:
    """The server with its `step` call failing with `errno_` (cached per target,
    so ERR-5, ERR-7 and ERR-9 judge the same run).  accept: the first
    accept/accept4 of each thread fails, with a client connected so that an event
    loop calls it; the others: at the ordinal of a traced normal run."""
    bed.need_strace()
    key = ("server", repr(bed.target), step, errno_)
    if key in _runs:
        return _runs[key]
    p = None
    if step == "accept":
        inj = Injection(("accept", "accept4"), errno_, 1)
    else:
        p = point(server_baseline(bed).points, step, "server")
        inj = p.injection(errno_)
    srv = bed.start_server(support.stream_transport(bed), injections=[inj], ready=False,
                           name=f"server-{step}-{errno_}")
    client = None
    if step == "accept":
        # A blocking accept() fails at once (the injected call never waits), so the
        # server may be gone before it is seen listening: both are fine here.
        what, _ = bed.exit_or_listen(srv.proc, bed.traced_startup_timeout)
        if what == "listen":
            try:
                client = peers.connect(srv.transport, srv.port, srv.path, timeout=2.0)
            except OSError:
                client = None
    try:
        rc = srv.wait_exit(3.0)
        left: list[SockEntry] = []
        if rc is None:
            left = listening(srv.pid)
            srv.kill()
    finally:
        if client is not None:
            client.close()
    if srv.trace_log is None:
        raise RuntimeError("an injected server without its log")
    fault = Fault.observe(inj, step, parse(srv.trace_log), Endpoint(srv.port, srv.path), p)
    run = FaultRun(fault, rc, srv.proc.status() if rc is not None else "still running",
                   srv.proc.stdout(), srv.proc.stderr(), left)
    _runs[key] = run
    return run


def client_fault(bed: Testbed, step: str, errno_: str) -> FaultRun:
    """The client (tcp4, against a correct peer) with its `step` call failing
    with `errno_` at the ordinal of a traced normal run (cached per target)."""
    key = ("client", repr(bed.target), step, errno_)
    if key in _runs:
        return _runs[key]
    p = point(client_baseline(bed).points, step, "client")
    inj = p.injection(errno_)
    with peers.PeerServer(peers.greet(), "tcp4") as peer:
        run = bed.run(bed.client_argv("tcp4", peer.port), injections=[inj],
                      name=f"client-{step}-{errno_}")
    if run.trace_log is None:
        raise RuntimeError("an injected client run without its log")
    require(run)  # strace ran the program
    fault = Fault.observe(inj, step, parse(run.trace_log), Endpoint(port=peer.port, peer=True), p)
    out = FaultRun(fault, run.rc, run.proc.status() if not run.timed_out else "still running",
                   run.stdout, run.stderr)
    _runs[key] = out
    return out
