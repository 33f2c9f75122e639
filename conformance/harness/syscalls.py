"""The strace log parser: a log written by `harness.strace` becomes a `Trace`.

A `Trace` is an observation (`conformance.evidence`): it knows the lines it could
not understand (`unparsed`) and, once told which socket is the target's own
(`Anchor`: the listener readiness saw, by inode, or the address a client was
given), whether the log follows that socket.  Either doubt keeps a check from
passing on it.  The queries at the end serve ARGS ("opens no socket", "sends no
packet") and fault injection; the descriptor model and the LIFE-0 rules are in
`harness.lifecycle`.  Standard library only.

Log format (strace 6.1 with -f -q -y, see `harness.strace`)
-----------------------------------------------------------
* Under ``-f`` one task's call can be split: ``accept(3<socket:[1]>, <unfinished
  ...>`` ... ``<... accept resumed>{...}, [16]) = 4<socket:[2]>``; a child's first
  calls can be logged before its parent's ``clone`` returns.  `Trace.calls` is in
  order of completion (`Call.end_line`), `Call.line` is where the call starts.
* ``-y`` decorates descriptors: ``3<socket:[8366]>`` (a socket and its inode),
  ``3</path>`` (``>`` escaped as ``\\76``); ``-yy``'s ``TCP:[8366]``,
  ``TCP:[127.0.0.1:5000->127.0.0.1:43642]``, ``UNIX-STREAM:[ino,"/path"]`` are
  understood too.  Without -y a successful socket()/accept() still marks its
  result as a socket.
* Exit statuses come from ``+++ exited with N +++`` and from ``exit_group(N)``
  (logs written with -qq); ``+++ killed by SIGx +++`` records a death by signal.

What glibc and CPython call (x86_64)
------------------------------------
* glibc: ``send``/``recv`` are ``sendto(fd, buf, n, flags, NULL, 0)`` /
  ``recvfrom(fd, buf, n, flags, NULL, NULL)``; the loader's ``read``, two
  ``pread64`` and ``close`` of ld.so.cache and libc.so.6 precede main.  A name
  lookup may talk to nscd: ``socket(AF_UNIX, ...)`` + ``connect(/var/run/nscd/socket)``.
* CPython: ``socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_IP)``,
  ``accept4(3, ..., SOCK_CLOEXEC)``, ``sendto`` for send/sendall, ``recvfrom`` for
  recv, ``ioctl(FIONBIO)`` and ``poll`` once a timeout is set,
  ``create_connection(timeout=...)`` is ``connect = -1 EINPROGRESS``, ``poll``,
  ``getsockopt(SO_ERROR)``; ``sock.dup()`` is ``fcntl(F_DUPFD_CLOEXEC, 0)``,
  ``os.closerange`` is ``close_range``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conformance.evidence import Doubt

# -- syscall families -------------------------------------------------------------------

READ_CALLS = ("read", "readv", "pread64", "preadv", "preadv2", "recv", "recvfrom", "recvmsg",
              "recvmmsg")
WRITE_CALLS = ("write", "writev", "pwrite64", "pwritev", "pwritev2", "send", "sendto",
               "sendmsg", "sendmmsg", "sendfile")
IO_CALLS = (*READ_CALLS, *WRITE_CALLS, "splice")
ACCEPT_CALLS = ("accept", "accept4")
DUP_CALLS = ("dup", "dup2", "dup3")

# Calls whose first argument is a descriptor.
FD_FIRST = frozenset({
    "setsockopt", "getsockopt", "bind", "listen", "accept", "accept4", "connect", "shutdown",
    "getsockname", "getpeername", *READ_CALLS, *WRITE_CALLS, "splice", "close", "dup", "dup2",
    "dup3", "fcntl", "fcntl64", "ioctl",
})


INTERNET_FAMILIES = ("AF_INET", "AF_INET6")


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


@dataclass(frozen=True)
class Anchor:
    """Which socket of a trace is the target's lifecycle socket, as the suite saw
    it from outside the program: the listener readiness found (its `inode`, the
    one /proc shows), or the address a client was given (`port` or AF_UNIX
    `path`), which its connect() names.  `what` says it in words."""

    what: str
    inode: int | None = None
    port: int | None = None
    path: str | None = None

    @classmethod
    def listener(cls, inode: int, where: str) -> Anchor:
        return cls(f"the listening socket readiness saw ({where}, inode {inode})", inode=inode)

    @classmethod
    def connection(cls, port: int | None = None, path: str | None = None) -> Anchor:
        where = path if path is not None else f"port {port}"
        return cls(f"the client's connection to the suite's peer ({where})", port=port, path=path)


@dataclass
class Trace:
    """A parsed strace log, as an observation: sound (`doubt()` None) when every
    line was understood and, if it has an `anchor`, the log follows that socket."""

    calls: list[Call] = field(default_factory=list)  # in order of completion
    exits: dict[int, int | None] = field(default_factory=dict)  # pid -> status (None: killed)
    killed: dict[int, str] = field(default_factory=dict)        # pid -> "SIGTERM"
    signals: list[Signal] = field(default_factory=list)         # "--- SIGPIPE {...} ---"
    exit_events: list[Exit] = field(default_factory=list)       # "+++ ... +++" lines
    parents: dict[int, int] = field(default_factory=dict)       # child pid -> parent pid
    shares_fds: set[int] = field(default_factory=set)           # children made with CLONE_FILES
    threads: set[int] = field(default_factory=set)              # children made with CLONE_THREAD
    unparsed: list[tuple[int, str]] = field(default_factory=list)  # (line, text) not understood
    path: Path | None = None
    anchor: Anchor | None = None

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

    def anchored(self, anchor: Anchor) -> Trace:
        """This trace, told which socket is the target's (see `doubt`)."""
        self.anchor = anchor
        return self

    def anchor_inode(self) -> int | None:
        """The inode of the anchor socket when the log follows it: the listener
        created (socket()) and listen()ed on in the log; the client socket whose
        connect() names the given address.  None when it does not (or no anchor)."""
        a = self.anchor
        if a is None:
            return None
        if a.inode is not None:
            created = any(c.name == "socket" and c.ret_inode == a.inode for c in self.calls)
            listened = any(c.name == "listen" and c.inode == a.inode for c in self.calls)
            return a.inode if created and listened else None
        for c in self.calls:
            if c.name == "connect" and c.inode is not None \
                    and names_address(c.args, port=a.port, path=a.path):
                return c.inode
        return None

    def doubt(self) -> Doubt | None:
        if self.unparsed:
            line, text = self.unparsed[0]
            more = f" (+{len(self.unparsed) - 1} more)" if len(self.unparsed) > 1 else ""
            return Doubt(f"the strace log has lines the parser does not understand: line {line}: "
                         f"{text[:120]!r}{more}")
        if not self.calls:
            return Doubt("the strace log shows no system call of the program")
        if self.anchor is not None and self.anchor_inode() is None:
            return Doubt(f"the strace log does not follow {self.anchor.what} from its creation "
                         "(another process or a socket the log does not show)")
        return None


