"""conformance.harness.readiness: passive LISTEN detection, against real processes.

Nothing here may connect before wait_listening returns: the one-shot test proves it
(the server's only accept() is still there for the client that follows).  Detection
latency is measured from the server's own CLOCK_MONOTONIC stamp taken just before
listen(); CPU cost from /proc/thread-self/schedstat (exact runtime, not ticks).
"""

from __future__ import annotations

import importlib.util
import random
import shutil
import socket
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conformance.harness.readiness import Listener, NotReady, wait_listening


def _sibling(name: str) -> ModuleType:
    """The helpers of test_inspect.py (C server, spawning), loaded by path so that
    this works under every pytest import mode."""
    spec = importlib.util.spec_from_file_location(
        f"_readiness_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


H = _sibling("test_inspect")
spawn, free_port, WAIT, recv_all = H.spawn, H.free_port, H.WAIT, H.recv_all
csrv = H.csrv  # the compiled C server (module fixture)


def wait(
    proc: Any,
    *,
    transport: str,
    port: int | None = None,
    path: str | None = None,
    timeout: float,
) -> Listener:
    """wait_listening on a spawned helper process (test_inspect.Proc)."""
    return wait_listening(
        proc.pid,
        transport=transport,
        port=port,
        path=path,
        timeout=timeout,
        exited=proc.p.poll,
        stderr_tail=proc.stderr_tail,
    )


PY_SERVER = """
import socket, sys, time
port, delay, oneshot = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1"
s = socket.socket()
s.bind(("0.0.0.0", port))
time.sleep(delay)
s.listen(5)
print("listening", flush=True)
if oneshot:
    c, _ = s.accept()
    print("accepted", flush=True)
    c.sendall(b"Hello World!\\0")
    c.close()
    s.close()
    sys.exit(0)
time.sleep(60)
"""


# --------------------------------------------------------------------------- detection


def test_detects_listener_whenever_it_starts(csrv: Path) -> None:
    """Listen at random moments after start; the listener found is that one.
    (How fast detection follows is measured in bench/readiness.py, not here.)"""
    rng = random.Random(1)
    for _ in range(8):
        port = free_port()
        delay_us = rng.randint(0, 150_000)
        with spawn([str(csrv), "-w", str(delay_us), str(port)]) as srv:
            got = wait(srv, transport="tcp4", port=port, timeout=WAIT)
            seen = time.monotonic()
            t_listen, fd = srv.stamp("listen")
            assert got.pid == srv.pid and got.fd == fd and got.entry.fd == fd
            assert got.entry.local == ("0.0.0.0", port) and got.entry.state == "LISTEN"
            assert 0 <= got.elapsed_s <= WAIT
            assert seen >= t_listen  # found after listen(), never before


def test_python_server_detected_and_elapsed_counts_from_the_call() -> None:
    port = free_port()
    with spawn([sys.executable, "-c", PY_SERVER, str(port), "0.2", "0"]) as srv:
        t0 = time.monotonic()
        got = wait(srv, transport="tcp4", port=port, timeout=WAIT)
        waited = time.monotonic() - t0
        # Counted from the call: at least the server's 0.2 s delay (less the time it
        # had already run), and never more than the call took.
        assert 0.15 < got.elapsed_s <= waited
        assert srv.line() == "listening"


def test_one_shot_server_still_serves_its_only_client(csrv: Path) -> None:
    """No probe connection: the one-shot server's single accept() is ours."""
    port = free_port()
    with spawn([str(csrv), "-m", "1", str(port)]) as srv:
        wait(srv, transport="tcp4", port=port, timeout=WAIT)
        assert srv.p.poll() is None, "the server already served someone"
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
            assert recv_all(c) == b"Hello World!\0"
        assert srv.wait() == 0
        assert srv.line().startswith("listen ")
        assert srv.line().startswith("accepted ")
        rest = srv.p.stdout.read()
        assert rest == b"", f"more than one accept: {rest!r}"


def test_one_shot_python_server_no_compiler_needed() -> None:
    port = free_port()
    with spawn([sys.executable, "-c", PY_SERVER, str(port), "0.05", "1"]) as srv:
        wait(srv, transport="tcp4", port=port, timeout=WAIT)
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
            assert recv_all(c) == b"Hello World!\0"
        assert srv.wait() == 0
        assert srv.line() == "listening" and srv.line() == "accepted"


# --------------------------------------------------------------------------- failing fast


def test_exit_before_listening_is_reported_at_once_with_stderr() -> None:
    with spawn(["sh", "-c", "echo 'bind() error' >&2; exit 3"]) as p:
        t0 = time.monotonic()
        with pytest.raises(NotReady) as err:
            wait(p, transport="tcp4", port=free_port(), timeout=10.0)
        assert time.monotonic() - t0 < 2.0
    assert err.value.reason == "exited with status 3 before listening"
    assert "bind() error" in err.value.detail and "exit status: 3" in err.value.detail
    assert "bind() error" in str(err.value)


def test_killed_by_a_signal_before_listening() -> None:
    with spawn(["sh", "-c", "kill -SEGV $$"]) as p:
        with pytest.raises(NotReady) as err:
            wait(p, transport="tcp4", port=free_port(), timeout=10.0)
    assert err.value.reason == "killed by SIGSEGV before listening"


def test_server_that_listens_and_exits_at_once(csrv: Path) -> None:
    """A listener that is already gone does not count; the exit is reported."""
    port = free_port()
    with spawn([str(csrv), "-m", "9", str(port)]) as srv:
        srv.wait()
        with pytest.raises(NotReady) as err:
            wait(srv, transport="tcp4", port=port, timeout=WAIT)
    assert err.value.reason == "exited with status 0 before listening"


def test_listening_on_another_port_is_named(csrv: Path) -> None:
    port, other = free_port(), free_port()
    with spawn([str(csrv), "-a", "127.0.0.1", str(other)]) as srv:
        t0 = time.monotonic()
        with pytest.raises(NotReady) as err:
            wait(srv, transport="tcp4", port=port, timeout=0.5)
        assert 0.5 <= time.monotonic() - t0 < 3.0
    assert err.value.reason == f"listens on 127.0.0.1:{other}, not on port {port}"
    assert f"tcp4 LISTEN 127.0.0.1:{other}" in err.value.detail


def test_not_listening_at_all_times_out() -> None:
    port = free_port()
    with spawn(["sleep", "30"]) as p:
        t0 = time.monotonic()
        with pytest.raises(NotReady) as err:
            wait(p, transport="tcp4", port=port, timeout=0.3)
        assert 0.3 <= time.monotonic() - t0 < 2.0
    assert err.value.reason == f"not listening on port {port} after 0.3 s"


def test_bound_but_never_listening(csrv: Path) -> None:
    port = free_port()
    with spawn([str(csrv), "-w", "30000000", str(port)]) as srv:  # bind, then sleep 30 s
        with pytest.raises(NotReady) as err:
            wait(srv, transport="tcp4", port=port, timeout=0.3)
    assert err.value.reason == f"not listening on port {port} after 0.3 s"


def test_argument_validation() -> None:
    with pytest.raises(ValueError):
        wait_listening(1, transport="sctp", port=1, timeout=0.1, exited=lambda: None)
    with pytest.raises(ValueError):
        wait_listening(1, transport="tcp4", timeout=0.1, exited=lambda: None)
    with pytest.raises(ValueError):
        wait_listening(1, transport="unix", timeout=0.1, exited=lambda: None)


# --------------------------------------------------------------------------- transports


def test_tcp6_dual_stack_counts_for_tcp4_and_tcp6(csrv: Path) -> None:
    port = free_port(socket.AF_INET6)
    with spawn([str(csrv), "-6", str(port)]) as srv:
        got = wait(srv, transport="tcp4", port=port, timeout=WAIT)
        assert (got.entry.kind, got.entry.local, got.entry.v6only) == ("tcp6", ("::", port), False)
        got6 = wait(srv, transport="tcp6", port=port, timeout=WAIT)
        assert got6.entry.inode == got.entry.inode


def test_v6only_listener_is_not_ready_for_tcp4(csrv: Path) -> None:
    port = free_port(socket.AF_INET6)
    with spawn([str(csrv), "-6", "-V", str(port)]) as srv:
        got = wait(srv, transport="tcp6", port=port, timeout=WAIT)
        assert got.entry.v6only is True
        with pytest.raises(NotReady) as err:
            wait(srv, transport="tcp4", port=port, timeout=0.2)
    assert err.value.reason == f"listens on [::]:{port} (IPv6 only), not on IPv4 port {port}"


def test_ipv4_listener_is_not_ready_for_tcp6(csrv: Path) -> None:
    port = free_port()
    with spawn([str(csrv), str(port)]) as srv:
        wait(srv, transport="tcp4", port=port, timeout=WAIT)
        with pytest.raises(NotReady) as err:
            wait(srv, transport="tcp6", port=port, timeout=0.2)
    assert err.value.reason == f"listens on 0.0.0.0:{port}, not on IPv6 port {port}"


def test_unix_listener_absolute_and_relative_path(csrv: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "srv.sock")
    with spawn([str(csrv), "-u", path]) as srv:
        got = wait(srv, transport="unix", path=path, timeout=WAIT)
        assert (got.entry.kind, got.entry.local, got.entry.state) == ("unix", path, "LISTEN")
    # bound with a path relative to the server's working directory
    with spawn([str(csrv), "-u", "rel.sock"], cwd=str(tmp_path)) as srv:
        got = wait(srv, transport="unix", path=str(tmp_path / "rel.sock"), timeout=WAIT)
        assert got.entry.local == "rel.sock"
        with pytest.raises(NotReady) as err:
            wait(srv, transport="unix", path=str(tmp_path / "other.sock"), timeout=0.2)
    assert err.value.reason == f"listens on unix:rel.sock, not on {tmp_path / 'other.sock'}"


def test_udp4_bound_socket(csrv: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with spawn([str(csrv), "-U", str(port)]) as srv:
        got = wait(srv, transport="udp4", port=port, timeout=WAIT)
        assert (got.entry.kind, got.entry.state, got.entry.local) == (
            "udp4",
            "UNCONN",
            ("0.0.0.0", port),
        )


# --------------------------------------------------------------------------- wrapped targets


def test_wrapped_in_a_shell(csrv: Path) -> None:
    port = free_port()
    with spawn(["sh", "-c", 'sleep 0.05; "$0" "$@"; exit $?', str(csrv), str(port)]) as sh:
        got = wait(sh, transport="tcp4", port=port, timeout=WAIT)
        assert got.pid != sh.pid and got.entry.port == port


def test_wrapped_in_strace(csrv: Path) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace not installed")
    port = free_port()
    with spawn(["strace", "-f", "-o", "/dev/null", str(csrv), "-m", "1", str(port)]) as st:
        try:
            got = wait(st, transport="tcp4", port=port, timeout=WAIT)
        except NotReady as e:
            if "ptrace" in e.detail or "Operation not permitted" in e.detail:
                pytest.skip(f"strace cannot trace here: {e.detail}")
            raise
        assert got.pid != st.pid
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
            assert recv_all(c) == b"Hello World!\0"
        assert st.wait() == 0


def test_server_in_another_network_namespace(csrv: Path) -> None:
    if not H._unshare_ok():
        pytest.skip("cannot create a network namespace here (unshare -n)")
    port = free_port()
    with spawn(["unshare", "-n", str(csrv), str(port)]) as srv:
        got = wait(srv, transport="tcp4", port=port, timeout=WAIT)
        assert got.entry.local == ("0.0.0.0", port)


