"""Unit and smoke tests of the reference echo server (reference_impl/echo).

The first part drives the sans-IO ``EchoConnection`` and the command-line parsing
without any socket.  The second part runs the real server as a subprocess (in its
own process group, killed in a ``finally``) and talks to it over loopback TCP/IPv4,
TCP/IPv6, AF_UNIX and UDP.  Readiness is read from /proc/net (never by
connecting), so the server's descriptor count is not disturbed by probes; every
wait has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.echo import server as server_mod
from reference_impl.echo.protocol import (
    BUFFER_SIZE,
    DATAGRAM_BUFFER_SIZE,
    Action,
    EchoConnection,
    State,
)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0

# =========================================================================== protocol


def _drive(
    sm: EchoConnection, incoming: list[bytes], send_sizes: list[int]
) -> tuple[bytes, list[Action]]:
    """Run the machine against scripted recv results and send sizes (cycled)."""
    out = bytearray()
    seen: list[Action] = []
    data = iter(incoming)
    i = 0
    while True:
        action = sm.next_action()
        seen.append(action)
        if action is Action.RECV:
            sm.received(next(data))
        elif action is Action.SEND:
            pending = sm.pending_output()
            n = min(send_sizes[i % len(send_sizes)], len(pending))
            i += 1
            out += pending[:n]
            sm.sent(n)
        elif action is Action.CLOSE:
            sm.closed()
        else:
            return bytes(out), seen


def test_machine_echoes_then_closes_on_eof() -> None:
    sm = EchoConnection()
    assert sm.next_action() is Action.RECV and sm.pending_output() == b""
    out, seen = _drive(sm, [b"abc", b"\0\xff", b""], [1000])
    assert out == b"abc\0\xff"
    assert seen == [Action.RECV, Action.SEND, Action.RECV, Action.SEND, Action.RECV,
                    Action.CLOSE, Action.DONE]
    assert sm.state is State.CLOSED and sm.peer_eof and not sm.aborted
    assert sm.received_bytes == sm.echoed == 5


def test_machine_eof_at_once_closes_without_sending() -> None:
    out, seen = _drive(EchoConnection(), [b""], [1])
    assert out == b"" and seen == [Action.RECV, Action.CLOSE, Action.DONE]


def test_machine_reads_only_when_everything_is_sent() -> None:
    sm = EchoConnection()
    sm.received(b"hello")
    for n in (2, 0, 1):
        sm.sent(n)
        assert sm.next_action() is Action.SEND
    assert bytes(sm.pending_output()) == b"lo"
    with pytest.raises(RuntimeError):
        sm.received(b"more")  # one buffer at a time, like the C loop
    sm.sent(2)
    assert sm.next_action() is Action.RECV


def test_machine_keeps_a_view_of_the_drivers_buffer() -> None:
    buf = bytearray(b"xyz")
    sm = EchoConnection()
    sm.received(memoryview(buf)[:2])
    assert sm.pending_output().obj is buf  # no copy
    sm.sent(2)
    assert sm.pending_output().obj is not buf  # released once sent


@settings(database=None, max_examples=200)
@given(
    st.lists(st.binary(min_size=1, max_size=64), max_size=20),
    st.lists(st.integers(min_value=0, max_value=70), min_size=1, max_size=10).filter(any),
)
def test_machine_any_chunking_any_send_sizes(chunks: list[bytes], sizes: list[int]) -> None:
    sm = EchoConnection()
    out, _ = _drive(sm, [*chunks, b""], sizes)
    assert out == b"".join(chunks)
    assert sm.state is State.CLOSED and sm.echoed == len(out)


@pytest.mark.parametrize("sent_first", [0, 2])
def test_machine_failure_closes_this_connection(sent_first: int) -> None:
    sm = EchoConnection()
    sm.received(b"abcd")
    sm.sent(sent_first)
    sm.failed()  # EPIPE/ECONNRESET while sending
    assert sm.next_action() is Action.CLOSE and sm.aborted and not sm.peer_eof
    assert sm.pending_output() == b""
    sm.closed()
    assert sm.next_action() is Action.DONE


def test_machine_failure_while_receiving() -> None:
    sm = EchoConnection()
    sm.failed()
    assert sm.next_action() is Action.CLOSE and sm.aborted


def test_machine_rejects_out_of_order_events() -> None:
    sm = EchoConnection()
    with pytest.raises(RuntimeError):
        sm.sent(0)
    with pytest.raises(RuntimeError):
        sm.closed()
    sm.received(b"ab")
    with pytest.raises(ValueError):
        sm.sent(3)
    sm.sent(2)
    sm.received(b"")
    with pytest.raises(RuntimeError):
        sm.failed()
    with pytest.raises(RuntimeError):
        sm.received(b"x")
    sm.closed()
    with pytest.raises(RuntimeError):
        sm.closed()


def test_buffer_sizes() -> None:
    assert BUFFER_SIZE == 65536
    assert DATAGRAM_BUFFER_SIZE >= 65507


def test_protocol_module_is_sans_io() -> None:
    text = (ROOT / "reference_impl/echo/protocol.py").read_text()
    for module in ("socket", "select", "threading"):
        assert f"import {module}" not in text


def test_reference_imports_only_the_standard_library() -> None:
    code = (
        "import sys, reference_impl.echo.server\n"
        "std = sys.stdlib_module_names\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] not in std\n"
        "             and m.split('.')[0] not in ('reference_impl', '__main__', '__mp_main__'))\n"
        "print(' '.join(bad))\n"
    )
    # -S: no site (site-packages .pth hooks would import third-party modules by themselves)
    res = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, text=True,
        timeout=TIMEOUT,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == []


# =========================================================================== command line


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("a socket was created")

    monkeypatch.setattr(server_mod.socket, "socket", forbidden)


@pytest.mark.usefixtures("no_sockets")
@pytest.mark.parametrize(
    "argv",
    [
        ["./echo"],
        ["./echo", "1", "2"],
        ["./echo", "--udp"],
        ["./echo", "--oobinline", "--linger", "0"],
        ["./echo", "--unix", "/tmp/p", "80"],
    ],
)
def test_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        server_mod.main(argv)
    assert ei.value.code == 1
    assert capsys.readouterr() == ("Usage : ./echo <port>\n", "")


@pytest.mark.usefixtures("no_sockets")
@pytest.mark.parametrize("port", ["abc", "0", "-1", "65536", "70000", "12ab", ""])
def test_bad_port(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        server_mod.main(["./echo", port])
    assert ei.value.code == 1
    out, err = capsys.readouterr()
    assert out == "" and "port" in err and err.endswith("\n")


@pytest.mark.usefixtures("no_sockets")
@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["./echo", "80", "--frobnicate"], "unknown option"),
        (["./echo", "--unix", "/tmp/p", "--udp"], "--unix and --udp"),
        (["./echo", "--unix", "/tmp/p", "--ipv6"], "--unix and --ipv6"),
        (["./echo", "80", "--backlog", "x"], "--backlog N"),
    ],
)
def test_bad_options(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        server_mod.main(argv)
    assert ei.value.code == 1
    out, err = capsys.readouterr()
    assert out == "" and fragment in err


def test_parse_command_line() -> None:
    opts, udp, port = server_mod.parse_command_line(["e", "--udp", "7", "--rcvbuf", "4096"])
    assert (udp, port, opts.rcvbuf, opts.reuseaddr) == (True, 7, 4096, True)
    assert opts.backlog == server_mod.DEFAULT_BACKLOG >= 32
    opts, udp, port = server_mod.parse_command_line(["e", "--backlog", "5", "--oobinline", "9"])
    assert (udp, port, opts.backlog, opts.oobinline) == (False, 9, 5, True)
    opts, udp, port = server_mod.parse_command_line(["e", "--unix", "/x", "--no-reuseaddr"])
    assert (udp, port, opts.unix, opts.family, opts.reuseaddr) == (
        False, 0, "/x", socket.AF_UNIX, False)


def test_connection_options_repeat_oobinline() -> None:
    opts, _, _ = server_mod.parse_command_line(["e", "--oobinline", "--linger", "3", "1"])
    calls = server_mod._connection_setsockopts(opts)
    assert calls == [
        (socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 3)),
        (socket.SOL_SOCKET, socket.SO_OOBINLINE, 1),
    ]


# =========================================================================== real sockets

SERVER_CMD = [sys.executable, "-m", "reference_impl.echo.server"]


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _proc_net_rows(names: tuple[str, ...], port: int, state: str) -> list[str]:
    """The /proc/net/{names} files holding a socket on local ``port`` in ``state``."""
    found = []
    for name in names:
        try:
            with open(f"/proc/net/{name}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        found.append(name)
        except FileNotFoundError:
            pass
    return found


def _tcp_listening(port: int) -> list[str]:
    return _proc_net_rows(("tcp", "tcp6"), port, "0A")


def _udp_bound(port: int) -> list[str]:
    return _proc_net_rows(("udp", "udp6"), port, "07")


def _unix_listening(path: str) -> bool:
    with open("/proc/net/unix") as f:
        rows = [line.split() for line in list(f)[1:]]
    return any(len(r) == 8 and r[7] == path and int(r[3], 16) & 0x10000 for r in rows)


def _wait(predicate: Callable[[], object], what: str,
          proc: subprocess.Popen[bytes] | None = None, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(
                f"server exited ({proc.returncode}) before {what}: {out!r} {err!r}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@contextlib.contextmanager
def _spawn(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """The server in its own process group; the whole group is killed at the end."""
    proc = subprocess.Popen(
        [*SERVER_CMD, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], family: int, address: tuple[str, int] | str,
                 port: int = 0) -> None:
        self.proc = proc
        self.family = family
        self.address = address
        self.port = port

    def connect(self) -> socket.socket:
        s = socket.socket(self.family, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        try:
            s.connect(self.address)
        except BaseException:
            s.close()
            raise
        return s

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextlib.contextmanager
def _tcp_server(*extra: str, ipv6: bool = False) -> Iterator[Server]:
    port = _free_port()
    args = [*(["--ipv6"] if ipv6 else []), *extra, str(port)]
    with _spawn(args) as proc:
        _wait(lambda: _tcp_listening(port), f"LISTEN on {port}", proc)
        if ipv6:
            yield Server(proc, socket.AF_INET6, ("::1", port), port)
        else:
            yield Server(proc, socket.AF_INET, ("127.0.0.1", port), port)


@contextlib.contextmanager
def _unix_server(*extra: str) -> Iterator[tuple[Server, str]]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "echo.sock")
        with _spawn(["--unix", path, *extra]) as proc:
            _wait(lambda: _unix_listening(path), "unix LISTEN", proc)
            yield Server(proc, socket.AF_UNIX, path), path


@contextlib.contextmanager
def _udp_server(*extra: str) -> Iterator[tuple[Server, int]]:
    port = _free_port(socket.SOCK_DGRAM)
    with _spawn(["--udp", *extra, str(port)]) as proc:
        _wait(lambda: _udp_bound(port), f"UDP bind on {port}", proc)
        yield Server(proc, socket.AF_INET, ("127.0.0.1", port), port), port


def _read_to_eof(sock: socket.socket) -> bytes:
    """Everything until FIN; a RST raises ConnectionResetError instead."""
    sock.settimeout(TIMEOUT)
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def _exchange(sock: socket.socket, chunks: list[bytes]) -> bytes:
    """Write ``chunks`` while another thread reads, then SHUT_WR; what came back by EOF."""
    got: list[bytes] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            got.append(_read_to_eof(sock))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
    finally:
        t.join(timeout=60)
    assert not t.is_alive(), "reader still running"
    assert not errors, errors
    return got[0]


def _simple_exchange(server: Server, payload: bytes = b"ping\0pong") -> None:
    with server.connect() as c:
        assert _exchange(c, [payload]) == payload


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ---------------------------------------------------------------- transports


def test_tcp4_half_close_echoes_everything_then_fin() -> None:
    with _tcp_server() as srv:
        assert _tcp_listening(srv.port) == ["tcp"]
        with srv.connect() as c:
            c.sendall(b"abc\0def")
            c.shutdown(socket.SHUT_WR)
            assert _read_to_eof(c) == b"abc\0def"  # then FIN, not RST
        with srv.connect() as c:  # 0 bytes: FIN answered by FIN
            c.shutdown(socket.SHUT_WR)
            assert _read_to_eof(c) == b""
        _simple_exchange(srv)  # still serving (not one-shot)
        assert srv.alive()


def test_tcp6_dual_stack() -> None:
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    with _tcp_server(ipv6=True) as srv:
        assert _tcp_listening(srv.port) == ["tcp6"]
        _simple_exchange(srv)
        v4 = Server(srv.proc, socket.AF_INET, ("127.0.0.1", srv.port))
        _simple_exchange(v4)


def test_unix_transport_and_sigterm_removes_the_path() -> None:
    with _unix_server() as (srv, path):
        _simple_exchange(srv, bytes(range(256)) * 100)
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=TIMEOUT)
        assert srv.proc.returncode == 0
        assert not os.path.exists(path)


def test_udp_datagrams_come_back_whole_to_their_sender() -> None:
    rng = random.Random(4)
    with _udp_server() as (srv, port):
        assert _udp_bound(port) == ["udp"]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(TIMEOUT)
            for size in (0, 1, 2, 1000, 1472, 1473, 9000, 65000, 65507):
                payload = rng.randbytes(size).replace(b"\1", b"\0")
                c.sendto(payload, srv.address)
                data, peer = c.recvfrom(70000)
                assert (len(data), data, peer) == (size, payload, srv.address)
        # a second client gets its own datagrams only
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            a.settimeout(TIMEOUT)
            b.settimeout(TIMEOUT)
            a.sendto(b"from a", srv.address)
            b.sendto(b"from b", srv.address)
            assert a.recvfrom(100) == (b"from a", srv.address)
            assert b.recvfrom(100) == (b"from b", srv.address)
        assert srv.alive()


def test_udp_sigterm() -> None:
    with _udp_server() as (srv, port):
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=TIMEOUT)
        assert srv.proc.returncode == 0 and _udp_bound(port) == []


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "sockconf-echo-server"
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    res = subprocess.run([str(script)], capture_output=True, timeout=TIMEOUT)
    usage_line = f"Usage : {script} <port>\n".encode()
    assert (res.returncode, res.stdout, res.stderr) == (1, usage_line, b"")


# ---------------------------------------------------------------- stream semantics


def test_large_binary_payload_any_chunking() -> None:
    rng = random.Random(1)
    payload = rng.randbytes(6 * 1024 * 1024) + bytes(100_000)  # NULs inside and at the end
    cuts = sorted(rng.sample(range(1, len(payload)), 300))
    chunks = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    with _tcp_server() as srv, srv.connect() as c:
        assert _exchange(c, chunks) == payload


def test_forty_clients_at_once_never_mix() -> None:
    with _tcp_server() as srv:
        clients = [srv.connect() for _ in range(40)]
        try:
            for rnd in range(3):  # every client open and served, in interleaved turns
                for i, c in enumerate(clients):
                    c.sendall(f"<{i}:{rnd}>".encode())
                for i, c in enumerate(clients):
                    want = f"<{i}:{rnd}>".encode()
                    assert c.recv(len(want), socket.MSG_WAITALL) == want
            for c in clients:
                c.shutdown(socket.SHUT_WR)
            for c in clients:
                assert _read_to_eof(c) == b""
        finally:
            for c in clients:
                c.close()


def _send_until_stalled(sock: socket.socket, settle: float = 0.1) -> int:
    """Send without reading until nothing more goes out for ``settle`` seconds: the
    echo has filled both directions and the server's thread is blocked in send()."""
    sock.setblocking(False)
    block = b"\0" * 65536
    sent = 0
    stalled_since: float | None = None
    try:
        while stalled_since is None or time.monotonic() - stalled_since < settle:
            try:
                sent += sock.send(block)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                time.sleep(0.005)
            assert sent < 1 << 30, "the server never stopped reading"
    finally:
        sock.settimeout(TIMEOUT)
    return sent


