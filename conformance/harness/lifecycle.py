"""The descriptor model of a trace and the LIFE-0 rules.

`follow(trace, role, complete)` replays a parsed log (`harness.syscalls.Trace`)
through a model of the processes' descriptor tables and judges it against LIFE-0;
the result (`Lifecycle`) is an observation that is sound only when the trace is
(no unparsed line, the anchor socket followed) and the model kept the target's
socket from its creation.  Standard library only.

The model
---------
Every socket is followed through descriptor tables: threads (CLONE_FILES) share
one, fork()ed children get a copy; dup/dup2/dup3/fcntl(F_DUPFD*) add descriptors,
close/close_range/dup2-over/exec(CLOEXEC)/exit remove them; a socket is closed
when its last descriptor anywhere goes.  Failed calls count for the order (a
connect() that failed is still the connect step), except that a failed socket()
or accept() creates nothing.  The model sees the calls in order of completion
(`Call.end_line`): a blocked accept() that returns a reused descriptor number
completes after the close() of the old one.

Lifecycle sockets (REQUIREMENTS LIFE-0)
---------------------------------------
Only the lifecycle sockets are judged: the server's listener on the transport
under test and the connections accepted from it, the client's socket connected
to the suite's peer.  With an anchor (`syscalls.Anchor`) that is exactly the
anchored socket (and its accepted connections); a log read without one (the unit
tests' hand-written logs) takes every internet stream socket, and AF_UNIX stream
sockets that listen.  Descriptors a runtime keeps for itself — socketpairs,
AF_UNIX sockets to system services (nscd), netlink, epoll/eventfd (not even
traced) — are not part of the lifecycle.

Rules
-----
* bind, listen, accept, connect on a descriptor that is not a socket ("before
  socket()") or on a lifecycle socket closed earlier;
* on lifecycle sockets: read/write family on the listening socket; on a stream
  socket that is neither an accepted connection nor connect()ed (client: "before
  connect"); server: listen() before bind(); bind/listen/connect on an accepted
  connection; accept() on a socket that is not listening; bind() after listen()
  or connect();
* client: any listen() (a client bind() is allowed: CLI-4's business);
* the listening socket closed (its last descriptor) while a connection accepted
  from it is still open (in any process or thread: a forking server whose parent
  closes the listener while a child still serves breaks the pattern too);
* complete=True: a process that ends with exit status 0 without having closed a
  lifecycle socket whose last descriptor it holds (a forked child may leave its
  inherited copy of the listener to the parent).  Exits with status != 0 (the
  error_handling() path) and deaths by signal are not held to it.

After a process receives SIGTERM/SIGINT/SIGHUP/SIGQUIT it is shutting down on the
suite's request: the close order and the explicit-close rule no longer apply to it.
Calls that do not change the lifecycle are free anywhere: shutdown, setsockopt and
getsockopt (whether a late option takes effect is its OPT clause's or LIFE-5's
concern), fcntl, ioctl, poll/select/epoll (not even traced).  io_uring I/O is
invisible to strace.  Violations read "line N: ..." with N = `Call.line`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from conformance.evidence import Doubt
from conformance.harness.syscalls import (
    ACCEPT_CALLS,
    DUP_CALLS,
    FD_FIRST,
    INTERNET_FAMILIES,
    IO_CALLS,
    Call,
    Exit,
    Signal,
    Trace,
    fd_decoration,
    socket_decoration,
    split_args,
)

_SOCKET_ONLY = ("bind", "listen", "accept", "accept4", "connect")
_TERMINATING = frozenset({"SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"})


@dataclass(eq=False)
class _Sock:
    origin: str                # "socket", "accept", "pair", "inherited"
    stream: bool | None        # None: unknown
    state: str                 # new, bound, listening, connecting, accepted, pair, unknown
    line: int
    fd: int
    inode: int | None = None
    family: str | None = None  # "AF_INET", ... (None: not seen created)
    listener: _Sock | None = None
    conns: list[_Sock] = field(default_factory=list)
    refs: int = 0
    closed_line: int | None = None

    def describe(self) -> str:
        if self.state == "listening":
            return f"the listening socket {self.fd}"
        if self.origin == "accept":
            return f"the accepted connection {self.fd}"
        return f"socket {self.fd}"


@dataclass(eq=False)
class _Table:
    fds: dict[int, _Sock] = field(default_factory=dict)
    cloexec: set[int] = field(default_factory=set)
    tasks: set[int] = field(default_factory=set)
    closed: dict[int, tuple[_Sock, int]] = field(default_factory=dict)  # fd -> (sock, line)
    dead: bool = False


Event = Call | Exit | Signal


class _Model:
    """Follows sockets through descriptor tables; subclasses hook the lifecycle rules."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.tables: dict[int, _Table] = {}
        self.by_inode: dict[int, _Sock] = {}
        self.terminating: set[int] = set()  # tgids that got SIGTERM & co.

    # - events

    def events(self) -> list[tuple[int, int, Event]]:
        ev: list[tuple[int, int, Event]] = [(c.end_line, 1, c) for c in self.trace.calls]
        ev += [(e.line, 0, e) for e in self.trace.exit_events]
        ev += [(s.line, 0, s) for s in self.trace.signals]
        ev.sort(key=lambda t: (t[0], t[1]))
        return ev

    def run(self) -> Iterator[Call]:
        for _, _, e in self.events():
            if isinstance(e, Call):
                self.on_call(e)
                yield e
            elif isinstance(e, Exit):
                self.on_exit(e.pid, e.status, e.line, e.signal)
            else:
                if e.name in _TERMINATING:
                    self.terminating.add(self.trace.tgid(e.pid))

    # - tables

    def table(self, pid: int) -> _Table:
        t = self.tables.get(pid)
        if t is not None:
            return t
        parent = self.trace.parents.get(pid)
        if parent is not None and parent != pid:
            pt = self.table(parent)
            if pid in self.trace.shares_fds or pid in self.trace.threads:
                t = pt
            else:
                t = _Table(fds=dict(pt.fds), cloexec=set(pt.cloexec))
                for s in t.fds.values():
                    s.refs += 1
        else:
            t = _Table()
        t.tasks.add(pid)
        self.tables[pid] = t
        return t

    def install(self, t: _Table, fd: int, s: _Sock, line: int, cloexec: bool = False) -> None:
        old = t.fds.get(fd)
        if old is s:
            return
        if old is not None:
            self.drop(t, fd, line, "replaced")
        t.fds[fd] = s
        t.closed.pop(fd, None)
        s.refs += 1
        s.fd = fd
        if s.inode is not None:
            self.by_inode[s.inode] = s
        if cloexec:
            t.cloexec.add(fd)
        else:
            t.cloexec.discard(fd)

    def drop(self, t: _Table, fd: int, line: int, how: str, pid: int = 0,
             status: int | None = None) -> None:
        s = t.fds.pop(fd, None)
        t.cloexec.discard(fd)
        if s is None:
            return
        t.closed[fd] = (s, line)
        s.refs -= 1
        if s.refs <= 0:
            s.closed_line = line
            self.on_last_close(s, fd, line, how, pid, status)

    def resolve(self, t: _Table, fd: int | None, decor_sock: bool, inode: int | None,
                decorated: bool, line: int, errno: str | None) -> _Sock | None:
        """The socket behind `fd` at this call, reconciling our table with -y."""
        if fd is None or fd < 0:
            return None
        s = t.fds.get(fd)
        if decorated:
            if not decor_sock:
                if s is not None:  # we missed a close: forget it quietly
                    self.drop(t, fd, line, "stale")
                return None
            if s is not None and inode is not None and s.inode is not None and s.inode != inode:
                self.drop(t, fd, line, "stale")
                s = None
            if s is None:
                s = self.by_inode.get(inode) if inode is not None else None
                if s is None or s.refs <= 0:
                    s = _Sock("inherited", None, "unknown", line, fd, inode=inode)
                self.install(t, fd, s, line)
            elif s.inode is None and inode is not None:
                s.inode = inode
                self.by_inode[inode] = s
            return s
        if s is not None and errno == "EBADF":
            self.drop(t, fd, line, "stale")
            return None
        return s

    def call_sock(self, c: Call, t: _Table) -> _Sock | None:
        if c.fd is None:
            return None
        s = self.resolve(t, c.fd, c.inode is not None or socket_decoration(c.decor)[0], c.inode,
                         c.decor is not None, c.line, c.errno)
        if s is None and c.decor is None and c.errno is None and c.fd >= 0 \
                and c.name in _SOCKET_ONLY:  # a log without -y: it worked, so it is a socket
            s = _Sock("inherited", None, "unknown", c.line, c.fd)
            self.install(t, c.fd, s, c.line)
        return s

    def other_fd(self, c: Call, t: _Table, index: int) -> tuple[int | None, _Sock | None]:
        if len(c.arglist) <= index:
            return None, None
        fd, decor = fd_decoration(c.arglist[index])
        is_sock, inode = socket_decoration(decor)
        return fd, self.resolve(t, fd, is_sock, inode, decor is not None, c.line, c.errno)

    # - the calls

    def on_call(self, c: Call) -> None:
        t = self.table(c.pid)
        name = c.name
        s = self.call_sock(c, t) if name in FD_FIRST else None
        ok = c.ret is not None and c.ret >= 0 and c.errno is None
        if name == "socket":
            if ok and c.ret is not None:
                args = c.arglist
                kind = args[1] if len(args) > 1 else ""
                stream = None if not kind else ("SOCK_STREAM" in kind or "SOCK_SEQPACKET" in kind)
                ns = _Sock("socket", stream, "new", c.end_line, c.ret, inode=c.ret_inode,
                           family=args[0] if args else None)
                self.install(t, c.ret, ns, c.end_line, "SOCK_CLOEXEC" in kind)
            self.check(c, t, None)
        elif name == "socketpair":
            if ok and len(c.arglist) >= 4:
                kind = c.arglist[1]
                stream = "SOCK_STREAM" in kind or "SOCK_SEQPACKET" in kind
                pair = c.arglist[3]
                if pair.startswith("[") and pair.endswith("]"):
                    pair = pair[1:-1]
                for fd_text in split_args(pair):
                    fd, decor = fd_decoration(fd_text)
                    if fd is not None:
                        ns = _Sock("pair", stream, "pair", c.end_line, fd,
                                   inode=socket_decoration(decor)[1], family=c.arglist[0])
                        self.install(t, fd, ns, c.end_line, "SOCK_CLOEXEC" in kind)
            self.check(c, t, None)
        elif name in ACCEPT_CALLS:
            self.check(c, t, s)
            if ok and c.ret is not None:
                flags = c.arglist[3] if name == "accept4" and len(c.arglist) > 3 else ""
                ns = _Sock("accept", True, "accepted", c.end_line, c.ret, inode=c.ret_inode,
                           family=s.family if s is not None else None, listener=s)
                if s is not None:
                    s.conns.append(ns)
                self.install(t, c.ret, ns, c.end_line, "SOCK_CLOEXEC" in flags)
        elif name in ("bind", "listen", "connect", "setsockopt", "getsockopt", "shutdown"):
            self.check(c, t, s)
            if s is not None:
                if name == "bind" and s.state in ("new", "unknown"):
                    s.state = "bound"
                elif name == "listen":
                    s.state = "listening"
                elif name == "connect" and s.state not in ("listening", "accepted"):
                    s.state = "connecting"
        elif name in IO_CALLS:
            self.check(c, t, s)
            if name in ("sendfile", "splice"):
                idx = 1 if name == "sendfile" else 2
                fd2, s2 = self.other_fd(c, t, idx)
                self.check_io(c, t, fd2, s2)
        elif name == "close":
            self.check(c, t, s)
            # a failed close() (EINTR, EIO) closed the descriptor all the same on Linux;
            # an injected one was never made
            if c.fd is not None and c.errno != "EBADF" and not c.injected:
                self.drop(t, c.fd, c.end_line, "close", c.pid)
        elif name == "close_range":
            if ok and len(c.arglist) >= 2:
                lo = _int(c.arglist[0], 0)
                hi = _int(c.arglist[1], 1 << 31)
                flags = c.arglist[2] if len(c.arglist) > 2 else ""
                for fd in sorted(f for f in t.fds if lo <= f <= hi):
                    if "CLOSE_RANGE_CLOEXEC" in flags:
                        t.cloexec.add(fd)
                    else:
                        self.drop(t, fd, c.end_line, "close", c.pid)
        elif name in DUP_CALLS or (name in ("fcntl", "fcntl64") and len(c.arglist) > 1):
            cmd = c.arglist[1] if name.startswith("fcntl") else ""
            if name.startswith("fcntl") and cmd in ("F_SETFD",) and c.fd is not None and ok:
                flag = c.arglist[2] if len(c.arglist) > 2 else ""
                if c.fd in t.fds:
                    if "FD_CLOEXEC" in flag:
                        t.cloexec.add(c.fd)
                    else:
                        t.cloexec.discard(c.fd)
            elif (name in DUP_CALLS or cmd.startswith("F_DUPFD")) and ok and c.ret is not None \
                    and c.fd != c.ret:
                cloexec = "CLOEXEC" in cmd or (name == "dup3" and "O_CLOEXEC" in c.args)
                if s is not None:
                    self.install(t, c.ret, s, c.end_line, cloexec)
                elif c.ret in t.fds:  # dup2/dup3 of a non-socket over a socket
                    self.drop(t, c.ret, c.end_line, "close", c.pid)
        elif name in ("clone", "clone3", "fork", "vfork"):
            if c.ret is not None and c.ret > 0:
                self.table(c.ret)  # the child's copy of the table is taken now
        elif name in ("execve", "execveat"):
            if c.ret == 0:
                for fd in sorted(t.cloexec):
                    self.drop(t, fd, c.end_line, "exec", c.pid)
        elif name == "exit_group":
            status = _int(c.arglist[0], 0) if c.arglist else 0
            tgid = self.trace.tgid(c.pid)
            gone = {p for p in t.tasks if self.trace.tgid(p) == tgid}
            self.end_tasks(t, gone, c.end_line, status, c.pid)
        elif name == "exit":
            status = _int(c.arglist[0], 0) if c.arglist else 0
            self.end_tasks(t, {c.pid}, c.end_line, status, c.pid)

    def on_exit(self, pid: int, status: int | None, line: int, sig: str | None) -> None:
        t = self.tables.get(pid)
        if t is None or t.dead:
            return
        self.end_tasks(t, {pid}, line, status, pid, sig)

    def end_tasks(self, t: _Table, tasks: set[int], line: int, status: int | None, pid: int,
                  sig: str | None = None) -> None:
        if t.dead:
            return
        t.tasks -= tasks
        if t.tasks:
            return
        t.dead = True
        for fd in sorted(t.fds):
            self.drop(t, fd, line, "killed" if sig else "exit", pid, status)

    # - hooks

    def check(self, c: Call, t: _Table, s: _Sock | None) -> None:
        pass

    def check_io(self, c: Call, t: _Table, fd: int | None, s: _Sock | None) -> None:
        pass

    def on_last_close(self, s: _Sock, fd: int, line: int, how: str, pid: int,
                      status: int | None) -> None:
        pass


