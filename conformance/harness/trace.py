"""System-call tracing (strace), fault injection, and the LIFE-0 lifecycle checker.

Running a target under `strace_argv(...)` writes a log that `parse()` turns into a
`Trace`; `lifecycle_violations()` judges it against LIFE-0, `socket_calls()` serves
ARGS-1/2 ("opens no socket"), and `Injection` + `ordinal()` make a chosen lifecycle
call fail for ERR-4/7/8.  Standard library only.

What strace 6.1 actually does (verified by tests/harness/test_trace.py)
------------------------------------------------------------------------
* `inject=...:when=N` counts invocations **per tracee** (per thread, per process),
  **per syscall** (``inject=accept,accept4:when=1`` fails the first accept *and* the
  first accept4 of every tracee), every new thread or forked child starting again
  at 1; the count is **not** reset by execve, so a wrapper's calls (``setpriv ...
  -- target``) count too.  `ordinal()` counts the same way from a log, so a
  2-phase injection (trace a normal run, find the ordinal, inject with that
  ``when``) is consistent as long as the same argv (wrapper included) is run in the
  same environment.  Because every tracee has its own count, ``when=N`` also fails
  the Nth call of any *other* thread/process of the target.
* Injection applies only to traced syscalls (``-e trace=none -e inject=dup``
  injects nothing), so `strace_argv` adds the injected names to the trace set.
  Injected calls are not executed; strace prints ``= -1 EMFILE (...) (INJECTED)``.
* when=1 on read() hits the dynamic loader, not the program: every dynamically
  linked program read()s libc.so.6 (ELF header) before main; a Python program
  reads dozens of files.  The first *socket* read needs ``ordinal(trace, "read",
  lambda c: c.sock)`` from a normal run.  socket(), bind(), listen(), accept() and
  connect() are not called before main by glibc, so when=1 is right for them in C.
* ``-y`` decorates every socket descriptor as ``3<socket:[8366]>`` (the inode: a
  stable identity across dup() and fork()), files as ``3</path>`` (``>`` escaped
  as ``\\76``, ``"`` as ``\\"``), pipes ``pipe:[N]``.  ``-yy`` would print protocol
  details instead, ``TCP:[8366]`` then ``TCP:[0.0.0.0:5000]`` once bound then
  ``TCP:[127.0.0.1:5000->127.0.0.1:43642]``, ``UNIX-STREAM:[ino,"/path"]``,
  ``UNIX-STREAM:[ino->peer,"/path"]``: the inode is lost, so we use ``-y``
  (`parse` understands both).
* ``-qq`` suppresses ``+++ exited with N +++`` (not ``+++ killed by SIG +++``), so
  we use ``-q`` (which only hides attach/detach chatter).  Exit statuses are also
  read from ``exit_group(N)``.
* Under ``-f`` one task's call can be split: ``accept(3<socket:[1]>, <unfinished
  ...>`` ... ``<... accept resumed>{...}, [16]) = 4<socket:[2]>``; a child's first
  calls can be logged before its parent's ``clone`` returns.
* strace exits with its tracee's status and dies by the tracee's signal (tracee
  killed by SIGTERM -> strace killed by SIGTERM), so Popen.returncode keeps its
  meaning.  Signal the tracee (strace's child, `tracee_pid()`), not strace: with
  ``-o FILE PROG`` strace blocks fatal signals (its default ``-I``) so a SIGTERM
  to strace does nothing and it just waits for the program; a SIGKILL to strace
  detaches the tracee, which lives on (hence killpg / pdeathsig).
* strace keeps one inject rule per syscall: a second ``-e inject=`` naming the
  same syscall replaces the first (`strace_argv` refuses that).

What glibc and CPython call (x86_64)
------------------------------------
* glibc: ``send``/``recv`` are ``sendto(fd, buf, n, flags, NULL, 0)`` /
  ``recvfrom(fd, buf, n, flags, NULL, NULL)``; the loader's ``read``, two
  ``pread64`` and ``close`` of ld.so.cache and libc.so.6 precede main.
* CPython: ``socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_IP)``,
  ``accept4(3, ..., SOCK_CLOEXEC)``, ``sendto`` for send/sendall, ``recvfrom`` for
  recv, ``ioctl(FIONBIO)`` and ``poll`` once a timeout is set,
  ``create_connection(timeout=...)`` is ``connect = -1 EINPROGRESS``, ``poll``,
  ``getsockopt(SO_ERROR)``; ``sock.dup()`` is ``fcntl(F_DUPFD_CLOEXEC, 0)``,
  ``os.closerange`` is ``close_range``.  CPython closes a socket object that the
  program forgot at finalization: an explicit ``close()`` syscall still appears.

The LIFE-0 model (`lifecycle_violations`)
-----------------------------------------
Every socket is followed through descriptor tables: threads (CLONE_FILES) share
one, fork()ed children get a copy; dup/dup2/dup3/fcntl(F_DUPFD*) add descriptors,
close/close_range/dup2-over/exec(CLOEXEC)/exit remove them; a socket is closed
when its last descriptor anywhere goes.  Failed calls count for the order (a
connect() that failed is still the connect step), except that a failed socket()
or accept() creates nothing.  Rules:

* lifecycle calls (bind, listen, accept, connect, setsockopt) on a descriptor that
  is not a socket ("before socket()") or on a socket closed earlier;
* read/write family on the listening socket; on a stream socket that is neither an
  accepted connection nor connect()ed (client: "before connect"); datagram and raw
  sockets may do I/O without connect;
* server: listen() before bind(); setsockopt() on a (stream) socket after its
  bind() (``socket -> setsockopt* -> bind``); bind/listen/connect on an accepted
  connection; accept() on a socket that is not listening;
* client: any listen() (a client bind() is allowed: CLI-4's business);
* the listening socket closed (its last descriptor) while a connection accepted
  from it is still open (in any process or thread: a forking server whose parent
  closes the listener while a child still serves breaks the pattern too);
* complete=True: a process that ends with exit status 0 without having closed a
  stream socket whose last descriptor it holds (a forked child may leave its
  inherited copy of the listener to the parent).  Exits with status != 0 (the
  error_handling() path) and deaths by signal are not held to it.

After a process receives SIGTERM/SIGINT/SIGHUP/SIGQUIT it is shutting down on the
suite's request: the close order and the explicit-close rule no longer apply to it.
Calls that do not change the lifecycle are free anywhere: shutdown, getsockopt,
fcntl, ioctl, poll/select/epoll (not even traced), setsockopt on a connection or a
client socket.  io_uring I/O is invisible to strace.

Violations read "line N: ..." with N = `Call.line`, the log line where the call
starts (its name and descriptor).  `Trace.calls` is in order of completion
(`Call.end_line`), which is the order the model must follow: a blocked accept()
that returns a reused descriptor number completes after the close() of the old one.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

STRACE_HINT = "strace not installed: apt-get install strace"

# -- syscall families -------------------------------------------------------------------

READ_CALLS = ("read", "readv", "pread64", "preadv", "preadv2", "recv", "recvfrom", "recvmsg",
              "recvmmsg")
WRITE_CALLS = ("write", "writev", "pwrite64", "pwritev", "pwritev2", "send", "sendto",
               "sendmsg", "sendmmsg", "sendfile")
IO_CALLS = (*READ_CALLS, *WRITE_CALLS, "splice")
ACCEPT_CALLS = ("accept", "accept4")
DUP_CALLS = ("dup", "dup2", "dup3")
SOCKET_CREATE_CALLS = ("socket", "socketpair")
PROCESS_CALLS = ("clone", "clone3", "fork", "vfork", "execve", "execveat", "exit", "exit_group")

# What strace_argv traces.  A leading "?" tells strace to ignore a name this
# architecture does not have (recv/send exist on some, dup2/fork/vfork not on arm64).
LIFECYCLE_SYSCALLS: tuple[str, ...] = (
    "socket", "socketpair", "setsockopt", "getsockopt", "bind", "listen", "accept", "accept4",
    "connect", "shutdown",
    "read", "readv", "pread64", "preadv", "preadv2", "?recv", "recvfrom", "recvmsg", "recvmmsg",
    "write", "writev", "pwrite64", "pwritev", "pwritev2", "?send", "sendto", "sendmsg",
    "sendmmsg", "sendfile", "splice",
    "close", "close_range", "dup", "?dup2", "dup3", "fcntl", "?fcntl64",
    "clone", "clone3", "?fork", "?vfork", "execve", "execveat", "exit", "exit_group",
)

# Calls whose first argument is a descriptor.
_FD_FIRST = frozenset({
    "setsockopt", "getsockopt", "bind", "listen", "accept", "accept4", "connect", "shutdown",
    "getsockname", "getpeername", *READ_CALLS, *WRITE_CALLS, "splice", "close", "dup", "dup2",
    "dup3", "fcntl", "fcntl64", "ioctl",
})
_SOCKET_ONLY = ("bind", "listen", "accept", "accept4", "connect", "setsockopt")
_TERMINATING = frozenset({"SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"})


@functools.cache
def strace_path() -> str | None:
    return shutil.which("strace")


# -- fault injection --------------------------------------------------------------------

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Injection:
    """One strace ``-e inject=`` rule: make the `when`-th call (counted per tracee
    and per syscall, see the module docstring) of each of `syscalls` fail with
    `error`.  strace keeps one rule per syscall (a later rule for the same
    syscall replaces the earlier one), so `strace_argv` refuses overlaps."""

    syscalls: tuple[str, ...]
    error: str
    when: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.syscalls, str):  # Injection("accept", ...) : be forgiving
            object.__setattr__(self, "syscalls", (self.syscalls,))
        if not self.syscalls or not all(_NAME.match(s) for s in self.syscalls):
            raise ValueError(f"bad syscall names {self.syscalls!r}")
        if not re.match(r"^E[A-Z0-9_]+$", self.error):
            raise ValueError(f"bad errno name {self.error!r}")
        if self.when < 1:
            raise ValueError(f"when must be >= 1, not {self.when}")

    def strace_arg(self) -> str:
        return f"inject={','.join(self.syscalls)}:error={self.error}:when={self.when}"


def strace_argv(argv: Sequence[str], log: Path | str, injections: Sequence[Injection] = (),
                *, strace: str | None = None) -> list[str]:
    """The command that runs `argv` under strace, following forks and threads,
    logging the lifecycle syscalls to `log`, with the given injections."""
    return [*_strace_options(log, injections, strace), "--", *argv]


def attach_argv(pid: int, log: Path | str, injections: Sequence[Injection] = (),
                *, strace: str | None = None) -> list[str]:
    """The command that attaches strace to the running process `pid` (all its
    threads, and what it forks from then on).  Injection counts then start at
    the attach, in every thread: `when=1` on read is the first read *after* the
    attach — in a thread-per-client server, the first read of each new client's
    thread — instead of a read the loader did at start-up."""
    return [*_strace_options(log, injections, strace), "-p", str(pid)]


def _strace_options(log: Path | str, injections: Sequence[Injection],
                    strace: str | None) -> list[str]:
    names = list(LIFECYCLE_SYSCALLS)
    known = {n.lstrip("?") for n in names}
    injected = [s for inj in injections for s in inj.syscalls]
    if len(set(injected)) != len(injected):
        raise ValueError(f"several injections for one syscall (strace keeps the last): {injected}")
    for inj in injections:
        for s in inj.syscalls:  # injection only works on traced syscalls
            if s not in known:
                names.append(s)
                known.add(s)
    cmd = [strace or strace_path() or "strace", "-f", "-q", "-y", "-s", "64", "-o", str(log),
           "-e", "trace=" + ",".join(names)]
    for inj in injections:
        cmd += ["-e", inj.strace_arg()]
    return cmd


def traced_by(pid: int) -> set[int]:
    """The tracer pids of every thread of `pid` (0 for an untraced thread)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("TracerPid:"):
                    out.add(int(line.split()[1]))
        except OSError:
            continue
    return out