_PREFIX = re.compile(r"^(?:\[pid\s+(\d+)\]\s+|(\d+)\s+)?"
                     r"(?:(?:\d\d:\d\d:\d\d(?:\.\d+)?|\d+\.\d+)\s+)?(.*)$")
_CALL = re.compile(r"^([a-z_][a-z0-9_]*)\((.*)$", re.S)
# `???() = ?`, or `???( <unfinished ...>` (and its `<... ??? resumed>`): see
# parse_text.
_UNKNOWN_DYING = re.compile(r"^(?:\?\?\?\(|<\.\.\. \?\?\? resumed>)")
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
    if name in FD_FIRST and (fm := _FIRST_FD.match(args)):
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

    # `???() = ?` (or `???( <unfinished ...>`): strace could not read the number
    # of a call its task was in when the task was torn down (a thread of a
    # process that is exiting).  Such a call never returned; it is understood only
    # if the task's next lines are its end (`+++ exited/killed`), otherwise it
    # stays unparsed.
    dying: dict[int, tuple[int, str]] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        m = _PREFIX.match(raw.rstrip("\n"))
        if not m:
            trace.unparsed.append((lineno, raw))
            continue
        pid = int(m.group(1) or m.group(2) or 0)
        body = m.group(3).strip()
        if not body:
            continue
        unknown = _UNKNOWN_DYING.match(body)
        if pid in dying and not body.startswith("+++") and not unknown:
            trace.unparsed.append(dying.pop(pid))
        if unknown:
            flush(pid, lineno)
            dying.setdefault(pid, (lineno, raw))
            continue
        if body.startswith("+++"):
            dying.pop(pid, None)
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
        trace.unparsed.append((lineno, raw))
    for pid in list(pending):
        flush(pid, pending[pid][2])
    trace.unparsed += dying.values()
    trace.unparsed.sort()

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
    return trace