def test_idle_and_never_reading_clients_delay_nobody() -> None:
    with _tcp_server() as srv:
        idle = srv.connect()
        hog = srv.connect()
        try:
            _send_until_stalled(hog)
            _simple_exchange(srv)
            _simple_exchange(srv, os.urandom(1 << 20))
        finally:
            idle.close()
            _rst_close(hog)
        _simple_exchange(srv)


def test_resets_never_stop_service_and_fds_return_to_baseline() -> None:
    with _tcp_server() as srv:
        _simple_exchange(srv)
        baseline = srv.fd_count()
        for i in range(30):
            c = srv.connect()
            c.sendall(os.urandom(200_000 if i % 2 else 10))
            if i % 3 == 0:
                c.recv(1)  # mid-exchange: some echo read, the rest not
            if i % 5 == 4:
                c.close()  # FIN with unread echo pending: the kernel sends RST
            else:
                _rst_close(c)
        # vanished mid-request: FIN after a partial request, nothing read
        with srv.connect() as c:
            c.sendall(b"partial")
            c.shutdown(socket.SHUT_WR)
        _simple_exchange(srv)
        _wait(lambda: srv.fd_count() == baseline, f"fd count back to {baseline}", srv.proc)
        assert srv.alive()


def test_sigpipe_never_kills_the_server() -> None:
    with _tcp_server() as srv:
        for i in range(20):
            # Send more than one recv() and close at once: the server reads its
            # first chunk in CLOSE_WAIT, its echo draws a RST, and its next send()
            # fails with EPIPE (which raises SIGPIPE unless ignored / MSG_NOSIGNAL).
            with srv.connect() as c:
                c.sendall(os.urandom(70_000 + 10_000 * i))
        for _ in range(5):
            c = srv.connect()
            _send_until_stalled(c, settle=0.02)  # the server's thread blocks in send()
            _rst_close(c)  # that send fails with ECONNRESET
        _simple_exchange(srv)
        assert srv.alive()