def tracee_pid(strace_pid: int, timeout: float = 5.0) -> int | None:
    """The pid of the program strace started: the process to signal.  strace
    also forks short-lived children of its own at startup (ptrace feature
    probes), so this waits for a child that has exec()ed something other than
    strace.  A wrapper that exec()s the target (setpriv, env) keeps that pid."""
    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{strace_pid}/task/{strace_pid}/children")
    try:
        own = os.readlink(f"/proc/{strace_pid}/exe")
    except OSError:
        return None
    while True:
        try:
            found = children.read_text().split()
        except OSError:  # no such process, or a kernel without the children file
            found = _children_by_stat(strace_pid)
        for pid in found:
            try:
                if os.readlink(f"/proc/{pid}/exe") != own:
                    return int(pid)
            except OSError:
                continue
        if time.monotonic() >= deadline or not Path(f"/proc/{strace_pid}").exists():
            return None
        time.sleep(0.005)


def _children_by_stat(ppid: int) -> list[str]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(ppid):
            out.append(stat.parent.name)
    return sorted(out, key=int)


# -- the parsed log ---------------------------------------------------------------------


@dataclass
class Call:
    """One system call from the log (an <unfinished ...>/<... resumed> pair merged)."""

    pid: int
    name: str
    args: str                 # the argument text, decorations included
    fd: int | None            # the first argument, for calls that take a descriptor first
    ret: int | None           # None: "= ?" (exit, ERESTARTSYS) or the call never returned
    errno: str | None         # "EMFILE" when it failed
    sock: bool                # fd (or, for socket/accept/dup, the returned fd) is a socket
    injected: bool            # "(INJECTED)"
    line: int                 # log line where the call starts (name and first arguments)
    end_line: int = 0         # log line with its result (== line unless it was split)
    finished: bool = True     # False: the log ended or the task died inside the call
    result: str = ""          # the text after "= ", e.g. "4<socket:[8367]>"
    inode: int | None = None      # socket inode of fd, from -y
    ret_inode: int | None = None  # socket inode of the returned descriptor
    decor: str | None = None      # fd's -y decoration: "socket:[8366]", "/usr/lib/.../libc.so.6"

    def __post_init__(self) -> None:
        if not self.end_line:
            self.end_line = self.line

    @functools.cached_property
    def arglist(self) -> list[str]:
        return split_args(self.args)

    @property
    def failed(self) -> bool:
        return self.errno is not None

    def __str__(self) -> str:
        return f"{self.name}({self.args}) = {self.result}" if self.finished else \
            f"{self.name}({self.args} <unfinished ...>"


