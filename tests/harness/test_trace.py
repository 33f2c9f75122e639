"""conformance.harness.strace, syscalls and lifecycle against reality: small C programs (tests/harness/data)
and CPython scripts run under strace with real sockets on 127.0.0.1, plus parser
tests on hand-written logs for what is hard to provoke."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from conformance import evidence
from conformance.checks import faults, profiles, support
from conformance.checks.faults import point_of
from conformance.harness import lifecycle, strace, syscalls
from conformance.harness.netns import Isolation
from conformance.harness.strace import Injection
from conformance.harness.testbed import Testbed
from conformance.target import builtin

DATA = Path(__file__).parent / "data"
GREETING = b"Hello World!\0"
CLIENT_OUT = b"Message from server: Hello World! \n"
TIMEOUT = 10.0

needs_strace = pytest.mark.skipif(strace.strace_path() is None, reason=strace.STRACE_HINT)


def violations(t: syscalls.Trace, role: str, *, complete: bool) -> list[str]:
    return lifecycle.follow(t, role, complete=complete).violations  # type: ignore[arg-type]


def ordinal(t: syscalls.Trace, name: str, pred: Callable[[syscalls.Call], bool]) -> int | None:
    """Which invocation of `name` in its task is the first call satisfying `pred`
    (strace's when=), through the suite's own `faults.point_of`."""
    hit = next((c for c in t.calls if c.name == name and pred(c)), None)
    p = point_of(t.calls, hit) if hit is not None else None
    return p.when if p is not None else None


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cbin(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """Compile tests/harness/data/NAME.c on first use; skip when there is no cc."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc)")
    out = tmp_path_factory.mktemp("cbin")
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            exe = out / name
            subprocess.run([cc, "-O1", "-Wall", "-pthread", "-o", str(exe), str(DATA / f"{name}.c")],
                           check=True, timeout=60)
            built[name] = str(exe)
        return built[name]

    return get


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _tcp_listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 3 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _unix_listening(path: str) -> bool:
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[7] == path and int(f[3], 16) & 0x10000:
            return True
    return False


def wait_listening(proc: subprocess.Popen[bytes], *, port: int | None = None,
                   path: str | None = None, timeout: float = TIMEOUT) -> None:
    """Passive readiness: poll /proc/net (never a probe connection)."""
    deadline = time.monotonic() + timeout
    while True:
        if (_unix_listening(path) if path else _tcp_listening(port or 0)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}) before listening: "
                                 f"{proc.stderr.read() if proc.stderr else b''!r}")
        if time.monotonic() > deadline:
            raise AssertionError("server not listening in time")
        time.sleep(0.01)


@contextmanager
def traced(argv: Sequence[str], log: Path, injections: Sequence[Injection] = ()
           ) -> Iterator[subprocess.Popen[bytes]]:
    """argv under strace in its own process group, killed (group) on the way out."""
    proc = subprocess.Popen(strace.strace_argv(list(argv), log, injections),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)


def run_traced(argv: Sequence[str], log: Path, injections: Sequence[Injection] = ()
               ) -> tuple[int, bytes, bytes]:
    with traced(argv, log, injections) as proc:
        out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def greet(port: int | None = None, path: str | None = None, *, send: bytes = b"") -> bytes:
    """Connect, read until EOF or the whole greeting, then close gracefully."""
    if path:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(TIMEOUT)
        s.connect(path)
    else:
        s = socket.create_connection(("127.0.0.1", port or 0), timeout=TIMEOUT)
    with s:
        if send:
            s.sendall(send)
        data = b""
        try:
            while len(data) < len(GREETING):
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
            s.shutdown(socket.SHUT_WR)
            while s.recv(64):
                pass
        except ConnectionResetError:  # a server that resets after its greeting
            pass
    return data


def serve_and_trace(argv: Sequence[str], log: Path, port: int | None = None,
                    path: str | None = None, injections: Sequence[Injection] = (),
                    clients: int = 1) -> tuple[int, list[bytes], bytes, syscalls.Trace]:
    """Start a traced server, fetch `clients` greetings, wait for its exit."""
    with traced(argv, log, injections) as proc:
        wait_listening(proc, port=port, path=path)
        got = [greet(port, path) for _ in range(clients)]
        _, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, got, err, syscalls.parse(log)


