"""Unit and smoke tests of the reference hello server and client (reference_impl/hello).

The first part drives the sans-IO protocol objects and the argument parsers without
any socket.  The second part runs the real programs as subprocesses on loopback:
readiness is detected in /proc/net/tcp (never by connecting), every wait has a
timeout, and every spawned process is killed in a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.common import args as args_mod
from reference_impl.common.args import (
    ArgError,
    parse_host,
    parse_ipv4,
    parse_port,
    scan,
)
from reference_impl.common.errors import error_handling, usage
from reference_impl.common.options import (
    SERVER_OPTION_TABLE,
    ServerOptions,
    apply_connection_options,
    apply_listener_options,
    connection_setsockopts,
    linger_struct,
    listener_setsockopts,
)
from reference_impl.hello import client as client_mod
from reference_impl.hello import server as server_mod
from reference_impl.hello.protocol import (
    GREETING,
    Action,
    GreetingReader,
    HelloServerConnection,
    ProtocolError,
    ServerState,
    format_message,
)

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = b"Message from server: Hello World! \n"
TIMEOUT = 10.0

# =========================================================================== protocol


def test_greeting_is_the_c_string_with_its_nul() -> None:
    assert GREETING == b"Hello World!\x00"
    assert len(GREETING) == 13


def test_format_message_is_what_printf_prints() -> None:
    assert format_message(GREETING) == "Message from server: Hello World! \n"
    assert format_message(GREETING).encode("latin-1") == MESSAGE
    # %s stops at the first NUL; bytes map one to one (latin-1)
    assert format_message(b"ab\0cd") == "Message from server: ab \n"
    assert format_message(b"\xff\xfe").encode("latin-1") == b"Message from server: \xff\xfe \n"


def test_reader_whole_greeting() -> None:
    r = GreetingReader()
    assert not r.complete
    assert r.feed(GREETING) is True
    assert r.complete and r.missing == 0
    assert r.greeting == GREETING
    r.feed_eof()  # EOF after a complete greeting is fine


def test_reader_one_byte_at_a_time() -> None:
    r = GreetingReader()
    for i in range(13):
        assert r.missing == 13 - i
        done = r.feed(GREETING[i : i + 1])
        assert done is (i == 12)
    assert r.greeting == GREETING


@settings(database=None)
@given(st.lists(st.integers(min_value=1, max_value=12), max_size=12))
def test_reader_any_segmentation(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [GREETING[a:b] for a, b in zip([0, *points], [*points, 13], strict=True)]
    r = GreetingReader()
    for i, chunk in enumerate(chunks):
        assert r.feed(chunk) is (i == len(chunks) - 1)
    assert r.greeting == GREETING


@pytest.mark.parametrize("received", [b"", b"H", GREETING[:12]])
def test_reader_eof_before_complete_is_an_error(received: bytes) -> None:
    r = GreetingReader()
    if received:
        r.feed(received)
    with pytest.raises(ProtocolError):
        r.feed_eof()
    with pytest.raises(ProtocolError):
        _ = r.greeting


def test_reader_empty_chunk_means_eof() -> None:
    r = GreetingReader()
    r.feed(b"Hello")
    with pytest.raises(ProtocolError):
        r.feed(b"")


@pytest.mark.parametrize("chunks", [[GREETING + b"x"], [GREETING[:10], GREETING[10:] + b"!!"]])
def test_reader_more_than_13_bytes_is_an_error(chunks: list[bytes]) -> None:
    r = GreetingReader()
    with pytest.raises(ProtocolError):
        for c in chunks:
            r.feed(c)


def test_reader_does_not_judge_content() -> None:
    r = GreetingReader()
    r.feed(b"Hello Wxrld!\0")
    assert r.complete


def _run_server_machine(
    sm: HelloServerConnection, *, send_sizes: list[int], incoming: list[bytes]
) -> list[Action]:
    seen: list[Action] = []
    sizes = iter(send_sizes)
    data = iter(incoming)
    while True:
        action = sm.next_action()
        seen.append(action)
        if action is Action.SEND:
            sm.sent(min(next(sizes), len(sm.pending_output())))
        elif action is Action.SHUTDOWN_WR:
            sm.shutdown_done()
        elif action is Action.DRAIN:
            sm.received(next(data))
        elif action is Action.CLOSE:
            sm.closed()
        else:
            return seen


def test_server_machine_happy_path() -> None:
    sm = HelloServerConnection()
    assert sm.state is ServerState.SEND_GREETING
    assert sm.pending_output() == GREETING
    seen = _run_server_machine(sm, send_sizes=[13], incoming=[b""])
    assert seen == [Action.SEND, Action.SHUTDOWN_WR, Action.DRAIN, Action.CLOSE, Action.DONE]
    assert sm.state is ServerState.CLOSED and sm.peer_eof and not sm.write_failed


def test_server_machine_partial_sends_and_discarded_input() -> None:
    sm = HelloServerConnection()
    seen = _run_server_machine(sm, send_sizes=[1, 5, 0, 7], incoming=[b"abc", b"d" * 100, b""])
    assert seen.count(Action.SEND) == 4
    assert seen.count(Action.DRAIN) == 3
    assert sm.discarded == 103
    assert sm.pending_output() == b""


def test_server_machine_pending_output_shrinks() -> None:
    sm = HelloServerConnection()
    sm.sent(4)
    assert sm.pending_output() == GREETING[4:]
    with pytest.raises(ValueError):
        sm.sent(10)  # only 9 left


def test_server_machine_send_failure_closes_and_flags() -> None:
    sm = HelloServerConnection()
    sm.sent(3)
    sm.send_failed()
    assert sm.next_action() is Action.CLOSE and sm.write_failed
    sm.closed()
    assert sm.next_action() is Action.DONE


@pytest.mark.parametrize("end", ["receive_failed", "drain_timeout"])
def test_server_machine_drain_ends_on_error_or_deadline(end: str) -> None:
    sm = HelloServerConnection()
    sm.sent(13)
    sm.shutdown_done()
    sm.received(b"junk")
    getattr(sm, end)()
    assert sm.next_action() is Action.CLOSE and not sm.write_failed and not sm.peer_eof


def test_server_machine_shutdown_failure_still_drains() -> None:
    sm = HelloServerConnection()
    sm.sent(13)
    sm.shutdown_failed()
    assert sm.next_action() is Action.DRAIN
    sm.received(b"")
    assert sm.next_action() is Action.CLOSE


def test_server_machine_rejects_out_of_order_events() -> None:
    sm = HelloServerConnection()
    with pytest.raises(RuntimeError):
        sm.shutdown_done()
    with pytest.raises(RuntimeError):
        sm.received(b"x")
    with pytest.raises(RuntimeError):
        sm.closed()
    sm.sent(13)
    with pytest.raises(RuntimeError):
        sm.sent(0)
    assert sm.pending_output() == b""


# =========================================================================== args


@pytest.mark.parametrize("text,value", [("1", 1), ("80", 80), ("080", 80), ("65535", 65535)])
def test_parse_port_accepts(text: str, value: int) -> None:
    assert parse_port(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "0",
        "-1",
        "65536",
        "70000",
        "12ab",
        "",
        "+5",
        " 5",
        "5 ",
        "1e3",
        "0x50",
        "٣",
        "99999999999999999999",
    ],
)
def test_parse_port_rejects(text: str) -> None:
    with pytest.raises(ArgError):
        parse_port(text)


@settings(database=None)
@given(st.integers(min_value=1, max_value=65535))
def test_parse_port_every_valid_port(n: int) -> None:
    assert parse_port(str(n)) == n


@settings(database=None)
@given(st.text(max_size=8))
def test_parse_port_matches_a_strict_model(text: str) -> None:
    ok = text != "" and all(c in "0123456789" for c in text) and 1 <= int(text) <= 65535
    if ok:
        assert parse_port(text) == int(text)
    else:
        with pytest.raises(ArgError):
            parse_port(text)


@pytest.mark.parametrize("text", ["999.1.1.1", "1.2.3", "abc", "", "1.2.3.4.5", "01.2.3.4 ", "::1"])
def test_parse_ipv4_rejects(text: str) -> None:
    with pytest.raises(ArgError):
        parse_ipv4(text)


def test_parse_host() -> None:
    assert parse_host("127.0.0.1") == (socket.AF_INET, "127.0.0.1")
    assert parse_host("::1") == (socket.AF_INET6, "::1")
    assert parse_host("fe80::1:2") == (socket.AF_INET6, "fe80::1:2")
    for bad in ("999.1.1.1", "1.2.3", "abc", "localhost", "[::1]", ""):
        with pytest.raises(ArgError):
            parse_host(bad)


def test_scan_options_anywhere() -> None:
    pos, opts = scan(
        ["--linger", "0", "8080", "--oobinline", "--keepalive", "1", "2", "3"], SERVER_OPTION_TABLE
    )
    assert pos == ["8080"]
    assert opts == {"--linger": (0,), "--oobinline": (), "--keepalive": (1, 2, 3)}


def test_scan_single_dash_words_are_positionals() -> None:
    pos, opts = scan(["-1"], SERVER_OPTION_TABLE)
    assert pos == ["-1"] and opts == {}


def test_scan_double_dash_ends_options() -> None:
    pos, opts = scan(["--debug", "--", "--linger"], SERVER_OPTION_TABLE)
    assert pos == ["--linger"] and opts == {"--debug": ()}


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--bogus"], "unknown option"),
        (["80", "--linger"], "needs 1 value"),
        (["--keepalive", "1", "2"], "needs 3 value"),
        (["--linger", "x"], "--linger SECONDS"),
        (["--backlog", "-1"], "--backlog N"),
        (["--keepalive", "1", "0", "3"], "INTERVAL"),
        (["--rcvbuf", "0"], "--rcvbuf BYTES"),
        (["--unix", ""], "--unix PATH"),
    ],
)
def test_scan_errors(argv: list[str], fragment: str) -> None:
    with pytest.raises(ArgError, match=fragment):
        scan(argv, SERVER_OPTION_TABLE)


def test_int_in_range() -> None:
    p = args_mod.int_in_range(2, 9, "thing")
    assert p("2") == 2 and p("9") == 9
    for bad in ("1", "10", "x", "-3"):
        with pytest.raises(ArgError, match="thing"):
            p(bad)


# =========================================================================== options


def test_options_defaults() -> None:
    o = ServerOptions.from_scanned({})
    assert o.backlog == 5 and o.reuseaddr and o.family == socket.AF_INET
    assert listener_setsockopts(o) == [(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)]
    assert connection_setsockopts(o) == []


def test_options_all_in_order() -> None:
    _, scanned = scan(
        "--debug --dontroute --broadcast --oobinline --sndbuf 8192 --rcvbuf 4096 "
        "--keepalive 7 3 2 --linger 4 --backlog 17 --ipv6".split(),
        SERVER_OPTION_TABLE,
    )
    o = ServerOptions.from_scanned(scanned)
    assert o.backlog == 17 and o.family == socket.AF_INET6
    S, T = socket.SOL_SOCKET, socket.IPPROTO_TCP
    conn = [
        (S, socket.SO_LINGER, struct.pack("ii", 1, 4)),
        (S, socket.SO_KEEPALIVE, 1),
        (T, socket.TCP_KEEPIDLE, 7),
        (T, socket.TCP_KEEPINTVL, 3),
        (T, socket.TCP_KEEPCNT, 2),
    ]
    assert connection_setsockopts(o) == conn
    assert listener_setsockopts(o) == [
        (S, socket.SO_REUSEADDR, 1),
        (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0),
        *conn,
        (S, socket.SO_RCVBUF, 4096),
        (S, socket.SO_SNDBUF, 8192),
        (S, socket.SO_OOBINLINE, 1),
        (S, socket.SO_BROADCAST, 1),
        (S, socket.SO_DONTROUTE, 1),
        (S, socket.SO_DEBUG, 1),
    ]


def test_options_unix_and_no_reuseaddr() -> None:
    o = ServerOptions.from_scanned({"--unix": ("/tmp/x.sock",), "--no-reuseaddr": ()})
    assert o.family == socket.AF_UNIX and o.unix == "/tmp/x.sock"
    assert listener_setsockopts(o) == []


def test_linger_struct() -> None:
    assert linger_struct(0) == struct.pack("ii", 1, 0)


class _RecordingSocket:
    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[int, int, int | bytes]] = []
        self.fail_at = fail_at

    def setsockopt(self, level: int, name: int, value: int | bytes) -> None:
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise OSError(22, "Invalid argument")
        self.calls.append((level, name, value))


def test_apply_functions_issue_the_listed_calls_and_propagate_errors() -> None:
    o = ServerOptions.from_scanned({"--linger": (0,), "--rcvbuf": (1000,)})
    rec = _RecordingSocket()
    apply_listener_options(rec, o)  # type: ignore[arg-type]
    assert rec.calls == listener_setsockopts(o)
    rec = _RecordingSocket()
    apply_connection_options(rec, o)  # type: ignore[arg-type]
    assert rec.calls == connection_setsockopts(o)
    with pytest.raises(OSError):
        apply_listener_options(_RecordingSocket(fail_at=1), o)  # type: ignore[arg-type]


# =========================================================================== errors / CLI in-process


def test_error_handling_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        error_handling("bind() error")
    assert ei.value.code == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", "bind() error\n")
    with pytest.raises(SystemExit) as ei:
        usage("./srv", "<port>")
    assert ei.value.code == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("Usage : ./srv <port>\n", "")


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("a socket was created")

    monkeypatch.setattr(server_mod.socket, "socket", forbidden)
    monkeypatch.setattr(client_mod.socket, "socket", forbidden)


@pytest.mark.usefixtures("no_sockets")
@pytest.mark.parametrize(
    "argv",
    [
        ["./srv"],
        ["./srv", "1", "2"],
        ["./srv", "--unix", "/tmp/p", "80"],
        ["./srv", "--linger", "0"],
    ],
)
def test_server_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        server_mod.main(argv)
    assert ei.value.code == 1
    assert capsys.readouterr() == ("Usage : ./srv <port>\n", "")


@pytest.mark.usefixtures("no_sockets")
@pytest.mark.parametrize("port", ["abc", "0", "-1", "65536", "70000", "12ab", ""])
def test_server_bad_port(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        server_mod.main(["./srv", port])
    assert ei.value.code == 1
    out, err = capsys.readouterr()
    assert out == "" and "port" in err and err.endswith("\n")


@pytest.mark.usefixtures("no_sockets")
def test_server_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        server_mod.main(["./srv", "8080", "--frobnicate"])
    assert ei.value.code == 1
    out, err = capsys.readouterr()
    assert out == "" and "unknown option" in err


@pytest.mark.usefixtures("no_sockets")
@pytest.mark.parametrize(
    "argv",
    [
        ["./cli"],
        ["./cli", "127.0.0.1"],
        ["./cli", "127.0.0.1", "80", "x"],
        ["./cli", "--unix", "/p", "x"],
    ],
)
def test_client_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        client_mod.main(argv)
    assert ei.value.code == 1
    assert capsys.readouterr() == ("Usage : ./cli <IP> <port>\n", "")


@pytest.mark.usefixtures("no_sockets")
@pytest.mark.parametrize(
    "ip,port",
    [
        ("999.1.1.1", "80"),
        ("1.2.3", "80"),
        ("abc", "80"),
        ("127.0.0.1", "0"),
        ("127.0.0.1", "12ab"),
        ("127.0.0.1", ""),
    ],
)
def test_client_bad_address(ip: str, port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        client_mod.main(["./cli", ip, port])
    assert ei.value.code == 1
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("\n") and err.strip()


def test_protocol_module_is_sans_io() -> None:
    text = (ROOT / "reference_impl/hello/protocol.py").read_text()
    assert "import socket" not in text and "import select" not in text


def test_reference_imports_only_the_standard_library() -> None:
    code = (
        "import sys, reference_impl.hello.server, reference_impl.hello.client\n"
        "std = sys.stdlib_module_names\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] not in std\n"
        "             and m.split('.')[0] not in ('reference_impl', '__main__', '__mp_main__'))\n"
        "print(' '.join(bad))\n"
    )
    # -S: no site (site-packages .pth hooks would import third-party modules by themselves)
    res = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == []
    assert "conformance" not in res.stdout


# =========================================================================== real sockets

SERVER_CMD = [sys.executable, "-m", "reference_impl.hello.server"]
CLIENT_CMD = [sys.executable, "-m", "reference_impl.hello.client"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _listen_entries(port: int) -> list[tuple[str, int]]:
    """(file, backlog-less) LISTEN rows for ``port`` in /proc/net/tcp{,6}."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state = fields[1], fields[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        found.append((name, int(fields[9])))  # inode
        except FileNotFoundError:
            pass
    return found