@dataclass(frozen=True)
class Signal:
    pid: int
    name: str
    line: int


@dataclass(frozen=True)
class Exit:
    pid: int
    status: int | None  # None when killed
    signal: str | None
    line: int


@dataclass
class Trace:
    calls: list[Call] = field(default_factory=list)  # in order of completion
    exits: dict[int, int | None] = field(default_factory=dict)  # pid -> status (None: killed)
    killed: dict[int, str] = field(default_factory=dict)        # pid -> "SIGTERM"
    signals: list[Signal] = field(default_factory=list)         # "--- SIGPIPE {...} ---"
    exit_events: list[Exit] = field(default_factory=list)       # "+++ ... +++" lines
    parents: dict[int, int] = field(default_factory=dict)       # child pid -> parent pid
    shares_fds: set[int] = field(default_factory=set)           # children made with CLONE_FILES
    threads: set[int] = field(default_factory=set)              # children made with CLONE_THREAD
    unparsed: list[int] = field(default_factory=list)           # line numbers we did not understand
    path: Path | None = None

    @property
    def root_pid(self) -> int | None:
        """The first task in the log (the traced program)."""
        first = min((c for c in self.calls), key=lambda c: c.line, default=None)
        return first.pid if first is not None else None

    def tgid(self, pid: int) -> int:
        """Thread-group leader of a task (itself unless it was cloned as a thread)."""
        while pid in self.threads and pid in self.parents:
            pid = self.parents[pid]
        return pid