def test_sigterm_ends_it_with_clients_connected() -> None:
    with _tcp_server() as srv:
        port = srv.port
        busy = srv.connect()
        idle = srv.connect()
        try:
            _send_until_stalled(busy)  # a connection thread blocked in send()
            srv.proc.send_signal(signal.SIGTERM)
            srv.proc.wait(timeout=TIMEOUT)  # a hang guard: LIFE-6 judges the 1 s bound
            assert srv.proc.returncode == 0
        finally:
            busy.close()
            idle.close()
        assert _tcp_listening(port) == []
        with socket.socket() as s:  # the port is free again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(1)


def _oob_exchange(srv: Server) -> bytes:
    with srv.connect() as c:
        c.sendall(b"ab")
        c.send(b"X", socket.MSG_OOB)
        c.sendall(b"cd")
        c.shutdown(socket.SHUT_WR)
        return _read_to_eof(c)


def test_urgent_byte_not_echoed_without_oobinline() -> None:
    with _tcp_server() as srv:
        assert _oob_exchange(srv) == b"abcd"


def test_urgent_byte_echoed_in_order_with_oobinline() -> None:
    with _tcp_server("--oobinline") as srv:
        assert _oob_exchange(srv) == b"abXcd"


def test_restart_on_the_same_port_during_time_wait() -> None:
    with _tcp_server() as srv:
        port = srv.port
        c = srv.connect()
        try:
            _simple_exchange(srv)
            srv.proc.send_signal(signal.SIGTERM)  # the server closes `c` first: its
            srv.proc.wait(timeout=TIMEOUT)  # side of that connection goes to TIME_WAIT
            assert _read_to_eof(c) == b""
        finally:
            c.close()
    with _spawn([str(port)]) as proc:  # SO_REUSEADDR: bind() succeeds at once
        _wait(lambda: _tcp_listening(port), "LISTEN again", proc)
        _simple_exchange(Server(proc, socket.AF_INET, ("127.0.0.1", port), port))


