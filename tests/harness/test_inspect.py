"""conformance.harness.inspect against real processes and sockets.

The servers are a tiny C program compiled into a temporary folder (skipped without
cc) and, where a compiler is not needed, Python one-liners.  Ports come only from
binding port 0; every wait is bounded; every spawned process group is killed.

The helpers at the top (C server, spawning, line reading) are also used by
test_readiness.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conformance.harness import inspect as I
from conformance.harness import sockfd
from conformance.harness.inspect import PidfdUnavailable, SocketNotFound

# --------------------------------------------------------------------------- helpers

# A configurable test server.  Prints "listen <CLOCK_MONOTONIC> <fd>" once listening
# (the time is taken just before the listen() call), "accepted <t> <fd>" after accept(), "closed <t> <fd>" after closing the
# connection.  -m 0: listen and wait; 1: one-shot hello; 2: controlled (writes "hi",
# waits for a stdin line, closes the connection, waits for a line, exits); 9: listen
# and exit at once.
SERVER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void die(const char *m) { perror(m); exit(1); }
static void stamp_at(const char *what, int fd, struct timespec ts) {
    printf("%s %ld.%09ld %d\n", what, (long)ts.tv_sec, ts.tv_nsec, fd); fflush(stdout);
}
static void stamp(const char *what, int fd) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); stamp_at(what, fd, ts);
}
static int waitline(void) { char b[64]; return fgets(b, sizeof b, stdin) != NULL; }

int main(int argc, char **argv) {
    int backlog = 5, v6 = 0, v6only = 0, reuse = 0, keep = 0, dbg = 0, udp = 0, mode = 0;
    long delay_us = 0; const char *addr = NULL, *upath = NULL; int c;
    while ((c = getopt(argc, argv, "b:6Va:u:rkdUw:m:")) != -1) switch (c) {
        case 'b': backlog = atoi(optarg); break;   case '6': v6 = 1; break;
        case 'V': v6only = 1; break;               case 'a': addr = optarg; break;
        case 'u': upath = optarg; break;           case 'r': reuse = 1; break;
        case 'k': keep = 1; break;                 case 'd': dbg = 1; break;
        case 'U': udp = 1; break;                  case 'w': delay_us = atol(optarg); break;
        case 'm': mode = atoi(optarg); break;      default: return 2; }
    int port = optind < argc ? atoi(argv[optind]) : 0, one = 1;
    int fam = upath ? AF_UNIX : v6 ? AF_INET6 : AF_INET;
    int s = socket(fam, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    if (s < 0) die("socket() error");
    if (reuse && setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one)) die("SO_REUSEADDR");
    if (keep && setsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one)) die("SO_KEEPALIVE");
    if (dbg && setsockopt(s, SOL_SOCKET, SO_DEBUG, &one, sizeof one)) die("SO_DEBUG");
    if (v6 && setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only)) die("V6ONLY");
    struct sockaddr_storage ss; socklen_t sl; memset(&ss, 0, sizeof ss);
    if (upath) {
        struct sockaddr_un *u = (struct sockaddr_un *)&ss; u->sun_family = AF_UNIX;
        strncpy(u->sun_path, upath, sizeof u->sun_path - 1); sl = sizeof *u;
    } else if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss; a->sin6_family = AF_INET6;
        a->sin6_port = htons(port); a->sin6_addr = in6addr_any;
        if (addr && inet_pton(AF_INET6, addr, &a->sin6_addr) != 1) die("address");
        sl = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss; a->sin_family = AF_INET;
        a->sin_port = htons(port); a->sin_addr.s_addr = htonl(INADDR_ANY);
        if (addr && inet_pton(AF_INET, addr, &a->sin_addr) != 1) die("address");
        sl = sizeof *a;
    }
    if (bind(s, (struct sockaddr *)&ss, sl)) die("bind() error");
    if (delay_us) usleep(delay_us);
    if (udp) { stamp("bound", s); if (mode == 9) return 0; pause(); return 0; }
    struct timespec before; clock_gettime(CLOCK_MONOTONIC, &before);
    if (listen(s, backlog)) die("listen() error");
    stamp_at("listen", s, before);  /* printed once listening; the time is from before */
    if (mode == 0) { pause(); return 0; }
    if (mode == 9) return 0;
    int conn = accept(s, NULL, NULL);
    if (conn < 0) die("accept() error");
    stamp("accepted", conn);
    if (mode == 1) {
        if (write(conn, "Hello World!", 13) != 13) die("write() error");
        close(conn); close(s); return 0;
    }
    if (write(conn, "hi", 2) != 2) die("write() error");
    waitline(); close(conn); stamp("closed", conn);
    waitline(); close(s); return 0;
}
"""