_PREFIX = re.compile(r"^(?:\[pid\s+(\d+)\]\s+|(\d+)\s+)?"
                     r"(?:(?:\d\d:\d\d:\d\d(?:\.\d+)?|\d+\.\d+)\s+)?(.*)$")
_CALL = re.compile(r"^([a-z_][a-z0-9_]*)\((.*)$", re.S)
_RESUMED = re.compile(r"^<\.\.\. ([a-z_][a-z0-9_]*) resumed>\s?(.*)$", re.S)
_UNFINISHED = " <unfinished ...>"
_EXITED = re.compile(r"^\+\+\+ exited with (\d+) \+\+\+")
_KILLED = re.compile(r"^\+\+\+ killed by (SIG[A-Z0-9]+)")
_SIGNAL = re.compile(r"^--- (SIG[A-Z0-9]+) ")
_DECOR_SOCK = re.compile(r"^(socket|[A-Z][A-Za-z0-9]*(?:-[A-Z]+)?):\[(.*)\]$", re.S)
_FD_TEXT = re.compile(r"^(-?\d+)(?:<(.*)>)?$", re.S)
_FIRST_FD = re.compile(r"^(-?\d+)(?:<((?:[^>\\]|\\.|(?<=-)>(?=[^,)\]}\s]))*)>)?(?=,|\s*$)", re.S)