def _wait(
    predicate: object, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(
                f"process exited ({proc.returncode}) while waiting for {what}: {out!r} {err!r}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@contextlib.contextmanager
def _spawn(cmd: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


@contextlib.contextmanager
def _server(*extra: str, port: int | None = None) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = port or _free_port()
    with _spawn([*SERVER_CMD, str(port), *extra]) as proc:
        _wait(lambda: _listen_entries(port), TIMEOUT, f"LISTEN on {port}", proc)
        yield proc, port


def _read_to_eof(sock: socket.socket) -> bytes:
    sock.settimeout(TIMEOUT)
    data = b""
    while True:
        chunk = sock.recv(4096)  # a RST would raise ConnectionResetError here
        if not chunk:
            return data
        data += chunk


def test_server_serves_one_client_then_exits() -> None:
    with _server() as (proc, port):
        assert [e[0] for e in _listen_entries(port)] == ["tcp"]  # 0.0.0.0:port
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
            assert _read_to_eof(c) == GREETING  # greeting, then FIN (not RST)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert (proc.returncode, out, err) == (0, b"", b"")
        assert _listen_entries(port) == []


def test_server_backlog_seen_by_ss() -> None:
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss not installed")
    with _server("--backlog", "17") as (_proc, port):
        res = subprocess.run(
            [ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=TIMEOUT
        )
        fields = res.stdout.split()
        assert fields[0] == "LISTEN" and fields[2] == "17", res.stdout


def test_server_client_data_before_and_after_greeting_no_rst() -> None:
    with _server() as (proc, port):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
            c.sendall(b"x" * 100_000)
            got = c.recv(13, socket.MSG_WAITALL)
            c.sendall(b"y" * 1000)
            c.shutdown(socket.SHUT_WR)
            assert got + _read_to_eof(c) == GREETING
        proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0


def test_server_drain_is_bounded_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that never sends EOF does not pin the one-shot server (run in-process)."""
    import threading

    monkeypatch.setattr(server_mod, "DRAIN_TIMEOUT", 0.3)
    port = _free_port()
    result: list[object] = []
    t = threading.Thread(
        target=lambda: result.append(server_mod.main(["srv", str(port)])), daemon=True
    )
    t.start()
    _wait(lambda: _listen_entries(port), TIMEOUT, "LISTEN")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
        c.sendall(b"chatter")
        start = time.monotonic()
        assert _read_to_eof(c) == GREETING  # FIN right after the greeting
        t.join(timeout=TIMEOUT)
        assert not t.is_alive() and result == [0]
        assert 0.2 < time.monotonic() - start < 5.0
    assert _listen_entries(port) == []


def test_server_bind_error() -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        start = time.monotonic()
        res = subprocess.run(
            [*SERVER_CMD, str(port)], cwd=ROOT, capture_output=True, timeout=TIMEOUT
        )
        assert time.monotonic() - start < 2.0
        assert (res.returncode, res.stdout, res.stderr) == (1, b"", b"bind() error\n")


def test_server_usage_and_bad_port_subprocess() -> None:
    res = subprocess.run([*SERVER_CMD], cwd=ROOT, capture_output=True, timeout=TIMEOUT)
    assert (
        res.returncode == 1
        and res.stdout.startswith(b"Usage : ")
        and res.stdout.endswith(b" <port>\n")
    )
    assert res.stderr == b""
    res = subprocess.run([*SERVER_CMD, "12ab"], cwd=ROOT, capture_output=True, timeout=TIMEOUT)
    assert res.returncode == 1 and res.stdout == b"" and b"port" in res.stderr


def test_server_sigterm_ends_it() -> None:
    with _server() as (proc, port):
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=TIMEOUT)
        assert proc.returncode == -signal.SIGTERM
        assert _listen_entries(port) == []


def test_server_restarts_during_time_wait() -> None:
    port = _free_port()
    for _ in range(2):  # the server closes actively: TIME_WAIT on its side
        with _server(port=port) as (proc, _):
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
                assert _read_to_eof(c) == GREETING
            proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0


def test_server_ipv6_dual_stack() -> None:
    if not socket.has_ipv6 or not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    with _server("--ipv6") as (proc, port):
        assert [e[0] for e in _listen_entries(port)] == ["tcp6"]
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:  # v4-mapped
            assert _read_to_eof(c) == GREETING
        proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_unix_server_and_client_end_to_end() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "hello.sock")
        # a stale socket file from an earlier run is replaced
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(path)
        with _spawn([*SERVER_CMD, "--unix", path]) as srv:
            _wait(lambda: _unix_listening(path), TIMEOUT, "unix LISTEN", srv)
            res = subprocess.run(
                [*CLIENT_CMD, "--unix", path], cwd=ROOT, capture_output=True, timeout=TIMEOUT
            )
            assert (res.returncode, res.stdout, res.stderr) == (0, MESSAGE, b"")
            srv.wait(timeout=TIMEOUT)
            assert srv.returncode == 0
        assert not os.path.exists(path)


def test_unix_server_refuses_a_live_path_and_a_regular_file() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "live.sock")
        with socket.socket(socket.AF_UNIX) as live:
            live.bind(path)
            live.listen(1)
            res = subprocess.run(
                [*SERVER_CMD, "--unix", path], cwd=ROOT, capture_output=True, timeout=TIMEOUT
            )
            assert (res.returncode, res.stderr) == (1, b"bind() error\n")
            assert os.path.exists(path)
        plain = os.path.join(d, "plain")
        Path(plain).write_text("keep me")
        res = subprocess.run(
            [*SERVER_CMD, "--unix", plain], cwd=ROOT, capture_output=True, timeout=TIMEOUT
        )
        assert (res.returncode, res.stderr) == (1, b"bind() error\n")
        assert Path(plain).read_text() == "keep me"


def test_unix_server_sigterm_removes_the_path() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.sock")
        with _spawn([*SERVER_CMD, "--unix", path]) as srv:
            _wait(lambda: _unix_listening(path), TIMEOUT, "unix LISTEN", srv)
            srv.send_signal(signal.SIGTERM)
            srv.wait(timeout=TIMEOUT)
            assert srv.returncode == -signal.SIGTERM
        assert not os.path.exists(path)


def _unix_listening(path: str) -> bool:
    with open("/proc/net/unix") as f:
        return any(
            line.split()[-1] == path and int(line.split()[3], 16) & 0x10000
            for line in list(f)[1:]
            if len(line.split()) == 8
        )


# ---------------------------------------------------------------- client vs in-test server


@contextlib.contextmanager
def _listener(family: int = socket.AF_INET, host: str = "127.0.0.1") -> Iterator[socket.socket]:
    with socket.socket(family) as s:
        s.bind((host, 0))
        s.listen(5)
        s.settimeout(TIMEOUT)
        yield s


def _client(host: str, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLIENT_CMD, host, str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _client_against(serve: Callable[[socket.socket, Any], None],
                    family: int = socket.AF_INET, host: str = "127.0.0.1"
                    ) -> tuple[int | None, bytes, bytes]:
    """Run the reference client against a listener whose one connection `serve`
    handles; returns (exit status, stdout, stderr).  The client is killed on any
    failure."""
    with _listener(family, host) as lst:
        proc = _client(host, lst.getsockname()[1])
        try:
            conn, peer = lst.accept()
            with conn:
                serve(conn, peer)
            out, err = proc.communicate(timeout=TIMEOUT)
            return proc.returncode, out, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_client_prints_a_greeting_sent_one_byte_at_a_time() -> None:
    def one_byte_segments(conn: socket.socket, peer: Any) -> None:
        assert peer[0] == "127.0.0.1"
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(13):
            conn.sendall(GREETING[i : i + 1])
            time.sleep(0.01)
        conn.settimeout(TIMEOUT)
        # the client sends nothing and closes after the 13th byte (FIN)
        assert conn.recv(100) == b""

    assert _client_against(one_byte_segments) == (0, MESSAGE, b"")


@pytest.mark.parametrize("sent", [b"", b"Hello", GREETING[:12], GREETING + b"extra"])
def test_client_short_or_long_greeting_is_a_read_error(sent: bytes) -> None:
    def send_then_fin(conn: socket.socket, peer: Any) -> None:
        if sent:
            conn.sendall(sent)
        conn.shutdown(socket.SHUT_WR)

    assert _client_against(send_then_fin) == (1, b"", b"read() error!\n")


def test_client_reset_before_greeting_is_a_read_error() -> None:
    def partial_then_rst(conn: socket.socket, peer: Any) -> None:
        conn.sendall(b"Hel")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # RST

    assert _client_against(partial_then_rst) == (1, b"", b"read() error!\n")


def test_client_connection_refused() -> None:
    port = _free_port()
    res = subprocess.run(
        [*CLIENT_CMD, "127.0.0.1", str(port)], cwd=ROOT, capture_output=True, timeout=TIMEOUT
    )
    assert (res.returncode, res.stdout, res.stderr) == (1, b"", b"connect() error!\n")


def test_client_ipv6() -> None:
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    result = _client_against(lambda conn, peer: conn.sendall(GREETING), socket.AF_INET6, "::1")
    assert result == (0, MESSAGE, b"")


def test_client_against_reference_server() -> None:
    with _server() as (srv, port):
        res = subprocess.run(
            [*CLIENT_CMD, "127.0.0.1", str(port)], cwd=ROOT, capture_output=True, timeout=TIMEOUT
        )
        assert (res.returncode, res.stdout, res.stderr) == (0, MESSAGE, b"")
        srv.communicate(timeout=TIMEOUT)
        assert srv.returncode == 0


# ---------------------------------------------------------------- fault injection (strace)


def _strace() -> str:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    probe = subprocess.run(
        [strace, "-o", "/dev/null", "true"], capture_output=True, timeout=TIMEOUT
    )
    if probe.returncode != 0:
        pytest.skip("ptrace not permitted here")
    return strace


def test_client_retries_an_interrupted_connect() -> None:
    strace = _strace()
    with _server() as (srv, port):
        res = subprocess.run(
            [
                strace,
                "-f",
                "-o",
                "/dev/null",
                "-e",
                "inject=connect:error=EINTR:when=1",
                *CLIENT_CMD,
                "127.0.0.1",
                str(port),
            ],
            cwd=ROOT,
            capture_output=True,
            timeout=TIMEOUT,
        )
        assert (res.returncode, res.stdout) == (0, MESSAGE), res.stderr
        srv.communicate(timeout=TIMEOUT)
        assert srv.returncode == 0


@pytest.mark.parametrize(
    "call,message",
    [
        ("socket", b"socket() error\n"),
        ("accept4", b"accept() error\n"),
        ("listen", b"listen() error\n"),
        ("bind", b"bind() error\n"),
        ("setsockopt", b"setsockopt() error\n"),
    ],
)
def test_server_reports_injected_failures(call: str, message: bytes) -> None:
    strace = _strace()
    port = _free_port()
    res = subprocess.run(
        [
            strace,
            "-f",
            "-o",
            "/dev/null",
            "-e",
            f"inject={call}:error=EMFILE:when=1",
            *SERVER_CMD,
            str(port),
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert (res.returncode, res.stdout, res.stderr) == (1, b"", message)


def _traced_server(strace: str, *extra: str) -> list[tuple[str, str, str]]:
    """Run the server under strace, serve one client; (call, first argument, result)."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "trace")
        cmd = [strace, "-o", log, "-e", "trace=%network,close", *SERVER_CMD, str(port), *extra]
        with _spawn(cmd) as srv:
            _wait(lambda: _listen_entries(port), TIMEOUT, "LISTEN", srv)
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
                assert _read_to_eof(c) == GREETING
            srv.wait(timeout=TIMEOUT)
            assert srv.returncode == 0
        text = Path(log).read_text()
    calls = []
    for line in text.splitlines():
        m = re.match(r"^(\w+)\(([^,)]*)", line)
        if m and " = " in line:
            calls.append((m.group(1), m.group(2), line.rsplit(" = ", 1)[1].split()[0]))
    return calls


def _lifecycle(calls: list[tuple[str, str, str]]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The calls on the listener (L) and the connection (C), from the server's socket()."""
    start = next(i for i, c in enumerate(calls) if c[0] == "socket" and c[1] == "AF_INET")
    fd_l = calls[start][2]
    fd_c = next(c[2] for c in calls[start:] if c[0] == "accept4")
    seq = ["socket/L"]
    for name, fd, _res in calls[start + 1 :]:
        if fd in (fd_l, fd_c):
            seq.append(f"{name}/{'L' if fd == fd_l else 'C'}")
    return seq, calls[start:]


def test_server_lifecycle_trace() -> None:
    strace = _strace()
    seq, _ = _lifecycle(_traced_server(strace))
    # getsockname on the new connection comes from CPython's socket(fileno=fd)
    seq = [s for s in seq if s != "getsockname/C"]
    assert seq[:5] == ["socket/L", "setsockopt/L", "bind/L", "listen/L", "accept4/L"]
    assert seq[5:7] == ["sendto/C", "shutdown/C"]
    assert seq[-2:] == ["close/C", "close/L"]
    assert set(seq[7:-2]) == {"recvfrom/C"}


def test_server_options_trace() -> None:
    strace = _strace()
    seq, calls = _lifecycle(
        _traced_server(strace, "--linger", "0", "--keepalive", "5", "2", "3", "--rcvbuf", "65536")
    )
    seq = [s for s in seq if s != "getsockname/C"]
    assert seq[:8] == ["socket/L"] + ["setsockopt/L"] * 7
    assert seq[8:11] == ["bind/L", "listen/L", "accept4/L"]
    assert seq[11:16] == ["setsockopt/C"] * 5  # linger + keepalive again on the connection
    assert seq[16:18] == ["sendto/C", "shutdown/C"]
    assert seq[-2:] == ["close/C", "close/L"]
