"""Driver tests of the reference JSONDOC server and client (real sockets, real processes).

The server runs as a subprocess in its own session (process group), killed with
SIGKILL in a ``finally``; readiness is read from /proc (never by connecting); ports
come from bind(0); every socket and wait has a timeout.  The command-line parsing
tests at the top run in-process, with socket creation forbidden.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
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
from typing import Any

import pytest

from reference_impl.jsondoc import client as client_mod
from reference_impl.jsondoc import server as server_mod
from reference_impl.jsondoc.protocol import MAX_LINE

ROOT = Path(__file__).resolve().parents[2]
SERVER_CMD = [sys.executable, "-m", "reference_impl.jsondoc.server"]
CLIENT_CMD = [sys.executable, "-m", "reference_impl.jsondoc.client"]
TIMEOUT = 10.0

# =========================================================================== command lines


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("a socket was created")

    monkeypatch.setattr(socket, "socket", forbidden)


@pytest.mark.parametrize(
    "argv",
    [["srv"], ["srv", "1", "2"], ["srv", "--data", "x.db"], ["srv", "--unix", "/tmp/x", "5"]],
)
def test_server_usage(
    argv: list[str], no_sockets: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        server_mod.main(argv)
    assert exc.value.code == 1
    assert capsys.readouterr() == ("Usage : srv <port>\n", "")


@pytest.mark.parametrize(
    "argv",
    [
        ["srv", "0"],
        ["srv", "65536"],
        ["srv", "12ab"],
        ["srv", "-1"],
        ["srv", ""],
        ["srv", "--oobinline", "5000"],  # not an option of this server
        ["srv", "--max-clients", "0", "5000"],
        ["srv", "--data", "", "5000"],
        ["srv", "--data"],
        ["srv", "--unix", "/tmp/x", "--ipv6"],
    ],
)
def test_server_bad_arguments(
    argv: list[str], no_sockets: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        server_mod.main(argv)
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("\n") and err.count("\n") == 1


def test_server_options_parse() -> None:
    config = server_mod.parse_command_line(
        ["srv", "--data", "d.db", "--max-clients", "7", "--linger", "0", "6000"]
    )
    assert (config.port, config.data, config.max_clients) == (6000, "d.db", 7)
    assert config.opts.linger == 0 and config.opts.backlog == server_mod.DEFAULT_BACKLOG
    config = server_mod.parse_command_line(["srv", "--backlog", "5", "--unix", "/tmp/s"])
    assert (config.opts.backlog, config.opts.unix, config.data) == (5, "/tmp/s", None)
    assert config.max_clients == server_mod.DEFAULT_MAX_CLIENTS == 128


@pytest.mark.parametrize(
    "argv", [["cli"], ["cli", "127.0.0.1"], ["cli", "1.2.3.4", "5", "r", "x"], ["cli", "--unix"]]
)
def test_client_usage(
    argv: list[str], no_sockets: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        client_mod.main(argv)
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert (out.startswith("Usage : cli ") and err == "") or (out == "" and err.count("\n") == 1)


@pytest.mark.parametrize("host", ["999.1.1.1", "1.2.3", "example.com"])
def test_client_bad_host(host: str, no_sockets: None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        client_mod.main(["cli", host, "5000"])
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert out == "" and "invalid IP address" in err


def test_client_request_lines() -> None:
    assert client_mod.request_lines(b'{"a":1}\n\n \r\n{"b":2}') == [b'{"a":1}\n', b'{"b":2}\n']
    reader = client_mod.ResponseReader()
    assert reader.feed(b'{"ok":true}\n{"ok"') == [b'{"ok":true}\n']
    assert reader.feed(b":false}\n") == [b'{"ok":false}\n'] and reader.count == 2


# =========================================================================== helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _tcp_listening(port: int) -> bool:
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


def _unix_listening(path: str) -> bool:
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) == 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                return True
    return False


def _wait(
    predicate: Callable[[], object], what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:  # never signal a reaped pid: it may belong to someone else now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=TIMEOUT)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for AF_UNIX socket paths (sun_path holds 107 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="jd-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Server:
    def __init__(
        self, proc: subprocess.Popen[bytes], port: int, path: str | None, errfile: Path
    ) -> None:
        self.proc = proc
        self.port = port
        self.path = path
        self.errfile = errfile

    def connect(self) -> socket.socket:
        if self.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(TIMEOUT)
            sock.connect(self.path)
            return sock
        return socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)

    def stderr(self) -> str:
        return self.errfile.read_text(errors="replace")


@contextlib.contextmanager
def running(
    tmp_path: Path,
    *args: str,
    port: int | None = None,
    unix: str | None = None,
    prefix: tuple[str, ...] = (),
) -> Iterator[Server]:
    port = port or _free_port()
    errfile = tmp_path / f"server-{port}-{time.monotonic_ns()}.err"
    cmd = [*prefix, *SERVER_CMD, *args, *(["--unix", unix] if unix else [str(port)])]
    with open(errfile, "wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
    try:
        if unix:
            _wait(lambda: _unix_listening(unix), f"LISTEN on {unix}", proc)
        else:
            _wait(lambda: _tcp_listening(port), f"LISTEN on {port}", proc)
        yield Server(proc, port, unix, errfile)
    finally:
        _kill_group(proc)


class Lines:
    """Response lines from a socket, with a deadline on every read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def line(self) -> bytes | None:
        """The next line (without newline), or None at EOF."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)  # a reset raises here
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def json(self) -> dict[str, Any]:
        line = self.line()
        assert line is not None, "EOF instead of a response line"
        value: dict[str, Any] = json.loads(line)
        return value

    def to_eof(self) -> bytes:
        data = self.buf
        while chunk := self.sock.recv(65536):
            data += chunk
        self.buf = b""
        return data


def _req(**members: Any) -> bytes:
    return json.dumps(members, separators=(",", ":")).encode() + b"\n"


# =========================================================================== exchanges


@pytest.mark.parametrize("transport", ["tcp4", "unix"])
def test_normal_exchange_ends_with_fin_and_the_server_keeps_serving(
    tmp_path: Path, short_dir: Path, transport: str
) -> None:
    unix = str(short_dir / "s.sock") if transport == "unix" else None
    with running(tmp_path, unix=unix) as srv:
        for _ in range(3):
            with srv.connect() as c:
                c.sendall(b'{"op":"ping","id":1}\n')
                c.shutdown(socket.SHUT_WR)
                assert Lines(c).to_eof() == b'{"ok":true,"id":1}\n'  # then FIN, no RST
        assert srv.proc.poll() is None
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=TIMEOUT) == -signal.SIGTERM
        if unix:
            assert not os.path.exists(unix)  # the socket file is removed at exit
        else:
            assert not _tcp_listening(srv.port)


def test_pipelined_requests_in_one_send(tmp_path: Path) -> None:
    with running(tmp_path) as srv, srv.connect() as c:
        batch = []
        for i in range(300):
            if i % 3 == 0:
                batch.append(_req(op="insert", coll="p", doc={"i": i}, id=i))
            elif i % 3 == 1:
                batch.append(_req(op="count", coll="p", id=i) + b" \t\r\n\n")
            else:
                batch.append(b"not json\n")
        c.sendall(b"".join(batch))
        lines = Lines(c)
        for i in range(300):
            resp = lines.json()
            if i % 3 == 2:
                assert resp["error"] == "bad_json" and "id" not in resp
            else:
                assert resp["ok"] is True and resp["id"] == i
                if i % 3 == 1:
                    assert resp["count"] == i // 3 + 1


def test_requests_split_byte_by_byte(tmp_path: Path) -> None:
    with running(tmp_path) as srv, srv.connect() as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = (
            _req(op="insert", coll="b", doc={"_id": "é"}, id="a")
            + b"\n"
            + _req(op="find", coll="b", id="b")
        )
        for i in range(len(stream)):
            c.send(stream[i : i + 1])
        lines = Lines(c)
        assert lines.json() == {"ok": True, "_id": "é", "id": "a"}
        assert lines.json() == {"ok": True, "docs": [{"_id": "é"}], "id": "b"}


def test_final_unterminated_line_is_answered_at_eof(tmp_path: Path) -> None:
    with running(tmp_path) as srv, srv.connect() as c:
        c.sendall(b'{"op":"ping","id":1}\n{"op":"ping","id":2}')
        c.shutdown(socket.SHUT_WR)
        assert Lines(c).to_eof() == b'{"ok":true,"id":1}\n{"ok":true,"id":2}\n'


def test_forty_concurrent_clients(tmp_path: Path) -> None:
    clients, per_client = 40, 25
    with running(tmp_path, "--data", str(tmp_path / "c.db")) as srv:
        idle = srv.connect()  # connected and silent the whole time: delays nobody
        socks = [srv.connect() for _ in range(clients)]
        start = threading.Barrier(clients, timeout=TIMEOUT)
        ids: list[list[str]] = [[] for _ in range(clients)]
        errors: list[BaseException] = []

        def run(k: int) -> None:
            try:
                start.wait()
                socks[k].sendall(
                    b"".join(
                        _req(op="insert", coll="m", doc={"k": k, "i": i}) for i in range(per_client)
                    )
                )
                lines = Lines(socks[k])
                for _ in range(per_client):
                    resp = lines.json()
                    assert resp["ok"] is True
                    ids[k].append(resp["_id"])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(clients)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(TIMEOUT * 3)
            assert not errors, errors[0]
            flat = [i for per in ids for i in per]
            assert len(flat) == clients * per_client == len(set(flat))
            with srv.connect() as c:
                c.sendall(_req(op="count", coll="m") + _req(op="find", coll="m", filter={"k": 7}))
                lines = Lines(c)
                assert lines.json()["count"] == clients * per_client
                assert [d["i"] for d in lines.json()["docs"]] == list(range(per_client))
        finally:
            for s in [idle, *socks]:
                s.close()


def test_too_large_closes_that_connection_only(tmp_path: Path) -> None:
    with running(tmp_path) as srv, srv.connect() as other, srv.connect() as big:
        others = Lines(other)
        other.sendall(b'{"op":"ping","id":"before"}\n')
        assert others.json() == {"ok": True, "id": "before"}

        # Exactly the limit is fine (blanks are JSON whitespace) and the connection stays.
        head, tail = b'{"op":"ping","id":"max"', b"}"
        exact = head + b" " * (MAX_LINE - len(head) - len(tail)) + tail
        assert len(exact) == MAX_LINE
        big.sendall(exact + b"\n")
        bigs = Lines(big)
        assert bigs.json() == {"ok": True, "id": "max"}

        # One byte more gets too_large, then FIN (the server drains, so no RST).
        def pour() -> None:
            with contextlib.suppress(OSError):
                big.sendall(b"x" * (MAX_LINE + 100_000))
                big.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=pour, daemon=True)
        writer.start()
        resp = bigs.json()
        assert resp["ok"] is False and resp["error"] == "too_large"
        assert bigs.to_eof() == b""
        writer.join(TIMEOUT)

        other.sendall(b'{"op":"ping","id":"after"}\n')
        assert others.json() == {"ok": True, "id": "after"}


def test_max_clients_makes_the_next_client_wait(tmp_path: Path) -> None:
    with running(tmp_path, "--max-clients", "1") as srv:
        first = srv.connect()
        try:
            first.sendall(b'{"op":"ping","id":1}\n')
            assert Lines(first).json() == {"ok": True, "id": 1}
            with srv.connect() as second:  # completes in the backlog, not accepted yet
                second.sendall(b'{"op":"ping","id":2}\n')
                ready, _, _ = select.select([second], [], [], 0.3)
                assert ready == []  # no slot: not served while the first is connected
                first.close()
                assert Lines(second).json() == {"ok": True, "id": 2}
        finally:
            first.close()


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_resets_and_vanishing_clients_leak_nothing(tmp_path: Path) -> None:
    with running(tmp_path) as srv:
        baseline = _fd_count(srv.proc.pid)
        with srv.connect() as c:
            c.sendall(b'{"op":"ping"}\n')
            Lines(c).json()
        _wait(lambda: _fd_count(srv.proc.pid) == baseline, "the first connection to close")
        for i in range(20):
            c = srv.connect()
            c.sendall(b'{"op":"insert","coll":"r","doc":{"i":%d}}\n{"op":"pi' % i)
            if i % 2:  # RST mid-request
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        _wait(lambda: _fd_count(srv.proc.pid) == baseline, "the fd count back to baseline")
        with srv.connect() as c:
            c.sendall(b'{"op":"count","coll":"r"}\n')
            assert Lines(c).json()["ok"] is True
        assert srv.proc.poll() is None


def test_sigterm_with_busy_slots_and_connections(tmp_path: Path) -> None:
    with running(tmp_path, "--max-clients", "1", "--data", str(tmp_path / "t.db")) as srv:
        a = srv.connect()
        b = srv.connect()  # waits in the backlog: the main thread waits for a slot
        try:
            a.sendall(b'{"op":"ping"}\n')
            Lines(a).json()
            srv.proc.send_signal(signal.SIGTERM)
            assert srv.proc.wait(timeout=TIMEOUT) == -signal.SIGTERM
            assert not _tcp_listening(srv.port)
            assert Lines(a).to_eof() == b""  # woken and closed
            assert srv.stderr() == ""
        finally:
            a.close()
            b.close()
    assert not (tmp_path / "t.db-wal").exists()  # the store was closed cleanly


def test_bind_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        res = subprocess.run(
            [*SERVER_CMD, str(port)], cwd=ROOT, capture_output=True, timeout=TIMEOUT
        )
        assert (res.returncode, res.stdout, res.stderr) == (1, b"", b"bind() error\n")


def test_unusable_data_path(tmp_path: Path) -> None:
    port = _free_port()
    res = subprocess.run(
        [*SERVER_CMD, "--data", str(tmp_path / "no-such-dir" / "x.db"), str(port)],
        cwd=ROOT,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert res.returncode == 1 and res.stdout == b"" and b"x.db" in res.stderr
    assert not _tcp_listening(port)


def _strace_works() -> bool:
    strace = shutil.which("strace")
    if strace is None:
        return False
    res = subprocess.run(
        [strace, "-f", "-o", "/dev/null", "true"], capture_output=True, timeout=TIMEOUT
    )
    return res.returncode == 0


def test_accept_errors(tmp_path: Path) -> None:
    if not _strace_works():
        pytest.skip("strace cannot trace here")
    strace = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=accept4"]
    # ECONNABORTED and EINTR (without a signal) are retried: the server goes on serving.
    for errname in ("ECONNABORTED", "EINTR"):
        inject = ("-e", f"inject=accept4:error={errname}:when=1")
        with running(tmp_path, prefix=(*strace, *inject)) as srv, srv.connect() as c:
            c.sendall(b'{"op":"ping","id":1}\n')
            assert Lines(c).json() == {"ok": True, "id": 1}
    # Any other error: "accept() error", exit 1, no listening socket left.
    port = _free_port()
    res = subprocess.run(
        [*strace, "-e", "inject=accept4:error=EMFILE:when=1", *SERVER_CMD, str(port)],
        cwd=ROOT,
        capture_output=True,
        timeout=TIMEOUT,
        start_new_session=True,
    )
    assert (res.returncode, res.stdout, res.stderr) == (1, b"", b"accept() error\n")
    assert not _tcp_listening(port)


# =========================================================================== durability


def _writer(
    srv: Server,
    rnd: int,
    mine: list[str],
    acked: dict[str, dict[str, Any]],
    deleted: set[str],
    lock: threading.Lock,
    progress: threading.Semaphore,
) -> None:
    """Pipelined windows of inserts and deletes of our own acknowledged docs until
    the server dies; records every acknowledgement."""
    rng = random.Random(rnd)
    try:
        sock = srv.connect()
    except OSError:
        return
    lines = Lines(sock)
    n = 0
    try:
        while True:
            reqs: list[dict[str, Any]] = []
            for _ in range(8):
                n += 1
                if mine and rng.random() < 0.2:
                    key = mine.pop(rng.randrange(len(mine)))
                    with lock:
                        acked.pop(key)  # in flight: may or may not be gone after the kill
                    reqs.append({"op": "delete", "coll": "d", "filter": {"_id": key}})
                    continue
                doc: dict[str, Any] = {"r": rnd, "n": n, "s": "x" * rng.randrange(100)}
                if rng.random() < 0.5:
                    doc["_id"] = f"r{rnd}n{n}"
                reqs.append({"op": "insert", "coll": "d", "doc": doc})
            sock.sendall(b"".join(_req(**r) for r in reqs))
            for r in reqs:
                line = lines.line()
                if line is None:
                    return
                resp = json.loads(line)
                assert resp["ok"] is True, resp
                with lock:
                    if r["op"] == "delete":
                        deleted.add(r["filter"]["_id"])
                    else:
                        acked[resp["_id"]] = {**r["doc"], "_id": resp["_id"]}
                        mine.append(resp["_id"])
                progress.release()
    except OSError:
        return  # killed mid-exchange
    finally:
        sock.close()


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    data = str(tmp_path / "durable.db")
    acked: dict[str, dict[str, Any]] = {}
    deleted: set[str] = set()
    lock = threading.Lock()
    for rnd in range(5):
        with running(tmp_path, "--data", data) as srv:
            progress = threading.Semaphore(0)
            with lock:
                mine = list(acked)
            writer = threading.Thread(
                target=_writer,
                args=(srv, rnd, mine, acked, deleted, lock, progress),
                daemon=True,
            )
            writer.start()
            for _ in range(50 + 40 * rnd):  # the kill lands at a different point each round
                assert progress.acquire(timeout=TIMEOUT), "the writer stalled"
            _kill_group(srv.proc)  # SIGKILL while the stream goes on
            writer.join(TIMEOUT)
            assert not writer.is_alive()
        with running(tmp_path, "--data", data) as srv, srv.connect() as c:
            c.sendall(_req(op="find", coll="d"))
            found = {d["_id"]: d for d in Lines(c).json()["docs"]}
            with lock:
                lost = [k for k in acked if found.get(k) != acked[k]]
                back = [k for k in deleted if k in found]
            assert not lost, f"round {rnd}: {len(lost)} acknowledged inserts lost or changed"
            assert not back, f"round {rnd}: {len(back)} acknowledged deletes undone"


# =========================================================================== client


def _client(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLIENT_CMD, *args], cwd=ROOT, input=stdin, capture_output=True, timeout=TIMEOUT * 3
    )


def test_client_argv_request_and_stdin(tmp_path: Path) -> None:
    with running(tmp_path) as srv:
        res = _client("127.0.0.1", str(srv.port), '{"op":"ping","id":1}')
        assert (res.returncode, res.stdout, res.stderr) == (0, b'{"ok":true,"id":1}\n', b"")
        stdin = (
            b'{"op":"insert","coll":"c","doc":{"_id":"a"}}\n\n   \n'
            b'{"op":"insert","coll":"c","doc":{"_id":"a"}}\nnope\n'
            b'{"op":"count","coll":"c","id":9}'  # no final newline
        )
        res = _client("localhost", str(srv.port), stdin=stdin)
        assert res.returncode == 0 and res.stderr == b""
        out = [json.loads(x) for x in res.stdout.splitlines()]
        assert [r.get("error") for r in out] == [None, "duplicate_id", "bad_json", None]
        assert out[0]["_id"] == "a" and out[3] == {"ok": True, "count": 1, "id": 9}
        many = b"".join(_req(op="ping", id=i) for i in range(5000))  # more than the buffers
        res = _client("127.0.0.1", str(srv.port), stdin=many)
        assert res.returncode == 0 and res.stdout.count(b"\n") == 5000
        assert json.loads(res.stdout.splitlines()[-1]) == {"ok": True, "id": 4999}


def test_client_over_unix(tmp_path: Path, short_dir: Path) -> None:
    path = str(short_dir / "u.sock")
    with running(tmp_path, unix=path):
        res = _client("--unix", path, '{"op":"ping","id":"u"}')
        assert (res.returncode, res.stdout, res.stderr) == (0, b'{"ok":true,"id":"u"}\n', b"")


def test_client_connection_refused() -> None:
    port = _free_port()
    res = _client("127.0.0.1", str(port), '{"op":"ping"}')
    assert (res.returncode, res.stdout) == (1, b"")
    assert res.stderr == f"connect() error!: connection refused by 127.0.0.1:{port}\n".encode()


def test_client_server_closes_after_too_large(tmp_path: Path) -> None:
    with running(tmp_path) as srv:
        stdin = b'{"op":"ping","id":1}\n' + b"x" * (MAX_LINE + 1) + b'\n{"op":"ping","id":3}\n'
        res = _client("127.0.0.1", str(srv.port), stdin=stdin)
        out = res.stdout.splitlines()
        assert res.returncode == 1 and len(out) == 2
        assert json.loads(out[1])["error"] == "too_large"
        assert res.stderr == b"read() error!: connection closed by server after 2 of 3 responses\n"


@contextlib.contextmanager
def _fake_server(reset: bool) -> Iterator[int]:
    """Reads one request line, then resets (SO_LINGER 0) or closes without answering."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(TIMEOUT)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                data = b""
                while b"\n" not in data and (chunk := conn.recv(4096)):
                    data += chunk
                if reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield listener.getsockname()[1]
    finally:
        t.join(TIMEOUT)
        listener.close()


@pytest.mark.parametrize(
    ("reset", "message"),
    [
        (True, b"read() error!: connection reset by server\n"),
        (False, b"read() error!: connection closed by server after 0 of 1 responses\n"),
    ],
)
def test_client_server_resets_or_closes_early(reset: bool, message: bytes) -> None:
    with _fake_server(reset) as port:
        res = _client("127.0.0.1", str(port), '{"op":"ping"}')
    assert (res.returncode, res.stdout, res.stderr) == (1, b"", message)