# ---------------------------------------------------------------- command line, errors


def test_usage_and_bad_port_subprocess() -> None:
    res = subprocess.run([*SERVER_CMD], cwd=ROOT, capture_output=True, timeout=TIMEOUT)
    assert res.returncode == 1 and res.stderr == b""
    assert res.stdout.startswith(b"Usage : ") and res.stdout.endswith(b" <port>\n")
    res = subprocess.run([*SERVER_CMD, "1", "2"], cwd=ROOT, capture_output=True, timeout=TIMEOUT)
    assert res.returncode == 1 and res.stdout.startswith(b"Usage : ")
    res = subprocess.run([*SERVER_CMD, "12ab"], cwd=ROOT, capture_output=True, timeout=TIMEOUT)
    assert res.returncode == 1 and res.stdout == b"" and b"port" in res.stderr


def test_bind_error() -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        res = subprocess.run(
            [*SERVER_CMD, str(port)], cwd=ROOT, capture_output=True, timeout=TIMEOUT
        )
        assert (res.returncode, res.stdout, res.stderr) == (1, b"", b"bind() error\n")


def test_ss_shows_the_default_and_declared_backlog() -> None:
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss not installed")
    for extra, want in (((), str(server_mod.DEFAULT_BACKLOG)), (("--backlog", "17"), "17")):
        with _tcp_server(*extra) as srv:
            res = subprocess.run([ss, "-Hltn", f"sport = :{srv.port}"],
                                 capture_output=True, text=True, timeout=TIMEOUT)
            fields = res.stdout.split()
            assert fields[0] == "LISTEN" and fields[2] == want, res.stdout