def _decoration_end(text: str, i: int) -> int:
    """Index of the ">" closing the fd decoration whose "<" is at `i`.  strace escapes
    ">" in paths (as \\76); a raw "->" inside the decoration is -yy's arrow between
    the two ends of a connection (TCP:[a:1->b:2], UNIX-STREAM:[1->2,"p"])."""
    n = len(text)
    j = i + 1
    while j < n:
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == ">":
            nxt = text[j + 1] if j + 1 < n else ""
            if not (text[j - 1] == "-" and nxt and nxt not in ",)]} "):
                return j
        j += 1
    return n


_TOKENS = re.compile(
    r'"(?:[^"\\]|\\.)*"?'                                # a string literal (maybe cut short)
    r'|(?<=\d)<(?:[^>\\]|\\.|(?<=-)>(?=[^,)\]}\s]))*>?'   # an fd decoration, see above
    r'|/\*.*?(?:\*/|$)'                                   # a comment: /* 35 vars */
    r'|[()\[\]{},]', re.S)


def _scan(text: str) -> Iterator[tuple[int, str, int]]:
    """Yield (index, char, depth) for the brackets and commas of `text` that are
    outside string literals, fd decorations ("3<socket:[1]>") and comments, with
    the bracket depth after the character."""
    depth = 0
    for m in _TOKENS.finditer(text):
        ch = m.group()
        if len(ch) != 1 or ch in '"</':
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        yield m.start(), ch, depth


def split_args(args: str) -> list[str]:
    """Split strace's argument text at its top-level commas."""
    out: list[str] = []
    start = 0
    for i, ch, depth in _scan(args):
        if ch == "," and depth == 0:
            out.append(args[start:i].strip())
            start = i + 1
    last = args[start:].strip()
    if last or out:
        out.append(last)
    return out


def _split_call(rest: str) -> tuple[str, str | None]:
    """"args) = result" -> ("args", "result"); result None when there is no "= "."""
    for i, ch, depth in _scan(rest):
        if ch == ")" and depth == -1:
            after = rest[i + 1:].strip()
            return rest[:i], (after[1:].strip() if after.startswith("=") else None)
    return rest, None


def fd_decoration(text: str) -> tuple[int | None, str | None]:
    """"3<socket:[8366]>" -> (3, "socket:[8366]"); "3" -> (3, None); else (None, None)."""
    m = _FD_TEXT.match(text.strip())
    if not m:
        return None, None
    return int(m.group(1)), m.group(2)


def socket_decoration(decor: str | None) -> tuple[bool, int | None]:
    """Whether a -y/-yy decoration names a socket, and its inode when shown."""
    if decor is None:
        return False, None
    m = _DECOR_SOCK.match(decor)
    if not m:
        return False, None
    inner = m.group(2)
    if m.group(1) == "socket":
        return True, int(inner) if inner.isdigit() else None
    im = re.match(r"^(\d+)(?:$|,|->)", inner)
    return True, int(im.group(1)) if im else None