# -- queries ------------------------------------------------------------------------------

_PORT = re.compile(r"\bsin6?_port=htons\((\d+)\)")
_SUN_PATH = re.compile(r'\bsun_path="((?:[^"\\]|\\.)*)"')


def names_address(args: str, *, port: int | None = None, path: str | None = None) -> bool:
    """Whether a call's argument text holds a socket address with this port (any
    IPv4/IPv6 address) or this AF_UNIX path."""
    if port is not None and any(int(p) == port for p in _PORT.findall(args)):
        return True
    return path is not None and any(p == path for p in _SUN_PATH.findall(args))


def families(trace: Trace) -> dict[int, str]:
    """Socket inode -> address family ("AF_INET", "AF_UNIX", ...) of the sockets
    the log shows created by socket(), socketpair() (AF_UNIX) or accept (the
    listener's family)."""
    out: dict[int, str] = {}
    for c in trace.calls:
        if c.name == "socket" and c.ret_inode is not None and c.arglist:
            out[c.ret_inode] = c.arglist[0]
        elif c.name == "socketpair" and len(c.arglist) >= 4:
            for fd_text in split_args(c.arglist[3].strip("[]")):
                inode = socket_decoration(fd_decoration(fd_text)[1])[1]
                if inode is not None:
                    out[inode] = c.arglist[0]
        elif c.name in ACCEPT_CALLS and c.ret_inode is not None and c.inode in out:
            out[c.ret_inode] = out[c.inode]  # type: ignore[index]
    return out


def opened_sockets(trace: Trace, path: str | None = None) -> list[Call]:
    """What ARGS-1/2 call opening a socket: socket() of an internet family (failed
    attempts included), and a bind()/connect() naming the suite's AF_UNIX `path`.
    A runtime's own sockets (AF_UNIX to nscd, socketpairs, netlink) do not count."""
    out = []
    for c in trace.calls:
        if c.name == "socket" and c.arglist and c.arglist[0] in INTERNET_FAMILIES:
            out.append(c)
        elif c.name in ("bind", "connect") and path and names_address(c.args, path=path):
            out.append(c)
    return out


NETWORK_SENDS = ("connect", "sendto", "sendmsg", "sendmmsg")


def network_sends(trace: Trace) -> list[Call]:
    """connect()/send*() on an internet socket or to an internet address (ARGS-4:
    "sends no packet"); a runtime's AF_UNIX traffic does not count."""
    inet = {i for i, fam in families(trace).items() if fam in INTERNET_FAMILIES}
    return [c for c in trace.calls if c.name in NETWORK_SENDS
            and (c.inode in inet or re.search(r"\bsa_family=AF_INET6?\b", c.args))]


def calls_named(trace: Trace, *names: str) -> list[Call]:
    wanted = set(names)
    return [c for c in trace.calls if c.name in wanted]


def injected_calls(trace: Trace) -> list[Call]:
    """The calls strace made fail."""
    return [c for c in trace.calls if c.injected]