WAIT = 5.0  # upper bound of every wait in these tests


def build_server(out_dir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc)")
    src = out_dir / "srv.c"
    src.write_text(SERVER_C)
    exe = out_dir / "srv"
    res = subprocess.run(
        [cc, "-O1", "-Wall", "-o", str(exe), str(src)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, f"cc failed:\n{res.stderr}"
    return exe


@pytest.fixture(scope="module")
def csrv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled test server."""
    return build_server(tmp_path_factory.mktemp("srv"))


def free_port(family: int = socket.AF_INET) -> int:
    """A port number from binding port 0 (then released)."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("::" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A spawned process in its own process group, with line reading on stdout."""

    def __init__(self, argv: list[str], **kw: object) -> None:
        self.p = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            **kw,
        )  # type: ignore[call-overload]
        self.pid = self.p.pid
        self._buf = b""

    def line(self, timeout: float = WAIT) -> str:
        """The next stdout line (fails the test after ``timeout``)."""
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no line from pid {self.pid} within {timeout} s"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                assert chunk, f"pid {self.pid} closed stdout (status {self.p.poll()})"
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def stamp(self, what: str, timeout: float = WAIT) -> tuple[float, int]:
        """Wait for the line '<what> <time> <fd>': (time, fd)."""
        words = self.line(timeout).split()
        assert words[0] == what, f"expected {what!r}, got {words}"
        return float(words[1]), int(words[2])

    def send(self, text: str = "go\n") -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def stderr_tail(self, timeout: float = 1.0) -> str:
        """What the process wrote on stderr so far: only what is there if it still
        runs, up to EOF (at most ``timeout``) once it has ended."""
        assert self.p.stderr is not None
        fd = self.p.stderr.fileno()
        out = b""
        deadline = time.monotonic() + (timeout if self.p.poll() is not None else 0.0)
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            out += chunk
        return out.decode(errors="replace")[-2000:]

    def wait(self, timeout: float = WAIT) -> int:
        return self.p.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(WAIT)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


@contextlib.contextmanager
def spawn(argv: list[str], **kw: object) -> Iterator[Proc]:
    proc = Proc(argv, **kw)
    try:
        yield proc
    finally:
        proc.kill()


def until(pred: Callable[[], object], timeout: float = WAIT, what: str = "condition") -> object:
    """Poll ``pred`` until it returns something truthy (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def recv_all(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """Read until EOF (the peer's FIN); socket.timeout if it does not come."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def is_root() -> bool:
    return os.geteuid() == 0


# --------------------------------------------------------------------------- /proc parsing


def test_own_sockets_addresses_ipv4_ipv6_and_mapped() -> None:
    """Addresses decoded from /proc/net: IPv4, IPv6 loopback and IPv4-mapped."""
    with contextlib.ExitStack() as stack:
        l4 = stack.enter_context(socket.socket())
        l4.bind(("127.0.0.1", 0))
        l4.listen(1)
        l6 = stack.enter_context(socket.socket(socket.AF_INET6))
        l6.bind(("::", 0))  # dual-stack
        l6.listen(1)
        c6 = stack.enter_context(socket.create_connection(("127.0.0.1", l6.getsockname()[1])))
        a6, _ = l6.accept()
        stack.enter_context(a6)
        try:
            lo6 = stack.enter_context(socket.socket(socket.AF_INET6))
            lo6.bind(("::1", 0))
            lo6.listen(1)
        except OSError:
            lo6 = None
        entries = {e.inode: e for e in I.sockets_of(os.getpid(), tree=False)}

        def entry(s: socket.socket) -> I.SockEntry:
            ino = os.fstat(s.fileno()).st_ino
            assert ino in entries, f"socket fd {s.fileno()} not reported"
            e = entries[ino]
            assert e.pid == os.getpid() and e.fd == s.fileno()
            return e

        e = entry(l4)
        assert (e.kind, e.state, e.local) == ("tcp4", "LISTEN", ("127.0.0.1", l4.getsockname()[1]))
        assert e.where == f"127.0.0.1:{l4.getsockname()[1]}"
        e = entry(l6)
        assert (e.kind, e.state, e.local) == ("tcp6", "LISTEN", ("::", l6.getsockname()[1]))
        assert e.v6only is False and e.reachable_over_ipv4()
        e = entry(a6)  # the accepted side of an IPv4 connection to a dual-stack listener
        assert e.kind == "tcp6" and e.state == "ESTABLISHED"
        assert e.local == ("::ffff:127.0.0.1", l6.getsockname()[1])
        assert e.remote == ("::ffff:127.0.0.1", c6.getsockname()[1])
        e = entry(c6)
        assert e.kind == "tcp4" and e.remote == ("127.0.0.1", l6.getsockname()[1])
        if lo6 is not None:
            e = entry(lo6)
            assert e.local == ("::1", lo6.getsockname()[1]) and e.where.startswith("[::1]:")
            assert not e.reachable_over_ipv4()


def test_unix_and_udp_entries(tmp_path: Path) -> None:
    path = str(tmp_path / "a sock")  # a space in the path
    with socket.socket(socket.AF_UNIX) as u, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as d:
        u.bind(path)
        u.listen(2)
        d.bind(("127.0.0.1", 0))
        got = {e.inode: e for e in I.sockets_of(os.getpid(), tree=False)}
        eu = got[os.fstat(u.fileno()).st_ino]
        assert (eu.kind, eu.state, eu.local, eu.remote) == ("unix", "LISTEN", path, None)
        ed = got[os.fstat(d.fileno()).st_ino]
        assert (ed.kind, ed.state, ed.local) == (
            "udp4",
            "UNCONN",
            ("127.0.0.1", d.getsockname()[1]),
        )
        assert eu in I.listening(os.getpid(), tree=False)
        assert ed not in I.listening(os.getpid(), tree=False)


# --------------------------------------------------------------------------- process tree


def test_tree_follows_a_wrapper(csrv: Path) -> None:
    """A server run under a shell (which forks it) is found from the shell's pid."""
    port = free_port()
    with spawn(["sh", "-c", '"$0" "$@"; exit $?', str(csrv), str(port)]) as sh:
        sh.stamp("listen")
        until(lambda: I.listening(sh.pid), what="listener under sh")
        tree = I.process_tree(sh.pid)
        assert tree[0] == sh.pid and len(tree) == 2
        [entry] = I.listening(sh.pid)
        assert entry.pid == tree[1] and entry.port == port
        assert I.socket_fds(sh.pid, tree=True)
        assert I.socket_fds(sh.pid, tree=False) == {}
        assert I.listening(sh.pid, tree=False) == []


def test_gone_processes_give_empty_answers() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(WAIT)
    assert I.process_tree(p.pid) == []
    assert I.socket_fds(p.pid) == {}
    assert I.sockets_of(p.pid) == []
    assert I.listening(p.pid) == []
    with pytest.raises(SocketNotFound):
        I.getsockopt_of(p.pid, 3, socket.SOL_SOCKET, socket.SO_TYPE)


def test_reading_while_processes_exit() -> None:
    """Processes that open sockets and exit while being inspected never make it raise."""
    code = "import socket,sys\nfor _ in range(20): socket.socket().bind(('127.0.0.1',0))\n"
    deadline = time.monotonic() + 1.5
    runs = 0
    while time.monotonic() < deadline and runs < 20:
        p = subprocess.Popen([sys.executable, "-c", code])
        try:
            while p.poll() is None and time.monotonic() < deadline:
                I.sockets_of(p.pid)
                I.listening(p.pid)
                I.socket_fds(p.pid)
        finally:
            p.kill()
            p.wait(WAIT)
        I.sockets_of(p.pid)
        runs += 1
    assert runs > 0


# --------------------------------------------------------------------------- sockets_of & co


def test_sockets_of_a_connected_server(csrv: Path) -> None:
    port = free_port()
    with spawn([str(csrv), "-r", "-m", "2", str(port)]) as srv:
        _, lfd = srv.stamp("listen")
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
            _, cfd = srv.stamp("accepted")
            socks = I.sockets_of(srv.pid)
            by_fd = {e.fd: e for e in socks}
            assert by_fd[lfd].state == "LISTEN" and by_fd[lfd].local == ("0.0.0.0", port)
            assert by_fd[lfd].wildcard
            est = by_fd[cfd]
            assert est.state == "ESTABLISHED" and est.remote == c.getsockname()
            assert all(e.pid == srv.pid for e in socks)
            assert [e.fd for e in I.listening(srv.pid)] == [lfd]
            # the whole port, any owner: listener, server side, and our client side
            on_port = I.sockets_on_port(port)
            assert {e.inode for e in on_port} >= {by_fd[lfd].inode, est.inode}
            assert [e.local for e in on_port if e.local == c.getsockname()] == [c.getsockname()]
            assert all(e.local[1] == port for e in I.sockets_on_port(port, local_only=True))


@pytest.mark.parametrize("backlog", [5, 1])
def test_listen_diag_backlog_and_queue(csrv: Path, backlog: int) -> None:
    port = free_port()
    with spawn([str(csrv), "-b", str(backlog), "-m", "0", str(port)]) as srv:
        srv.stamp("listen")
        until(lambda: I.listen_diag(port), what="listener in sock_diag")
        [d] = I.listen_diag(port)
        assert d.backlog == backlog and d.queued == 0
        assert d.local == ("0.0.0.0", port) and d.kind == "tcp4"
        assert d.inode == I.listening(srv.pid)[0].inode
        # a server that never accepts: completed handshakes pile up in the accept queue
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
            until(lambda: I.listen_diag(port)[0].queued == 1, what="queued == 1")
        assert I.listen_diag(port, "tcp6") == []


def test_tcp6_dual_stack_and_v6only(csrv: Path) -> None:
    dual, only = free_port(socket.AF_INET6), free_port(socket.AF_INET6)
    with (
        spawn([str(csrv), "-6", "-b", "7", str(dual)]) as s1,
        spawn([str(csrv), "-6", "-V", "-b", "3", str(only)]) as s2,
    ):
        s1.stamp("listen")
        s2.stamp("listen")
        until(lambda: I.listening(s1.pid) and I.listening(s2.pid), what="both listening")
        [e1] = I.listening(s1.pid)
        [e2] = I.listening(s2.pid)
        assert (e1.kind, e1.local, e1.v6only) == ("tcp6", ("::", dual), False)
        assert (e2.kind, e2.local, e2.v6only) == ("tcp6", ("::", only), True)
        assert e1.reachable_over_ipv4() and not e2.reachable_over_ipv4()
        assert [e.v6only for e in I.sockets_of(s2.pid) if e.state == "LISTEN"] == [True]
        [d1] = I.listen_diag(dual, "tcp6")
        [d2] = I.listen_diag(only, "tcp")
        assert (d1.backlog, d1.v6only, d1.kind) == (7, False, "tcp6")
        assert (d2.backlog, d2.v6only) == (3, True)
        assert I.getsockopt_of(s2.pid, e2.fd or 0, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert I.getsockopt_of(s1.pid, e1.fd or 0, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def test_unix_listener(csrv: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    with spawn([str(csrv), "-u", path, "-b", "3"]) as srv:
        srv.stamp("listen")
        until(lambda: I.listening(srv.pid), what="unix listener")
        [e] = I.listening(srv.pid)
        assert (e.kind, e.state, e.local) == ("unix", "LISTEN", path)
        [d] = I.unix_listen_diag(path)
        assert (d.backlog, d.queued, d.inode) == (3, 0, e.inode)


def test_tcp_diag_keepalive_timer_and_skmem(csrv: Path) -> None:
    port = free_port()
    with spawn([str(csrv), "-k", "-m", "2", str(port)]) as srv:
        srv.stamp("listen")
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
            srv.stamp("accepted")
            assert c.recv(2) == b"hi"
            rows = I.tcp_diag(port)
            listen = [r for r in rows if r["state"] == "LISTEN"]
            assert len(listen) == 1 and listen[0]["wqueue"] == 5
            server_side = [r for r in rows if r["state"] == "ESTABLISHED" and r["local"][1] == port]
            client_side = [r for r in rows if r["remote"][1] == port]
            assert len(server_side) == 1 and len(client_side) == 1
            s = server_side[0]
            assert s["timer"] == "keepalive" and s["expires_ms"] > 0  # SO_KEEPALIVE inherited
            assert client_side[0]["timer"] == "off"
            assert s["skmem"]["rcvbuf"] > 0 and s["skmem"]["sndbuf"] > 0
            info = s["tcp_info"]
            assert info["tcpi_state"] == 1
            assert 0 <= info["tcpi_snd_wscale"] <= 14 and 0 <= info["tcpi_rcv_wscale"] <= 14
            assert [
                r["local"] for r in I.tcp_diag(port, local_only=True) if r["remote"][1] == port
            ] == []


# --------------------------------------------------------------------------- pidfd_getfd


OPTIONS = {
    "SO_REUSEADDR": ("-r", socket.SO_REUSEADDR),
    "SO_KEEPALIVE": ("-k", socket.SO_KEEPALIVE),
    "SO_DEBUG": ("-d", socket.SO_DEBUG),
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_getsockopt_of_reads_the_option_and_leaves_fin_intact(csrv: Path, name: str) -> None:
    flag, opt = OPTIONS[name]
    port = free_port()
    with spawn([str(csrv), flag, "-m", "2", str(port)]) as srv:
        try:
            _, lfd = srv.stamp("listen")
        except AssertionError:
            if name == "SO_DEBUG" and "SO_DEBUG" in srv.stderr_tail():
                pytest.skip("SO_DEBUG needs CAP_NET_ADMIN")
            raise
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
            _, cfd = srv.stamp("accepted")
            assert c.recv(2) == b"hi"
            try:
                assert I.getsockopt_of(srv.pid, lfd, socket.SOL_SOCKET, opt) == 1
            except PidfdUnavailable as e:
                pytest.skip(f"pidfd_getfd not usable here: {e.reason}")
            assert I.getsockopt_of(srv.pid, cfd, socket.SOL_SOCKET, opt) == 1  # inherited
            others = [o for n, (_, o) in OPTIONS.items() if n != name]
            assert all(I.getsockopt_of(srv.pid, cfd, socket.SOL_SOCKET, o) == 0 for o in others)
            assert (
                I.getsockopt_of(srv.pid, cfd, socket.SOL_SOCKET, socket.SO_TYPE)
                == socket.SOCK_STREAM
            )
            # the duplicates are gone: the server's close() ends the connection with FIN
            srv.send()
            srv.stamp("closed")
            assert recv_all(c, timeout=WAIT) == b""
        srv.send()
        assert srv.wait() == 0


def test_a_lingering_duplicate_would_suppress_the_fin(csrv: Path) -> None:
    """Control for the test above: the FIN check does notice a duplicate left open."""
    port = free_port()
    with spawn([str(csrv), "-m", "2", str(port)]) as srv:
        srv.stamp("listen")
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
            _, cfd = srv.stamp("accepted")
            assert c.recv(2) == b"hi"
            try:
                dup = sockfd._getfd(srv.pid, cfd)
            except PidfdUnavailable as e:
                pytest.skip(f"pidfd_getfd not usable here: {e.reason}")
            try:
                srv.send()
                srv.stamp("closed")
                with pytest.raises(TimeoutError):
                    recv_all(c, timeout=0.3)  # no FIN while our duplicate is open
            finally:
                os.close(dup)
            assert recv_all(c, timeout=WAIT) == b""  # closing the duplicate sends it


def test_getsockopt_of_bytes_and_errors(csrv: Path) -> None:
    port = free_port()
    with spawn([str(csrv), "-m", "0", str(port)]) as srv:
        _, lfd = srv.stamp("listen")
        try:
            raw = I.getsockopt_of(srv.pid, lfd, socket.SOL_SOCKET, socket.SO_LINGER, 8)
        except PidfdUnavailable as e:
            pytest.skip(f"pidfd_getfd not usable here: {e.reason}")
        assert raw == bytes(8)  # struct linger {0, 0}
        rcvbuf = I.getsockopt_of(srv.pid, lfd, socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert isinstance(rcvbuf, int) and rcvbuf > 0
        with pytest.raises(SocketNotFound):
            I.getsockopt_of(srv.pid, 999, socket.SOL_SOCKET, socket.SO_TYPE)
        with pytest.raises(OSError) as err:
            I.getsockopt_of(srv.pid, 0, socket.SOL_SOCKET, socket.SO_TYPE)  # a pipe
        assert err.value.errno == errno.ENOTSOCK
        # the target's descriptor table is unchanged: no descriptor leaked into it
        assert sorted(int(f) for f in os.listdir(f"/proc/{srv.pid}/fd")) == [0, 1, 2, lfd]


def test_pidfd_eperm_is_pidfdunavailable(csrv: Path) -> None:
    """A process without ptrace rights over the target gets PidfdUnavailable(EPERM)."""
    if not is_root():
        pytest.skip("needs root to drop to another uid")
    port = free_port()
    with spawn([str(csrv), "-m", "0", str(port)]) as srv:
        _, lfd = srv.stamp("listen")
        r, w = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the forked child
            os.close(r)
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            except OSError:
                os.write(w, b"SKIP cannot become nobody")
                os._exit(0)
            try:
                I.getsockopt_of(srv.pid, lfd, socket.SOL_SOCKET, socket.SO_TYPE)
                os.write(w, b"NOERROR")
            except PidfdUnavailable as e:
                os.write(w, b"UNAVAILABLE " + e.reason.encode())
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                os.write(w, f"OTHER {e!r}".encode())
            os._exit(0)
        os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], WAIT)
            msg = os.read(r, 4096).decode() if ready else "TIMEOUT"
        finally:
            os.close(r)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)
        if msg.startswith("SKIP"):
            pytest.skip(msg)
        assert msg.startswith("UNAVAILABLE EPERM"), msg


# --------------------------------------------------------------------------- network namespaces


def _unshare_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    res = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=WAIT)
    return res.returncode == 0


def test_target_in_another_network_namespace(csrv: Path) -> None:
    """The target's own /proc/PID/net view and sock_diag in its namespace are used."""
    if not _unshare_ok():
        pytest.skip("cannot create a network namespace here (unshare -n)")
    port = free_port()
    with spawn(["unshare", "-n", str(csrv), "-b", "4", "-m", "0", str(port)]) as srv:
        srv.stamp("listen")
        until(lambda: I.listening(srv.pid), what="listener in the other namespace")
        [e] = I.listening(srv.pid)
        assert e.local == ("0.0.0.0", port) and e.state == "LISTEN"
        assert I.netns_id(e.pid or 0) != I.own_netns_id()
        assert [x.inode for x in I.sockets_of(srv.pid)] == [e.inode]
        # our own namespace has nothing on that port; the target's has the listener
        assert not any(x.state == "LISTEN" for x in I.sockets_on_port(port, local_only=True))
        assert [x.inode for x in I.sockets_on_port(port, netns_pid=e.pid)] == [e.inode]
        assert [d.backlog for d in I.listen_diag(port, netns_pid=e.pid)] == [4]
        assert I.listen_diag(port) == []
        assert [r["wqueue"] for r in I.tcp_diag(port, netns_pid=e.pid)] == [4]