def _strace() -> str:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    probe = subprocess.run([strace, "-o", "/dev/null", "true"], capture_output=True,
                           timeout=TIMEOUT)
    if probe.returncode != 0:
        pytest.skip("ptrace not permitted here")
    return strace


@pytest.mark.parametrize(
    "call,message",
    [
        ("socket", b"socket() error\n"),
        ("setsockopt", b"setsockopt() error\n"),
        ("bind", b"bind() error\n"),
        ("listen", b"listen() error\n"),
        ("accept4", b"accept() error\n"),
    ],
)
def test_injected_failures_are_reported(call: str, message: bytes) -> None:
    strace = _strace()
    port = _free_port()
    res = subprocess.run(
        [strace, "-f", "-o", "/dev/null", "-e", f"inject={call}:error=EMFILE:when=1",
         *SERVER_CMD, str(port)],
        cwd=ROOT, capture_output=True, timeout=TIMEOUT,
    )
    assert (res.returncode, res.stdout, res.stderr) == (1, b"", message)


@pytest.mark.parametrize(
    "injection",
    [
        "inject=accept4:error=EINTR:when=1",
        "inject=accept4:error=ECONNABORTED:when=1",
        "inject=recvfrom:error=EINTR:when=1",
        "inject=sendto:error=EINTR:when=1",
    ],
)
def test_interrupted_or_aborted_calls_are_retried(injection: str) -> None:
    strace = _strace()
    port = _free_port()
    cmd = [strace, "-f", "-o", "/dev/null", "-e", injection, *SERVER_CMD, str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _wait(lambda: _tcp_listening(port), "LISTEN under strace", proc)
        srv = Server(proc, socket.AF_INET, ("127.0.0.1", port), port)
        _simple_exchange(srv)
        _simple_exchange(srv)
        assert srv.alive()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)