def _int(text: str, default: int) -> int:
    text = text.strip()
    try:
        return int(text, 0)
    except ValueError:
        return default


# -- LIFE-0 -------------------------------------------------------------------------------


class _Life(_Model):
    def __init__(self, trace: Trace, role: str, complete: bool) -> None:
        super().__init__(trace)
        self.role = role
        self.complete = complete
        self.anchor = trace.anchor_inode() if trace.anchor is not None else None
        # Without an anchor, AF_UNIX stream sockets count when they listen (a
        # server on the unix transport); the model learns that only later.
        self.unix_listeners = {c.inode for c in trace.calls if c.name == "listen"}
        self.violations: list[str] = []
        self.steps: list[Call] = []  # the calls on lifecycle sockets, for the evidence
        self.anchored: _Sock | None = None  # the anchor socket, as its socket() made it

    def v(self, line: int, text: str) -> None:
        self.violations.append(f"line {line}: {text}")

    def lifecycle(self, s: _Sock | None) -> bool:
        """Whether `s` is one of the target's lifecycle sockets (module docstring)."""
        if s is None or s.origin in ("pair", "inherited"):
            return False
        if s.origin == "accept":
            return s.listener is not None and self.lifecycle(s.listener)
        if self.trace.anchor is not None:
            return s.inode is not None and s.inode == self.anchor
        if s.stream is False:
            return False
        if s.family in INTERNET_FAMILIES or s.family is None:
            return True
        return s.family == "AF_UNIX" and self.role == "server" and s.inode in self.unix_listeners

    def on_call(self, c: Call) -> None:
        # the socket a call is on, looked up before the call (a close removes it)
        t = self.tables.get(c.pid)
        s = t.fds.get(c.fd) if t is not None and c.fd is not None and c.name in FD_FIRST else None
        super().on_call(c)
        if s is None and c.name in FD_FIRST and c.fd is not None:
            s = self.tables[c.pid].fds.get(c.fd)
        elif c.name == "socket" and c.ret is not None and c.ret >= 0:
            s = self.tables[c.pid].fds.get(c.ret)
            if s is not None and self.anchor is not None and s.inode == self.anchor:
                self.anchored = s
        if self.lifecycle(s):
            self.steps.append(c)

    def check(self, c: Call, t: _Table, s: _Sock | None) -> None:
        name, fd = c.name, c.fd
        if name in _SOCKET_ONLY and s is None and fd is not None:
            if c.decor is not None or c.errno in ("EBADF", "ENOTSOCK"):
                closed = t.closed.get(fd) if c.decor is None else None
                if closed is not None:
                    if self.lifecycle(closed[0]):
                        self.v(c.line, f"{name}({fd}) after {closed[0].describe()} was closed "
                                       f"(line {closed[1]})")
                else:
                    self.v(c.line, f"{name}({fd}) on a descriptor that is not a socket "
                                   "(no socket() before it)")
            return
        if name == "listen" and self.role == "client" and (s is None or s.origin != "pair"):
            self.v(c.line, f"listen({fd}) in a client")
            return
        if name in IO_CALLS:
            self.check_io(c, t, fd, s)
            return
        if s is None or not self.lifecycle(s):
            return
        if name in ACCEPT_CALLS and s.state != "listening":
            self.v(c.line, f"{name}({fd}) on a socket that is not listening")
        elif name == "bind" and s.origin == "accept":
            self.v(c.line, f"bind({fd}) on an accepted connection")
        elif name == "bind" and s.state in ("listening", "connecting"):
            self.v(c.line, f"bind({fd}) after {'listen' if s.state == 'listening' else 'connect'}()")
        elif name == "listen":
            if s.origin == "accept" or s.state == "connecting":
                self.v(c.line, f"listen({fd}) on a connection")
            elif s.state == "new" and s.stream is not False:
                self.v(c.line, f"listen({fd}) before bind()")
        elif name == "connect":
            if s.state == "listening":
                self.v(c.line, f"connect({fd}) on the listening socket")
            elif s.origin == "accept":
                self.v(c.line, f"connect({fd}) on an accepted connection")

    def check_io(self, c: Call, t: _Table, fd: int | None, s: _Sock | None) -> None:
        if fd is None:
            return
        if s is None:
            closed = t.closed.get(fd)
            if closed is not None and c.errno == "EBADF" and self.lifecycle(closed[0]):
                self.v(c.line, f"{c.name}({fd}) after {closed[0].describe()} was closed "
                               f"(line {closed[1]})")
            return
        if not self.lifecycle(s):
            return
        if s.state == "listening":
            self.v(c.line, f"{c.name}({fd}) on the listening socket")
        elif s.origin == "socket" and s.stream and s.state in ("new", "bound"):
            if self.role == "client":
                self.v(c.line, f"{c.name}({fd}) on the client socket before connect()")
            else:
                self.v(c.line, f"{c.name}({fd}) on socket {fd}, which is neither an accepted "
                               "connection nor connected")

    def on_last_close(self, s: _Sock, fd: int, line: int, how: str, pid: int,
                      status: int | None) -> None:
        if how in ("stale", "replaced", "exec") or not self.lifecycle(s):
            return
        if self.trace.tgid(pid) in self.terminating:
            return
        if how == "close" and s.state == "listening":
            still = [c for c in s.conns if c.refs > 0]
            if still:
                which = ", ".join(str(c.fd) for c in still)
                plural = "s" if len(still) > 1 else ""
                self.v(line, f"close({fd}) of the listener before the accepted connection{plural} "
                             f"{which} {'were' if plural else 'was'} closed")
        if how == "exit" and self.complete and status == 0:
            self.v(line, f"exit with {s.describe()} never closed (no close() before exit)")

    def lost(self) -> str | None:
        """Why the model cannot vouch for the anchored socket, if it cannot."""
        if self.anchor is None:
            return None
        s = self.anchored
        want = "listening" if self.role == "server" else "connecting"
        if s is None or s.origin != "socket" or s.state != want:
            return (f"the descriptor model lost {self.trace.anchor.what if self.trace.anchor else ''}"
                    f" (seen as {s.origin + ', ' + s.state if s else 'nothing'})")
        return None