class Peer:
    """A well-behaved hello server for clients under test (not traced)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(TIMEOUT)
        self.port = int(self.sock.getsockname()[1])
        self.received = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                conn.sendall(GREETING)
                conn.shutdown(socket.SHUT_WR)
                while chunk := conn.recv(64):
                    self.received += chunk
            except OSError:
                pass

    def close(self) -> None:
        try:  # wakes an accept() still waiting in the thread (close() alone does not)
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(TIMEOUT)


@contextmanager
def peer() -> Iterator[Peer]:
    p = Peer()
    try:
        yield p
    finally:
        p.close()


# -- parsing hand-written logs -------------------------------------------------------------

SPLIT_LOG = """\
100   socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 3<socket:[11]>
100   setsockopt(3<socket:[11]>, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0
100   bind(3<socket:[11]>, {sa_family=AF_INET, sin_port=htons(5000), sin_addr=inet_addr("0.0.0.0")}, 16) = 0
100   listen(3<socket:[11]>, 5)     = 0
100   clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM, child_tid=0x7f, parent_tid=0x7f, exit_signal=0, stack=0x7f, stack_size=0x7fff80, tls=0x7f} <unfinished ...>
101   accept(3<socket:[11]>, NULL, NULL <unfinished ...>
100   <... clone3 resumed> => {parent_tid=[101]}, 88) = 101
100   write(1</dev/pts/0>, "a) = \\"x\\" <y>", 12) = 12
101   <... accept resumed>)         = 4<socket:[12]>
101   write(4<socket:[12]>, "Hello World!\\0", 13) = -1 EINTR (Interrupted system call) (INJECTED)
101   write(4<socket:[12]>, "Hello World!\\0", 13) = 13
101   close(4<socket:[12]>)         = 0
101   accept(3<socket:[11]>, NULL, NULL) = ? ERESTARTSYS (To be restarted if SA_RESTART is set)
101   --- SIGPIPE {si_signo=SIGPIPE, si_code=SI_USER, si_pid=101, si_uid=0} ---
101   fcntl(3<socket:[11]>, F_GETFL) = 0x2 (flags O_RDWR)
101   exit(0)                       = ?
101   +++ exited with 0 +++
100   close(3<socket:[11]>)         = 0
100   exit_group(0)                 = ?
100   +++ exited with 0 +++
"""


def test_parse_split_calls_threads_and_results() -> None:
    t = syscalls.parse_text(SPLIT_LOG)
    assert t.unparsed == []
    assert t.exits == {101: 0, 100: 0} and t.killed == {}
    assert t.parents == {101: 100} and t.threads == {101} and t.shares_fds == {101}
    assert [s.name for s in t.signals] == ["SIGPIPE"]
    acc = t.calls[[c.name for c in t.calls].index("accept")]
    assert (acc.pid, acc.line, acc.end_line, acc.fd, acc.ret, acc.sock, acc.ret_inode) == \
        (101, 6, 9, 3, 4, True, 12)
    # the calls are in order of completion: the clone3 (line 5-7) before the accept (6-9)
    assert [c.name for c in t.calls][:6] == ["socket", "setsockopt", "bind", "listen", "clone3",
                                            "write"]
    out = t.calls[5]
    assert out.fd == 1 and not out.sock and out.ret == 12 and out.arglist[1] == '"a) = \\"x\\" <y>"'
    w1, w2 = calls = syscalls.calls_named(t, "write")[1:]
    assert (w1.errno, w1.injected, w1.ret) == ("EINTR", True, -1)
    assert (w2.errno, w2.injected, w2.ret) == (None, False, 13)
    assert all(c.sock and c.inode == 12 for c in calls)
    restarted = syscalls.calls_named(t, "accept")[1]
    assert restarted.ret is None and restarted.errno == "ERESTARTSYS"
    assert syscalls.calls_named(t, "fcntl")[0].ret == 2
    assert syscalls.injected_calls(t) == [w1]
    assert ordinal(t, "write", lambda c: c.sock and not c.injected) == 2  # per pid
    assert ordinal(t, "write", lambda c: c.fd == 1) == 1
    assert ordinal(t, "accept", lambda c: c.ret is None) == 2
    assert ordinal(t, "listen", lambda c: False) is None
    assert violations(t, "server", complete=True) == []


def test_parse_other_formats() -> None:
    """-yy decorations, "[pid N]" prefixes, timestamps, -qq (no "+++ exited"),
    killed tasks and a call cut by the end of the log."""
    log = textwrap.dedent("""\
        [pid  7] 12:00:00.000001 socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0) = 3<UNIX-STREAM:[55]>
        [pid  7] 12:00:00.000002 bind(3<UNIX-STREAM:[55]>, {sa_family=AF_UNIX, sun_path="/tmp/s"}, 110) = 0
        [pid  7] 12:00:00.000003 listen(3<UNIX-STREAM:[55,"/tmp/s"]>, 5) = 0
        [pid  7] 12:00:00.000004 accept4(3<UNIX-STREAM:[55,"/tmp/s"]>, NULL, NULL, SOCK_CLOEXEC) = 4<UNIX-STREAM:[56->57,"/tmp/s"]>
        [pid  7] 12:00:00.000005 sendto(4<UNIX-STREAM:[56->57,"/tmp/s"]>, "Hi", 2, 0, NULL, 0) = 2
        [pid  7] 12:00:00.000006 close(4<UNIX-STREAM:[56->57,"/tmp/s"]>) = 0
        [pid  7] 12:00:00.000007 close(3<UNIX-STREAM:[55,"/tmp/s"]>) = 0
        [pid  7] 12:00:00.000008 exit_group(0) = ?
        8     socket(AF_INET6, SOCK_STREAM, IPPROTO_IP) = 3<TCPv6:[70]>
        8     connect(3<TCPv6:[70]>, {sa_family=AF_INET6, sin6_port=htons(1)}, 28) = 0
        8     read(3<TCPv6:[[::1]:40000->[::1]:1]>, "x", 1) = 1
        8     +++ killed by SIGTERM +++
        9     read(0</dev/null>,  <unfinished ...>
        """)
    t = syscalls.parse_text(log)
    assert t.unparsed == []
    assert t.exits == {7: 0, 8: None} and t.killed == {8: "SIGTERM"}
    acc = syscalls.calls_named(t, "accept4")[0]
    assert (acc.fd, acc.inode, acc.ret, acc.ret_inode, acc.sock) == (3, 55, 4, 56, True)
    rd = syscalls.calls_named(t, "read")
    assert rd[0].sock and rd[0].fd == 3 and rd[0].inode is None
    assert not rd[1].finished and rd[1].fd == 0 and not rd[1].sock
    assert violations(t, "server", complete=True) == []
    # an AF_UNIX socket counts as opened only at the suite's path (its bind)
    assert [len(syscalls.opened_sockets(t)), len(syscalls.opened_sockets(t, "/tmp/s")),
            t.root_pid] == [1, 2, 7]


def test_parse_without_y_tracks_sockets() -> None:
    log = textwrap.dedent("""\
        5 socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 3
        5 dup2(3, 7) = 7
        5 close(3) = 0
        5 connect(7, {sa_family=AF_INET}, 16) = 0
        5 read(7, "x", 1) = 1
        5 read(0, "", 1) = 0
        5 close(7) = 0
        5 exit_group(0) = ?
        """)
    t = syscalls.parse_text(log)
    # without -y only a socket()'s result is known to be a socket; the model
    # follows it through dup2 and close all the same
    assert [c.name for c in t.calls if c.sock] == ["socket"]
    assert t.exits == {5: 0}  # from exit_group: -qq hides "+++ exited"
    assert violations(t, "client", complete=True) == []
    unclosed = syscalls.parse_text(log.replace("5 close(7) = 0\n", ""))
    assert violations(unclosed, "client", complete=True) == [
        "line 7: exit with socket 7 never closed (no close() before exit)"]


def _lines(*calls: str, pid: int = 9) -> str:
    return "".join(f"{pid} {c}\n" for c in calls)


SRV = ("socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 3<socket:[1]>",
       "bind(3<socket:[1]>, {sa_family=AF_INET}, 16) = 0",
       "listen(3<socket:[1]>, 5) = 0",
       "accept(3<socket:[1]>, NULL, NULL) = 4<socket:[2]>")


@pytest.mark.parametrize(("calls", "role", "complete", "expected"), [
    pytest.param(("bind(3, {sa_family=AF_INET}, 16) = -1 EBADF (Bad file descriptor)", *SRV,
                  "close(4<socket:[2]>) = 0", "close(3<socket:[1]>) = 0", "exit_group(0) = ?"),
                 "server", True, ["line 1: bind(3) on a descriptor that is not a socket"],
                 id="bind-before-socket"),
    pytest.param((*SRV, "close(4<socket:[2]>) = 0", "write(4, \"x\", 1) = -1 EBADF (Bad file descriptor)",
                  "close(3<socket:[1]>) = 0"),
                 "server", True, ["line 6: write(4) after the accepted connection 4 was closed (line 5)"],
                 id="write-after-close"),
    pytest.param((*SRV, "dup2(4<socket:[2]>, 9) = 9<socket:[2]>", "close(4<socket:[2]>) = 0",
                  "close_range(3, 4294967295, 0) = 0", "exit_group(0) = ?"),
                 "server", True,
                 ["line 7: close(3) of the listener before the accepted connection 9 was closed"],
                 id="close_range-before-dup"),
    pytest.param((*SRV, "--- SIGTERM {si_signo=SIGTERM, si_code=SI_USER, si_pid=1, si_uid=0} ---",
                  "close(3<socket:[1]>) = 0", "exit_group(0) = ?"),
                 "server", True, [], id="sigterm-handler-closes-anyhow"),
    pytest.param((*SRV, "exit_group(0) = ?"), "server", False, [], id="killed-incomplete"),
    pytest.param((*SRV, "write(2</dev/null>, \"x\", 1) = 1", "exit_group(1) = ?"), "server", True, [],
                 id="error-exit-1-not-held"),
    pytest.param((*SRV, "exit_group(0) = ?"), "server", True,
                  ["line 5: exit with the listening socket 3 never closed",
                   "line 5: exit with the accepted connection 4 never closed"], id="exit-0-no-close"),
    pytest.param(("socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 3<socket:[1]>",
                  "accept(3<socket:[1]>, NULL, NULL) = -1 EINVAL (Invalid argument)"),
                 "server", False, ["line 2: accept(3) on a socket that is not listening"],
                 id="accept-not-listening"),
    pytest.param(("socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 3<socket:[1]>",
                  "bind(3<socket:[1]>, {sa_family=AF_INET}, 16) = 0",
                  "connect(3<socket:[1]>, {sa_family=AF_INET}, 16) = 0",
                  "sendto(3<socket:[1]>, \"x\", 1, 0, NULL, 0) = 1", "close(3<socket:[1]>) = 0",
                  "exit_group(0) = ?"),
                 "client", True, [], id="client-bind-is-cli4s-business"),
    pytest.param(("socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE) = 5<socket:[8]>",
                  "bind(5<socket:[8]>, {sa_family=AF_NETLINK}, 12) = 0",
                  "sendto(5<socket:[8]>, \"x\", 1, 0, NULL, 0) = 1",
                  "recvmsg(5<socket:[8]>, {msg_name=NULL}, 0) = 20",
                  "socket(AF_UNIX, SOCK_DGRAM|SOCK_CLOEXEC, 0) = 6<socket:[9]>",
                  "sendto(6<socket:[9]>, \"log\", 3, MSG_NOSIGNAL, NULL, 0) = 3",
                  "close(5<socket:[8]>) = 0", "exit_group(0) = ?"),
                 "server", True, [], id="datagram-helpers-free"),
    pytest.param(("socket(AF_INET, SOCK_DGRAM, IPPROTO_IP) = 3<socket:[1]>",
                  "bind(3<socket:[1]>, {sa_family=AF_INET}, 16) = 0",
                  "setsockopt(3<socket:[1]>, SOL_SOCKET, SO_BROADCAST, [1], 4) = 0",
                  "recvfrom(3<socket:[1]>, \"x\", 65535, 0, {sa_family=AF_INET}, [16]) = 1",
                  "sendto(3<socket:[1]>, \"x\", 1, 0, {sa_family=AF_INET}, 16) = 1"),
                 "server", False, [], id="udp-echo"),
    pytest.param((*SRV, "setsockopt(4<socket:[2]>, SOL_SOCKET, SO_LINGER, {l_onoff=1, l_linger=0}, 8) = 0",
                  "getsockopt(3<socket:[1]>, SOL_SOCKET, SO_ERROR, [0], [4]) = 0",
                  "fcntl(4<socket:[2]>, F_SETFL, O_RDWR|O_NONBLOCK) = 0",
                  "shutdown(4<socket:[2]>, SHUT_WR) = 0", "close(4<socket:[2]>) = 0",
                  "shutdown(3<socket:[1]>, SHUT_RDWR) = 0", "close(3<socket:[1]>) = 0",
                  "exit_group(0) = ?"),
                 "server", True, [], id="free-calls-on-connection"),
    pytest.param((*SRV, "close(4<socket:[2]>) = -1 EINTR (Interrupted system call) (INJECTED)",
                  "close(3<socket:[1]>) = 0"),
                 "server", False,
                 ["line 6: close(3) of the listener before the accepted connection 4 was closed"],
                 id="injected-close-closes-nothing"),
])
def test_lifecycle_on_written_logs(calls: tuple[str, ...], role: str, complete: bool,
                                   expected: list[str]) -> None:
    got = violations(syscalls.parse_text(_lines(*calls)), role,  # type: ignore[arg-type]
                                     complete=complete)
    assert len(got) == len(expected), got
    for g, e in zip(got, expected, strict=True):
        assert g.startswith(e), (g, e)


def test_fd_reuse_across_threads_in_completion_order() -> None:
    """Task 9 blocks in accept while its thread 12 closes connection 4; accept then
    returns a new connection on the reused number 4: the model must see them in
    the order they completed, not the order they started."""
    log = _lines(*SRV) + (
        "9 clone3({flags=CLONE_VM|CLONE_FILES|CLONE_THREAD}, 88) = 12\n"
        "9 accept(3<socket:[1]>, NULL, NULL <unfinished ...>\n"
        "12 write(4<socket:[2]>, \"x\", 1) = 1\n"
        "12 close(4<socket:[2]>) = 0\n"
        "9 <... accept resumed>) = 4<socket:[3]>\n"
        "12 exit(0) = ?\n"
        "9 read(4<socket:[3]>, \"\", 9) = 0\n"
        "9 close(4<socket:[3]>) = 0\n"
        "9 close(3<socket:[1]>) = 0\n"
        "9 exit_group(0) = ?\n")
    assert violations(syscalls.parse_text(log), "server", complete=True) == []
    bad = log.replace("9 close(4<socket:[3]>) = 0\n", "")
    assert violations(syscalls.parse_text(bad), "server", complete=True) == [
        "line 12: close(3) of the listener before the accepted connection 4 was closed",
        "line 13: exit with the accepted connection 4 never closed (no close() before exit)"]


def test_injection_and_argv() -> None:
    inj = Injection(("accept", "accept4"), "EMFILE")
    assert inj.strace_arg() == "inject=accept,accept4:error=EMFILE:when=1"
    assert Injection(("read",), "EINTR", 3).strace_arg() == "inject=read:error=EINTR:when=3"
    for bad in [dict(syscalls=(), error="EINTR"), dict(syscalls=("read",), error="eintr"),
                dict(syscalls=("read",), error="EINTR", when=0)]:
        with pytest.raises(ValueError):
            Injection(**bad)  # type: ignore[arg-type]
    argv = strace.strace_argv(["./srv", "5000"], Path("/tmp/x.log"),
                             [inj, Injection(("getpid",), "EPERM", 2)], strace="/usr/bin/strace")
    assert argv[:8] == ["/usr/bin/strace", "-f", "-q", "-y", "-s", "64", "-o", "/tmp/x.log"]
    traced_set = argv[argv.index("-e") + 1]
    assert traced_set.startswith("trace=socket,") and traced_set.endswith(",getpid")
    assert argv[-5:] == ["-e", "inject=getpid:error=EPERM:when=2", "--", "./srv", "5000"]
    assert "inject=accept,accept4:error=EMFILE:when=1" in argv
    with pytest.raises(ValueError, match="several injections"):
        strace.strace_argv(["x"], Path("/tmp/x.log"), [inj, Injection(("accept4",), "EINTR", 2)])


# -- real runs: LIFE-0 ----------------------------------------------------------------------


@needs_strace
def test_correct_server_and_client(cbin: Callable[[str], str], tmp_path: Path) -> None:
    port = free_port()
    slog, clog = tmp_path / "srv.log", tmp_path / "cli.log"
    with traced([cbin("lc_server"), str(port)], slog) as srv:
        wait_listening(srv, port=port)
        rc, out, err = run_traced([cbin("lc_client"), "127.0.0.1", str(port)], clog)
        srv.communicate(timeout=TIMEOUT)
    assert (rc, out, srv.returncode) == (0, CLIENT_OUT, 0)
    st, ct = syscalls.parse(slog), syscalls.parse(clog)
    assert violations(st, "server", complete=True) == []
    assert violations(ct, "client", complete=True) == []
    assert [c.name for c in st.calls if c.sock] == [
        "socket", "setsockopt", "bind", "listen", "accept", "write", "close", "close"]
    assert [c.name for c in ct.calls if c.sock] == ["socket", "connect", "read", "close"]
    assert st.exits == {st.root_pid: 0}
    # and the roles are not interchangeable
    assert any("in a client" in v for v in violations(st, "client", complete=True))


SERVER_CASES = [
    ("ok", True, []),
    ("drain", True, []),
    ("dup2", True, []),
    ("no-close", False, []),
    ("close-listener-first", True,
     ["close(3) of the listener before the accepted connection 4 was closed"]),
    ("write-listener", True, ["write(3) on the listening socket"]),
    ("write-dup-listener", True, ["write(5) on the listening socket"]),
    ("no-close", True, ["exit with the accepted connection 4 never closed",
                        "exit with the listening socket 3 never closed"]),
    ("setsockopt-after-bind", True, []),  # options anywhere: LIFE-5/OPT judge their effect
    ("bind-before-socket", True, ["bind(7) on a descriptor that is not a socket"]),
]


@needs_strace
@pytest.mark.parametrize(("variant", "complete", "expected"), SERVER_CASES,
                         ids=[f"{v}-{'complete' if c else 'killed'}" for v, c, _ in SERVER_CASES])
def test_server_variants(cbin: Callable[[str], str], tmp_path: Path, variant: str,
                         complete: bool, expected: list[str]) -> None:
    port = free_port()
    rc, got, err, t = serve_and_trace([cbin("lc_server"), str(port), variant],
                                      tmp_path / "srv.log", port)
    assert rc == 0 and got == [GREETING], err
    found = violations(t, "server", complete=complete)
    assert len(found) == len(expected), found
    for f, e in zip(sorted(found), sorted(expected), strict=True):
        assert e in f and f.startswith("line "), (f, e)


@needs_strace
def test_server_listen_before_bind(cbin: Callable[[str], str], tmp_path: Path) -> None:
    """listen() autobinds an ephemeral port, the later bind() fails: exit 1."""
    rc, _, err = run_traced([cbin("lc_server"), str(free_port()), "listen-before-bind"],
                            tmp_path / "srv.log")
    assert rc == 1 and err == b"bind() error\n"
    found = violations(syscalls.parse(tmp_path / "srv.log"), "server", complete=True)
    assert [f.split(": ", 1)[1] for f in found] == ["listen(3) before bind()", "bind(3) after listen()"]


CLIENT_CASES = [
    ("ok", True, []),
    ("retry", True, []),
    ("read-before-connect", True, ["read(3) on the client socket before connect()"]),
    ("listen", True, ["listen(4) in a client"]),
    ("no-close", True, ["exit with socket 3 never closed"]),
    ("no-close", False, []),
]


@needs_strace
@pytest.mark.parametrize(("variant", "complete", "expected"), CLIENT_CASES,
                         ids=[f"{v}-{'complete' if c else 'killed'}" for v, c, _ in CLIENT_CASES])
def test_client_variants(cbin: Callable[[str], str], tmp_path: Path, variant: str,
                         complete: bool, expected: list[str]) -> None:
    with peer() as p:
        rc, out, err = run_traced([cbin("lc_client"), "127.0.0.1", str(p.port), variant],
                                  tmp_path / "cli.log")
    assert (rc, out) == (0, CLIENT_OUT), err
    t = syscalls.parse(tmp_path / "cli.log")
    found = violations(t, "client", complete=complete)
    assert len(found) == len(expected), found
    for f, e in zip(found, expected, strict=True):
        assert e in f, (f, e)
    if variant == "read-before-connect":  # the failed read still counts for the order
        assert syscalls.calls_named(t, "read")[-2].errno == "ENOTCONN"


@needs_strace
@pytest.mark.parametrize("mode", ["thread", "fork"])
def test_concurrent_servers(cbin: Callable[[str], str], tmp_path: Path, mode: str) -> None:
    """Two connections open at once, accept() while the other is served, then
    the listener closed: legal (the fork child also closes its copy of the
    listener first, which is not the listener's close)."""
    port = free_port()
    log = tmp_path / "srv.log"
    with traced([cbin("lc_concurrent"), str(port), "2", mode], log) as srv:
        wait_listening(srv, port=port)
        a = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        b = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        with a, b:
            for s in (a, b):
                assert s.recv(64) == GREETING
            for s in (b, a):
                s.shutdown(socket.SHUT_WR)
                s.recv(64)
        srv.communicate(timeout=TIMEOUT)
    assert srv.returncode == 0
    t = syscalls.parse(log)
    assert len({c.pid for c in t.calls}) == 3
    assert (t.threads if mode == "thread" else set(t.parents) - t.shares_fds) == set(t.parents)
    assert violations(t, "server", complete=True) == []
    # the same trace with a worker's close of its connection cut out: a thread
    # leaves the connection open when the listener is closed; a fork child exits
    # without closing it (its parent closed its own copy long before)
    closes = [c for c in t.calls if c.name == "close" and c.sock and c.pid != t.root_pid
              and c.fd != 3]
    text = log.read_text().splitlines(keepends=True)
    del text[closes[0].line - 1]
    bad = violations(syscalls.parse_text("".join(text)), "server", complete=True)
    expected = ["exit with the accepted connection"]
    if mode == "thread":
        expected.insert(0, "close(3) of the listener before the accepted connection")
    assert len(bad) == len(expected), bad
    assert all(e in b for e, b in zip(expected, bad, strict=True)), bad


@needs_strace
@pytest.mark.parametrize("family", ["4", "6", "unix"])
def test_nonblocking_poll_server(cbin: Callable[[str], str], tmp_path: Path,
                                 family: str) -> None:
    """SOCK_NONBLOCK, accept4 flags and EAGAIN, several writes, send(), shutdown
    then draining recv() with EAGAIN, IPv6 dual-stack, AF_UNIX: all legal."""
    if family == "6" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    port, path = (None, str(tmp_path / "s.sock")) if family == "unix" else (free_port(), None)
    rc, got, err, t = serve_and_trace([cbin("lc_poll"), family, path or str(port)],
                                      tmp_path / "srv.log", port=port, path=path)
    assert rc == 0 and got == [GREETING], err
    assert violations(t, "server", complete=True) == []
    acc = syscalls.calls_named(t, "accept4")
    assert acc[0].errno == "EAGAIN" and acc[-1].ret == 4 and "SOCK_NONBLOCK" in acc[-1].args
    assert {c.name for c in t.calls if c.sock} >= {"write", "sendto", "shutdown", "recvfrom"}


PY_SERVER = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(5)
c, _ = s.accept()
c.sendall(b"Hello World!\\0")
c.shutdown(socket.SHUT_WR)
while c.recv(1024):
    pass
c.close()
s.close()
"""

PY_CLIENT = """\
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
data = b""
while len(data) < 13 and (chunk := c.recv(64)):
    data += chunk
sys.stdout.write("Message from server: " + data[:-1].decode() + " \\n")
c.close()
"""


@needs_strace
def test_cpython_server_and_client(tmp_path: Path) -> None:
    port = free_port()
    rc, got, err, t = serve_and_trace([sys.executable, "-c", PY_SERVER, str(port)],
                                      tmp_path / "srv.log", port)
    assert rc == 0 and got == [GREETING], err
    assert violations(t, "server", complete=True) == []
    names = [c.name for c in t.calls if c.sock]
    assert names == ["socket", "setsockopt", "bind", "listen", "accept4", "sendto", "shutdown",
                     "recvfrom", "close", "close"]
    assert "SOCK_CLOEXEC" in syscalls.calls_named(t, "accept4")[0].args
    with peer() as p:
        rc, out, err = run_traced([sys.executable, "-c", PY_CLIENT, "127.0.0.1", str(p.port)],
                                  tmp_path / "cli.log")
    assert (rc, out) == (0, CLIENT_OUT), err
    ct = syscalls.parse(tmp_path / "cli.log")
    assert violations(ct, "client", complete=True) == []
    con = syscalls.calls_named(ct, "connect")[-1]
    assert con.errno == "EINPROGRESS"  # a timeout makes CPython connect non-blocking
    assert syscalls.calls_named(ct, "getsockopt")[-1].sock


@needs_strace
def test_usage_opens_no_socket(cbin: Callable[[str], str], tmp_path: Path) -> None:
    rc, out, _ = run_traced([cbin("lc_server")], tmp_path / "u.log")
    assert rc == 1 and out.startswith(b"Usage : ")
    assert syscalls.opened_sockets(syscalls.parse(tmp_path / "u.log")) == []
    port = free_port()
    _, _, _, t = serve_and_trace([cbin("lc_server"), str(port)], tmp_path / "s.log", port)
    assert [c.name for c in syscalls.opened_sockets(t)] == ["socket"]


# -- real runs: fault injection ---------------------------------------------------------------


@needs_strace
def test_emfile_into_accept_and_socket(cbin: Callable[[str], str], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "a.log"
    with traced([cbin("lc_server"), str(port)], log,
                [Injection(("accept", "accept4"), "EMFILE")]) as srv:
        _, err = srv.communicate(timeout=TIMEOUT)  # fails before any client can come
    assert (srv.returncode, err) == (1, b"accept() error\n")
    t = syscalls.parse(log)
    (inj,) = syscalls.injected_calls(t)
    assert (inj.name, inj.errno, inj.ret, inj.fd, inj.sock) == ("accept", "EMFILE", -1, 3, True)
    assert violations(t, "server", complete=True) == []  # exit 1: not held
    rc, _, err = run_traced([cbin("lc_server"), str(port)], tmp_path / "s.log",
                            [Injection(("socket",), "EMFILE")])
    assert (rc, err) == (1, b"socket() error\n")


@needs_strace
def test_emfile_into_cpython_accept4(tmp_path: Path) -> None:
    rc, _, err = run_traced([sys.executable, "-c", PY_SERVER, str(free_port())],
                            tmp_path / "a.log", [Injection(("accept", "accept4"), "EMFILE")])
    assert rc == 1 and b"Too many open files" in err
    (inj,) = syscalls.injected_calls(syscalls.parse(tmp_path / "a.log"))
    assert inj.name == "accept4" and inj.errno == "EMFILE"


def _retried(t: syscalls.Trace, name: str) -> None:
    """The injected EINTR call is followed by the same call on the same fd, which worked."""
    (inj,) = syscalls.injected_calls(t)
    assert inj.name == name and inj.errno == "EINTR"
    after = [c for c in t.calls if c.pid == inj.pid and c.name == name and c.line > inj.line]
    assert after and after[0].fd == inj.fd and after[0].errno is None


@needs_strace
@pytest.mark.parametrize("name", ["accept", "write", "read"])
def test_eintr_server_retries(cbin: Callable[[str], str], tmp_path: Path, name: str) -> None:
    argv = [cbin("lc_server"), str(free_port()), "retry"]
    when = 1
    if name == "read":  # 2-phase: the loader's read() comes first
        port = free_port()
        argv[1] = str(port)
        _, _, _, normal = serve_and_trace(argv, tmp_path / "normal.log", port)
        found = ordinal(normal, "read", lambda c: c.sock)
        assert found is not None and found > 1
        when = found
    port = free_port()
    argv[1] = str(port)
    rc, got, err, t = serve_and_trace(argv, tmp_path / "srv.log", port,
                                      injections=[Injection((name,), "EINTR", when)])
    assert rc == 0 and got == [GREETING], err
    _retried(t, name)
    assert violations(t, "server", complete=True) == []


@needs_strace
def test_eintr_accept_without_retry_is_reported(cbin: Callable[[str], str], tmp_path: Path) -> None:
    rc, _, err = run_traced([cbin("lc_server"), str(free_port())], tmp_path / "s.log",
                            [Injection(("accept",), "EINTR")])
    assert (rc, err) == (1, b"accept() error\n")  # what ERR-8 flags


@needs_strace
@pytest.mark.parametrize("name", ["connect", "read"])
def test_eintr_client_retries(cbin: Callable[[str], str], tmp_path: Path, name: str) -> None:
    when = 1
    with peer() as p:
        argv = [cbin("lc_client"), "127.0.0.1", str(p.port), "retry"]
        if name == "read":
            run_traced(argv, tmp_path / "normal.log")
            when = ordinal(syscalls.parse(tmp_path / "normal.log"), "read", lambda c: c.sock) or 0
    with peer() as p:
        argv[2] = str(p.port)
        rc, out, err = run_traced(argv, tmp_path / "cli.log", [Injection((name,), "EINTR", when)])
    assert (rc, out) == (0, CLIENT_OUT), err
    _retried(syscalls.parse(tmp_path / "cli.log"), name)


@needs_strace
def test_first_socket_read_needs_an_ordinal(cbin: Callable[[str], str], tmp_path: Path) -> None:
    """read() when=1 hits the dynamic loader reading libc.so.6, not the socket."""
    with peer() as p:
        argv = [cbin("lc_client"), "127.0.0.1", str(p.port)]
        rc, _, _ = run_traced(argv, tmp_path / "normal.log")
    assert rc == 0
    normal = syscalls.parse(tmp_path / "normal.log")
    first = syscalls.calls_named(normal, "read")[0]
    assert not first.sock and "libc.so" in first.args
    when = ordinal(normal, "read", lambda c: c.sock)
    assert when is not None and when > 1

    rc, _, err = run_traced(argv, tmp_path / "loader.log", [Injection(("read",), "EIO", 1)])
    assert rc == 127 and b"error while loading shared libraries" in err

    with peer() as p:
        argv[2] = str(p.port)
        rc, out, err = run_traced(argv, tmp_path / "inj.log", [Injection(("read",), "EIO", when)])
    assert (rc, out, err) == (1, b"", b"read() error!\n")
    (inj,) = syscalls.injected_calls(syscalls.parse(tmp_path / "inj.log"))
    assert inj.sock and inj.errno == "EIO"


@needs_strace
def test_when_counts_per_task_and_per_syscall(cbin: Callable[[str], str], tmp_path: Path) -> None:
    """when=2 fails the 2nd dup() of the main thread, of a new thread and of a forked
    child (each counts from 1; a child does not inherit its parent's count), and
    the 1st dup3() too: each syscall of a rule has its own count."""
    rc, out, err = run_traced([cbin("inject_count")], tmp_path / "c.log",
                              [Injection(("dup", "dup3"), "EINTR", 2)])
    assert rc == 0, err
    assert out.decode().split("\n") == [
        "main#1 ok", "main#2 EINTR", "dup3#1 ok",
        "thread#1 ok", "thread#2 EINTR", "thread#3 ok",
        "child#1 ok", "child#2 EINTR", "child#3 ok",
        "main-again#1 ok", "main-again#2 ok", ""]
    rc, out, _ = run_traced([cbin("inject_count")], tmp_path / "d.log",
                            [Injection(("dup", "dup3"), "EINTR", 1)])
    assert "dup3#1 EINTR" in out.decode()
    t = syscalls.parse(tmp_path / "c.log")
    # ordinal() counts like strace: per task
    for inj in syscalls.injected_calls(t):
        if inj.name == "dup":
            assert ordinal(t, "dup", inj.__eq__) == 2
    assert len(syscalls.injected_calls(t)) == 3


@needs_strace
@pytest.mark.parametrize("wrapper", [["env"], ["setpriv", "--pdeathsig", "KILL", "--"]],
                         ids=["env", "setpriv"])
def test_when_is_not_reset_by_execve(cbin: Callable[[str], str], tmp_path: Path,
                                     wrapper: list[str]) -> None:
    """A wrapper that execs the target (setpriv, env, a shell's exec) keeps its task:
    its calls count for when=, and ordinal() on the log counts them too."""
    if shutil.which(wrapper[0]) is None:
        pytest.skip(f"no {wrapper[0]}(1)")
    with peer() as p:
        argv = [*wrapper, cbin("lc_client"), "127.0.0.1", str(p.port)]
        run_traced(argv, tmp_path / "normal.log")
    normal = syscalls.parse(tmp_path / "normal.log")
    when = ordinal(normal, "read", lambda c: c.sock)
    execs = syscalls.calls_named(normal, "execve")
    reads_before = [c for c in syscalls.calls_named(normal, "read") if c.line < execs[-1].line]
    assert when is not None and reads_before and len(execs) >= 2
    with peer() as p:
        argv[-1] = str(p.port)
        rc, _, err = run_traced(argv, tmp_path / "inj.log", [Injection(("read",), "EIO", when)])
    assert (rc, err) == (1, b"read() error!\n")


@needs_strace
def test_signal_the_tracee_not_strace(tmp_path: Path) -> None:
    """SIGTERM goes to the program (tracee_pid), and strace dies the same death."""
    log = tmp_path / "k.log"
    with traced([sys.executable, "-c", "import time; time.sleep(30)"], log) as proc:
        deadline = time.monotonic() + TIMEOUT
        strace_exe = psutil.Process(proc.pid).exe()

        def program() -> int | None:
            """strace's child once it has exec()ed the program (a child not yet
            exec()ed, or already a zombie, is not it yet)."""
            for kid in psutil.Process(proc.pid).children():
                try:
                    if kid.exe() != strace_exe:
                        return kid.pid
                except (psutil.ZombieProcess, psutil.NoSuchProcess):
                    continue
            return None

        while (pid := program()) is None:
            assert time.monotonic() < deadline, "strace started no program"
            time.sleep(0.005)
        time.sleep(0.3)
        os.kill(pid, signal.SIGTERM)
        proc.wait(TIMEOUT)
    assert proc.returncode == -signal.SIGTERM
    t = syscalls.parse(log)
    assert t.killed == {pid: "SIGTERM"} and t.exits[pid] is None
    assert any(s.pid == pid and s.name == "SIGTERM" for s in t.signals)


# -- the project's hello fixtures: only the LIFE-0 mutants break LIFE-0 ---------------------

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hello"
LIFE0_FIXTURES = {  # program -> the violation it must show ("" : none)
    "good_server": "", "good_client": "",
    "v_split_writes_server": "", "v_dualstack_server": "", "v_poll_server": "",
    "v_recv_client": "", "v_nonblock_client": "",
    "m_life0_early_close": "close(3) of the listener before the accepted connection 4 was closed",
    "c_life0_read_before_connect": "read(3) on the client socket before connect()",
    "m_err6_sigpipe": "", "c_cli4_bind": "", "c_cli5_sends": "",
}


@needs_strace
@pytest.mark.parametrize("name", sorted(LIFE0_FIXTURES))
def test_hello_fixtures(tmp_path: Path, name: str) -> None:
    src = FIXTURES / "src" / f"{name}.c"
    cc = shutil.which("cc")
    if not src.exists() or cc is None:
        pytest.skip("no fixtures/hello or no cc")
    exe = tmp_path / name
    subprocess.run([cc, "-O1", "-Wall", "-Wextra", "-o", str(exe), str(src)], check=True,
                   timeout=60)
    log = tmp_path / "t.log"
    if "client" in name or name.startswith("c_"):
        role = "client"
        with peer() as p:
            rc, out, err = run_traced([str(exe), "127.0.0.1", str(p.port)], log)
        assert (rc, out) == (0, CLIENT_OUT) or name.startswith("c_"), err
        t = syscalls.parse(log)
    else:
        role = "server"
        port = free_port()
        rc, got, err, t = serve_and_trace([str(exe), str(port)], log, port)
        assert rc == 0 and got[0][:12] == GREETING[:12], err
    found = violations(t, role, complete=True)  # type: ignore[arg-type]
    expected = LIFE0_FIXTURES[name]
    assert [v.split(": ", 1)[1] for v in found] == ([expected] if expected else []), found


# -- observations: what a pass may be built from -----------------------------------------------

ANCHORED = _lines(
    "socketpair(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0, [5<socket:[50]>, 6<socket:[51]>]) = 0",
    "socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK, 0) = 7<socket:[70]>",
    'connect(7<socket:[70]>, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = 0',
    'sendto(7<socket:[70]>, "\\2\\0\\0\\0", 4, MSG_NOSIGNAL, NULL, 0) = 4',
    "socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE) = 8<socket:[80]>",
    *SRV,
    'write(4<socket:[2]>, "Hello World!\\0", 13) = 13',
    "close(4<socket:[2]>) = 0", "close(3<socket:[1]>) = 0", "exit_group(0) = ?")


def test_runtime_sockets_are_not_lifecycle_sockets() -> None:
    """A JVM-like run: an internal socketpair, nscd over AF_UNIX and netlink stay
    open at exit; only the anchored listener and its connection must be closed."""
    t = syscalls.parse_text(ANCHORED).anchored(syscalls.Anchor.listener(1, "0.0.0.0:5000"))
    life = lifecycle.follow(t, "server", complete=True)
    assert life.violations == [] and life.doubt() is None
    assert life.summary() == "socket → bind → listen → accept → write → close×2"
    assert evidence.Pass("ok", life).observations == (life,)
    # without -y's inodes nothing can be anchored, and the same rules judge by family
    plain = syscalls.parse_text(ANCHORED)
    assert lifecycle.follow(plain, "server", complete=True).violations == []
    unclosed = syscalls.parse_text(ANCHORED.replace("9 close(4<socket:[2]>) = 0\n", "")
                                   ).anchored(syscalls.Anchor.listener(1, "0.0.0.0:5000"))
    assert [v.split(": ", 1)[1] for v in lifecycle.follow(unclosed, "server",
                                                          complete=True).violations] == [
        "close(3) of the listener before the accepted connection 4 was closed",
        "exit with the accepted connection 4 never closed (no close() before exit)"]


def test_unparsed_line_or_lost_socket_is_inconclusive() -> None:
    garbled = syscalls.parse_text(ANCHORED + "9 ??? strace lost its mind\n")
    garbled.anchored(syscalls.Anchor.listener(1, "0.0.0.0:5000"))
    life = lifecycle.follow(garbled, "server", complete=True)
    assert life.violations == [] and garbled.unparsed and garbled.unparsed[0][0] == 14
    with pytest.raises(evidence.Inconclusive, match="does not understand: line 14"):
        evidence.Pass("in order", life)
    # readiness saw another listener (inode 99) than the one the log follows
    elsewhere = syscalls.parse_text(ANCHORED).anchored(syscalls.Anchor.listener(99, "[::]:5000"))
    with pytest.raises(evidence.Inconclusive, match="does not follow the listening socket"):
        evidence.Pass("in order", lifecycle.follow(elsewhere, "server", complete=True))
    # a client log whose connect() is not to the suite's peer
    client = syscalls.parse_text(_lines(
        "socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 3<socket:[1]>",
        'connect(3<socket:[1]>, {sa_family=AF_INET, sin_port=htons(4000), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        "close(3<socket:[1]>) = 0", "exit_group(0) = ?"))
    assert client.anchored(syscalls.Anchor.connection(port=4000)).doubt() is None
    assert client.anchored(syscalls.Anchor.connection(port=4001)).doubt() is not None


def test_args_queries_ignore_runtime_sockets() -> None:
    t = syscalls.parse_text(_lines(
        "socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK, 0) = 3<socket:[30]>",
        'connect(3<socket:[30]>, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = 0',
        'sendto(3<socket:[30]>, "x", 1, MSG_NOSIGNAL, NULL, 0) = 1',
        "socketpair(AF_UNIX, SOCK_STREAM, 0, [4<socket:[40]>, 5<socket:[41]>]) = 0",
        "socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_ROUTE) = 6<socket:[60]>",
        'sendto(6<socket:[60]>, "x", 1, 0, {sa_family=AF_NETLINK}, 12) = 1',
        "exit_group(1) = ?"))
    assert syscalls.opened_sockets(t, "/tmp/s.sock") == [] and syscalls.network_sends(t) == []
    t = syscalls.parse_text(_lines(
        "socket(AF_INET6, SOCK_STREAM, IPPROTO_IP) = 3<socket:[1]>",
        'sendto(3<socket:[1]>, "x", 1, 0, NULL, 0) = -1 ENOTCONN (Transport endpoint is not connected)',
        "socket(AF_UNIX, SOCK_DGRAM, 0) = 4<socket:[2]>",
        'sendto(4<socket:[2]>, "x", 1, 0, {sa_family=AF_INET, sin_port=htons(53)}, 16) = -1 EAFNOSUPPORT (x)',
        'connect(4<socket:[2]>, {sa_family=AF_UNIX, sun_path="/tmp/s.sock"}, 110) = 0'))
    assert [c.line for c in syscalls.opened_sockets(t, "/tmp/s.sock")] == [1, 5]
    assert [c.line for c in syscalls.network_sends(t)] == [2, 4]


def _fault(log: str, step: str, at: faults.Endpoint, point: faults.Point | None = None
           ) -> faults.Fault:
    return faults.Fault.observe(Injection((step,), "EIO"), step, syscalls.parse_text(log), at,
                                point)


def test_a_fault_lands_only_on_the_lifecycle_socket() -> None:
    bound = ('bind(3<socket:[1]>, {sa_family=AF_INET, sin_port=htons(5000), '
             'sin_addr=inet_addr("0.0.0.0")}, 16) = 0')
    srv = _lines("socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 3<socket:[1]>", bound,
                 "listen(3<socket:[1]>, 5) = 0", "accept(3<socket:[1]>, NULL, NULL) = 4<socket:[2]>",
                 "read(5</proc/1/stat>, 0x1, 9) = -1 EIO (Input/output error) (INJECTED)",
                 "read(4<socket:[2]>, 0x1, 9) = -1 EIO (Input/output error) (INJECTED)")
    at = faults.Endpoint(port=5000)
    landed = _fault(srv, "read", at)
    assert landed.landed and landed.hit is not None and landed.hit.line == 6
    assert evidence.Pass("reported", landed).observations == (landed,)
    missed = _fault(srv.replace("read(4<socket:[2]>, 0x1, 9) = -1 EIO (Input/output error) "
                                "(INJECTED)", "read(4<socket:[2]>, \"x\", 9) = 1"), "read", at)
    assert not missed.landed
    with pytest.raises(evidence.Inconclusive, match="fault did not land.*line 5: read"):
        evidence.require(missed)
    assert not _fault(srv, "read", faults.Endpoint(port=5001)).landed  # another server's
    # socket(): the injected call must be the lifecycle one's (same arguments)
    sock = _lines("socket(AF_UNIX, SOCK_DGRAM, 0) = -1 EIO (Input/output error) (INJECTED)")
    p = faults.Point("socket", 1, "AF_INET, SOCK_STREAM, IPPROTO_IP")
    assert not _fault(sock, "socket", at, p).landed
    assert _fault(sock.replace("AF_UNIX, SOCK_DGRAM, 0", p.args), "socket", at, p).landed
    # a client: the connect to the peer, a read on that connection
    cli = _lines("socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 3<socket:[1]>",
                 'connect(3<socket:[1]>, {sa_family=AF_INET, sin_port=htons(7000)}, 16) = 0',
                 "read(3<socket:[1]>, 0x1, 13) = -1 EIO (Input/output error) (INJECTED)")
    assert _fault(cli, "read", faults.Endpoint(port=7000, peer=True)).landed
    assert not _fault(cli, "read", faults.Endpoint(port=7001, peer=True)).landed


@needs_strace
def test_traced_server_ends_on_sigterm_through_its_handler(tmp_path: Path) -> None:
    """support.finish() signals the server's process group: under strace the
    SIGTERM reaches the program (not strace, which blocks it), whose handler
    closes the listener and exits 0 — and the trace shows that shutdown path."""
    bed = Testbed(builtin("reference-echo"), Isolation("host", False, "unit test"), tmp_path)
    try:
        srv = bed.start_server("tcp4", trace=True)
        assert support.exchange(bed, srv).data == profiles.ECHO_PROBE
        rc = support.finish(bed, srv)
    finally:
        bed.close()
    assert rc == 0 and srv.trace_log is not None and srv.listener is not None
    t = syscalls.parse(srv.trace_log)
    term = [s for s in t.signals if s.name == "SIGTERM"]
    assert term and t.tgid(term[0].pid) == t.root_pid
    closes = [c for c in t.calls if c.name == "close" and c.inode == srv.listener.entry.inode]
    assert closes and closes[-1].line > term[0].line
    assert t.exits[t.root_pid] == 0 and not t.killed


def test_attached_log_may_miss_the_accept_it_started_in() -> None:
    """strace attached to a server blocked in accept() may not log that accept
    (seen under load): the connection is then the socket a thread born after the
    attach serves, which the log does not show created."""
    log = _lines(
        "clone3({flags=CLONE_VM|CLONE_FILES|CLONE_THREAD}, 88) = 12",
        "accept4(3<socket:[1]>,  <unfinished ...>",
        "read(7<socket:[70]>, 0x1, 9) = -1 EINTR (Interrupted system call) (INJECTED)") + _lines(
        "fcntl(4<socket:[2]>, F_DUPFD_CLOEXEC, 3) = 6<socket:[2]>",  # Rust's try_clone()
        'recvfrom(6<socket:[2]>, 0x1, 9, 0, NULL, NULL) = -1 EINTR (Interrupted system call) (INJECTED)',
        pid=12)
    at = faults.Endpoint(port=5000, listener=1, attached=True)
    inj = Injection(("read", "recvfrom"), "EINTR")
    fault = faults.Fault.observe(inj, "read", syscalls.parse_text(log), at)
    assert fault.hit is not None and fault.hit.line == 5
    # a socket served by a thread that predates the attach (a runtime's own) is not it
    old = log.replace("12 recvfrom", "9 recvfrom")
    assert not faults.Fault.observe(inj, "read", syscalls.parse_text(old), at).landed


def test_listener_closed_under_a_blocked_accept_is_still_followed() -> None:
    """A JVM's shutdown hook closes the listener while the main thread is blocked
    in accept(): the accept completes after the close, on a descriptor the model
    no longer holds — the anchored listener was still followed from its socket()."""
    log = _lines(*SRV[:3],
                 "clone3({flags=CLONE_VM|CLONE_FILES|CLONE_THREAD}, 88) = 12",
                 "accept(3<socket:[1]>, NULL, NULL <unfinished ...>") + _lines(
        "close(3<socket:[1]>) = 0", pid=12) + _lines(
        "<... accept resumed>) = -1 EBADF (Bad file descriptor)",
        "exit_group(0) = ?")
    t = syscalls.parse_text(log).anchored(syscalls.Anchor.listener(1, "0.0.0.0:5000"))
    life = lifecycle.follow(t, "server", complete=False)
    assert life.violations == [] and life.doubt() is None, (life.violations, life.doubt())


def test_unknown_call_of_a_dying_task_is_understood() -> None:
    # A thread torn down while its process exits shows `???() = ?` and then its
    # end: a call that never returned, nothing unknown.  Anywhere else it stays
    # a line the parser does not understand (LIFE-0 is then inconclusive).
    dying = syscalls.parse_text("10 accept4(3<TCP:[1]>, NULL, NULL, 0) = 5<TCP:[2]>\n"
                                "11 ???()                             = ?\n"
                                "11 +++ exited with 0 +++\n"
                                "10 +++ exited with 0 +++\n")
    assert dying.unparsed == [] and dying.doubt() is None
    unfinished = syscalls.parse_text("11 ???( <unfinished ...>\n"
                                     "10 exit_group(0) = ?\n"
                                     "11 <... ??? resumed>) = ?\n"
                                     "11 +++ exited with 0 +++\n"
                                     "10 +++ exited with 0 +++\n")
    assert unfinished.unparsed == []
    alive = syscalls.parse_text("11 ???()                             = ?\n"
                                "11 close(3) = 0\n")
    assert alive.unparsed == [(1, "11 ???()                             = ?")]
    assert alive.doubt() is not None