def _parse_result(result: str | None) -> tuple[int | None, str | None, bool, str | None]:
    """-> (ret, errno, injected, decoration of the returned fd)."""
    if result is None:
        return None, None, False, None
    injected = "(INJECTED)" in result
    m = re.match(r"^(0x[0-9a-fA-F]+|-?\d+|\?)", result)
    if not m:
        return None, None, injected, None
    tok = m.group(1)
    ret = None if tok == "?" else int(tok, 0)
    rest = result[m.end():]
    decor = None
    if rest.startswith("<"):
        j = _decoration_end(rest, 0)
        decor, rest = rest[1:j], rest[j + 1:]
    em = re.match(r"^\s+(E[A-Z0-9_]+)\b", rest)
    errno = em.group(1) if em else None
    return ret, errno, injected, decor


def _make_call(pid: int, name: str, text: str, line: int, end_line: int,
               finished: bool) -> Call:
    args, result = _split_call(text) if finished else (text.rstrip().rstrip(","), None)
    ret, errno, injected, ret_decor = _parse_result(result)
    fd = inode = decor = None
    sock = False
    if name in _FD_FIRST and (fm := _FIRST_FD.match(args)):
        fd, decor = int(fm.group(1)), fm.group(2)
        sock, inode = socket_decoration(decor)
    ret_sock, ret_inode = socket_decoration(ret_decor)
    if name in ("socket", "accept", "accept4") and ret is not None and ret >= 0 and ret_decor is None:
        ret_sock = True  # without -y: a successful socket()/accept() returns a socket
    return Call(pid=pid, name=name, args=args, fd=fd, ret=ret, errno=errno,
                sock=sock or ret_sock, injected=injected, line=line, end_line=end_line,
                finished=finished and result is not None, result=result or "",
                inode=inode, ret_inode=ret_inode, decor=decor)


def parse(log: Path | str) -> Trace:
    """Read an strace log written with -f (and usually -y); see the module docstring."""
    path = Path(log)
    text = path.read_text(errors="replace")
    trace = parse_text(text)
    trace.path = path
    return trace


def parse_text(text: str) -> Trace:
    trace = Trace()
    pending: dict[int, tuple[str, str, int]] = {}  # pid -> (name, partial args, line)
    calls: list[Call] = []
    exit_group_status: dict[int, int] = {}

    def flush(pid: int, line: int) -> None:
        if pid in pending:
            name, partial, start = pending.pop(pid)
            calls.append(_make_call(pid, name, partial, start, line, finished=False))

    for lineno, raw in enumerate(text.splitlines(), start=1):
        m = _PREFIX.match(raw.rstrip("\n"))
        if not m:
            trace.unparsed.append(lineno)
            continue
        pid = int(m.group(1) or m.group(2) or 0)
        body = m.group(3).strip()
        if not body:
            continue
        if body.startswith("+++"):
            flush(pid, lineno)
            if em := _EXITED.match(body):
                status = int(em.group(1))
                trace.exits[pid] = status
                trace.exit_events.append(Exit(pid, status, None, lineno))
            elif km := _KILLED.match(body):
                trace.exits[pid] = None
                trace.killed[pid] = km.group(1)
                trace.exit_events.append(Exit(pid, None, km.group(1), lineno))
            continue  # "+++ superseded by execve in pid N +++"
        if body.startswith("---"):
            if sm := _SIGNAL.match(body):
                trace.signals.append(Signal(pid, sm.group(1), lineno))
            continue
        if rm := _RESUMED.match(body):
            name = rm.group(1)
            if pid in pending and pending[pid][0] == name:
                _, partial, start = pending.pop(pid)
            else:  # resumed without its start (log cut, or a different pid)
                partial, start = "", lineno
            partial = partial.rstrip()
            rest = rm.group(2)
            joined = partial + (" " if partial.endswith(",") and not rest.startswith(")") else "") \
                + rest
            calls.append(_make_call(pid, name, joined, start, lineno, finished=True))
            continue
        if cm := _CALL.match(body):
            name, rest = cm.group(1), cm.group(2)
            flush(pid, lineno)  # a task cannot have two calls in flight
            if rest.endswith(_UNFINISHED):
                pending[pid] = (name, rest[: -len(_UNFINISHED)], lineno)
            else:
                calls.append(_make_call(pid, name, rest, lineno, lineno, finished=True))
            continue
        trace.unparsed.append(lineno)
    for pid in list(pending):
        flush(pid, pending[pid][2])

    calls.sort(key=lambda c: (c.end_line, c.line))
    for c in calls:
        if c.name in ("clone", "clone3", "fork", "vfork") and c.ret is not None and c.ret > 0:
            trace.parents[c.ret] = c.pid
            if "CLONE_FILES" in c.args:
                trace.shares_fds.add(c.ret)
            if "CLONE_THREAD" in c.args:
                trace.threads.add(c.ret)
        elif c.name == "exit_group" and c.arglist and c.arglist[0].lstrip("-").isdigit():
            exit_group_status[trace.tgid(c.pid)] = int(c.arglist[0])
    for pid, status in exit_group_status.items():  # logs written with -qq
        trace.exits.setdefault(pid, status)
    trace.calls = calls
    # socket-ness of undecorated descriptors (no -y), from the descriptor model
    if any(c.fd is not None and c.fd >= 0 and c.decor is None for c in calls):
        model = _Model(trace)
        for c in model.run():
            if c.fd is not None and not c.sock and model.current_sock(c) is not None:
                c.sock = True
    return trace