@dataclass
class Lifecycle:
    """LIFE-0 judged on one trace: the violations, and the lifecycle calls seen.
    An observation: doubtful when the trace is, or when the model lost the
    target's socket (then "no violation" proves nothing)."""

    role: str
    trace: Trace
    violations: list[str] = field(default_factory=list)
    steps: list[Call] = field(default_factory=list)
    lost: str | None = None

    def doubt(self) -> Doubt | None:
        d = self.trace.doubt()
        if d is not None:
            return d
        if self.lost is not None:
            return Doubt(self.lost)
        if not self.steps:
            return Doubt(f"the trace shows no lifecycle call of the {self.role}")
        return None

    def summary(self) -> str:
        """The lifecycle calls in order, repeats folded: "socket → bind → listen → accept4 → …"."""
        names: list[str] = []
        counts: list[int] = []
        for c in self.steps:
            if names and names[-1] == c.name:
                counts[-1] += 1
            else:
                names.append(c.name)
                counts.append(1)
        return " → ".join(n if k == 1 else f"{n}×{k}" for n, k in zip(names, counts, strict=True))


def follow(trace: Trace, role: Literal["server", "client"], *, complete: bool) -> Lifecycle:
    """Judge the traced calls against LIFE-0 for `role`.  complete=True: the
    target ended by itself (explicit closes are then required before an exit
    with status 0).  Violations read "line N: ..." citing the log."""
    if role not in ("server", "client"):
        raise ValueError(f"role must be 'server' or 'client', not {role!r}")
    life = _Life(trace, role, complete)
    for _ in life.run():
        pass
    return Lifecycle(role, trace, life.violations, life.steps, life.lost())