# -- queries ------------------------------------------------------------------------------


def socket_calls(trace: Trace) -> list[Call]:
    """socket()/socketpair() calls, failed attempts included (ARGS-1/2: "opens no
    socket"; filter on `c.ret is not None and c.ret >= 0` for the ones that worked)."""
    return [c for c in trace.calls if c.name in SOCKET_CREATE_CALLS]


def calls_named(trace: Trace, *names: str) -> list[Call]:
    wanted = set(names)
    return [c for c in trace.calls if c.name in wanted]


def injected_calls(trace: Trace) -> list[Call]:
    """The calls strace made fail: check that a 2-phase injection hit its target."""
    return [c for c in trace.calls if c.injected]


def ordinal(trace: Trace, name: str, predicate: Callable[[Call], bool]) -> int | None:
    """Which invocation of `name` (1-based, counted in the task that made it, like
    strace's when=) is the first call satisfying `predicate`; None if none does."""
    counts: dict[int, int] = {}
    for c in sorted(trace.calls, key=lambda c: c.line):
        if c.name != name:
            continue
        counts[c.pid] = counts.get(c.pid, 0) + 1
        if predicate(c):
            return counts[c.pid]
    return None


# -- the descriptor model ---------------------------------------------------------------


@dataclass(eq=False)
class _Sock:
    origin: str                # "socket", "accept", "pair", "inherited"
    stream: bool | None        # None: unknown
    state: str                 # new, bound, listening, connecting, accepted, pair, unknown
    line: int
    fd: int
    inode: int | None = None
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
        self._current: dict[int, _Sock | None] = {}

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
                self._current.clear()
                self.on_call(e)
                yield e
            elif isinstance(e, Exit):
                self.on_exit(e.pid, e.status, e.line, e.signal)
            else:
                if e.name in _TERMINATING:
                    self.terminating.add(self.trace.tgid(e.pid))

    def current_sock(self, c: Call) -> _Sock | None:
        return self._current.get(id(c))

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
        s = self.call_sock(c, t) if name in _FD_FIRST else None
        self._current[id(c)] = s
        ok = c.ret is not None and c.ret >= 0 and c.errno is None
        if name == "socket":
            if ok and c.ret is not None:
                args = c.arglist
                kind = args[1] if len(args) > 1 else ""
                stream = None if not kind else ("SOCK_STREAM" in kind or "SOCK_SEQPACKET" in kind)
                ns = _Sock("socket", stream, "new", c.end_line, c.ret, inode=c.ret_inode)
                self.install(t, c.ret, ns, c.end_line, "SOCK_CLOEXEC" in kind)
                self._current[id(c)] = ns
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
                                   inode=socket_decoration(decor)[1])
                        self.install(t, fd, ns, c.end_line, "SOCK_CLOEXEC" in kind)
            self.check(c, t, None)
        elif name in ACCEPT_CALLS:
            self.check(c, t, s)
            if ok and c.ret is not None:
                flags = c.arglist[3] if name == "accept4" and len(c.arglist) > 3 else ""
                ns = _Sock("accept", True, "accepted", c.end_line, c.ret, inode=c.ret_inode,
                           listener=s)
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
        self.violations: list[str] = []

    def v(self, line: int, text: str) -> None:
        self.violations.append(f"line {line}: {text}")

    def check(self, c: Call, t: _Table, s: _Sock | None) -> None:
        name, fd = c.name, c.fd
        if name in _SOCKET_ONLY and s is None and fd is not None:
            if c.decor is not None or c.errno in ("EBADF", "ENOTSOCK"):
                closed = t.closed.get(fd) if c.decor is None else None
                if closed is not None:
                    self.v(c.line, f"{name}({fd}) after {closed[0].describe()} was closed "
                                   f"(line {closed[1]})")
                else:
                    self.v(c.line, f"{name}({fd}) on a descriptor that is not a socket "
                                   "(no socket() before it)")
            return
        if name == "listen" and self.role == "client":
            self.v(c.line, f"listen({fd}) in a client")
            return
        if name in IO_CALLS:
            self.check_io(c, t, fd, s)
            return
        if s is None or s.origin == "inherited":
            return
        if name in ACCEPT_CALLS and s.state != "listening":
            self.v(c.line, f"{name}({fd}) on a socket that is not listening")
        elif name == "bind" and s.origin == "accept":
            self.v(c.line, f"bind({fd}) on an accepted connection")
        elif name == "bind" and s.state in ("listening", "connecting"):
            self.v(c.line, f"bind({fd}) after {'listen' if s.state == 'listening' else 'connect'}()")
        elif name == "listen":
            if s.origin in ("accept", "pair") or s.state == "connecting":
                self.v(c.line, f"listen({fd}) on a connection")
            elif s.state == "new" and s.stream is not False:
                self.v(c.line, f"listen({fd}) before bind()")
        elif name == "connect":
            if s.state == "listening":
                self.v(c.line, f"connect({fd}) on the listening socket")
            elif s.origin == "accept":
                self.v(c.line, f"connect({fd}) on an accepted connection")
        elif name == "setsockopt" and self.role == "server" and s.origin == "socket" \
                and s.stream is not False and s.state in ("bound", "listening"):
            opt = ", ".join(c.arglist[1:3])
            self.v(c.line, f"setsockopt({fd}, {opt}) on the listening socket after bind() "
                           "(socket -> setsockopt* -> bind)")

    def check_io(self, c: Call, t: _Table, fd: int | None, s: _Sock | None) -> None:
        if fd is None:
            return
        if s is None:
            closed = t.closed.get(fd)
            if closed is not None and c.errno == "EBADF":
                self.v(c.line, f"{c.name}({fd}) after {closed[0].describe()} was closed "
                               f"(line {closed[1]})")
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
        if how in ("stale", "replaced", "exec"):
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
        if how == "exit" and self.complete and status == 0 and s.origin != "inherited" \
                and (s.stream or s.origin == "accept"):
            self.v(line, f"exit with {s.describe()} never closed (no close() before exit)")


def lifecycle_violations(trace: Trace, role: Literal["server", "client"], *,
                         complete: bool) -> list[str]:
    """[] when the traced calls follow LIFE-0 for `role`; otherwise one line per
    violation, "line N: ..." citing the log.  complete=True: the target ended by
    itself (explicit closes are then required before an exit with status 0)."""
    if role not in ("server", "client"):
        raise ValueError(f"role must be 'server' or 'client', not {role!r}")
    life = _Life(trace, role, complete)
    for _ in life.run():
        pass
    return life.violations


def describe(calls: Iterable[Call]) -> str:
    """Evidence text: the calls with their log line numbers."""
    return "\n".join(f"line {c.line}: {c}" for c in calls)
