"""conformance.harness.netns: a private network namespace per test process.

Every check that changes namespaces runs in a fresh subprocess (the test process itself
is never moved by these tests); the non-root path is exercised for real as user
`nobody` (setpriv), with a stand-alone copy of netns.py in a world-readable directory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.harness import netns

REPO = Path(__file__).resolve().parents[2]
NETNS_PY = REPO / "conformance" / "harness" / "netns.py"
NOBODY = 65534

# --------------------------------------------------------------------------- helpers

# Runs inside the child process: list TCP sockets via sock_diag (NETLINK_SOCK_DIAG).
SOCK_DIAG = r'''
import socket, struct
def sock_diag_tcp_ports():
    """Local ports of every TCP socket (v4 and v6, all states) in this netns."""
    ports = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4)  # NETLINK_SOCK_DIAG
        try:
            req = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, 0xFFFFFFFF) + bytes(48)
            hdr = struct.pack("=IHHII", 16 + len(req), 20, 0x301, 1, 0)  # BY_FAMILY, DUMP
            nl.sendto(hdr + req, (0, 0))
            done = False
            while not done:
                data = nl.recv(1 << 16)
                off = 0
                while off + 16 <= len(data):
                    length, mtype = struct.unpack_from("=IH", data, off)
                    if mtype == 3:  # NLMSG_DONE
                        done = True
                        break
                    if mtype == 2:  # NLMSG_ERROR
                        raise OSError("sock_diag error")
                    sport = struct.unpack_from("!H", data, off + 16 + 4)[0]
                    ports.add(sport)
                    off += (length + 3) & ~3
        finally:
            nl.close()
    return sorted(ports)

def proc_net_tcp_ports(path="/proc/self/net"):
    ports = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = open(f"{path}/{name}").read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            ports.add(int(line.split()[1].rsplit(":", 1)[1], 16))
    return sorted(ports)
'''


def _run_root_script(body: str, *args: str, timeout: float = 60) -> dict:
    """Run `body` in a fresh interpreter (as the current user); it prints one JSON line."""
    script = SOCK_DIAG + "\n" + textwrap.dedent(body)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _nobody_python() -> str | None:
    """An interpreter (>= 3.10) that user nobody may execute (pyenv's lives under /root)."""
    for cand in ("/usr/bin/python3.11", "/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(cand):
            continue
        r = subprocess.run(
            [*_SETPRIV, cand, "-c", "import sys; print(sys.version_info >= (3, 10))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if r.returncode == 0 and r.stdout.strip() == "True":
            return cand
    return None


_SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture(scope="module")
def nobody_python() -> str:
    if os.geteuid() != 0:
        pytest.skip("switching to user nobody needs root")
    if netns.in_user_namespace():
        pytest.skip("running inside a user namespace: user nobody cannot be switched to")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    py = _nobody_python()
    if py is None:
        pytest.skip("no Python >= 3.10 executable by user nobody")
    return py


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A world-readable scratch directory holding a stand-alone copy of netns.py."""
    d = Path(tempfile.mkdtemp(prefix="sockconf-nobody-", dir="/tmp"))
    try:
        d.chmod(0o755)
        shutil.copy(NETNS_PY, d / "netns.py")
        (d / "netns.py").chmod(0o644)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _run_as_nobody(py: str, d: Path, body: str, timeout: float = 60) -> dict:
    script = d / "script.py"
    script.write_text(SOCK_DIAG + "\n" + textwrap.dedent(body))
    script.chmod(0o644)
    proc = subprocess.run(
        [*_SETPRIV, py, "-E", "-s", str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=d,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
    )
    assert proc.returncode == 0, f"child (as nobody) failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _nobody_may_unshare_userns(py: str) -> str | None:
    """None if user nobody may create a user namespace here (checked independently of
    netns.py, with unshare(1)), else the reason."""
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed: cannot tell whether user namespaces are allowed"
    r = subprocess.run(
        [*_SETPRIV, "unshare", "--user", "--map-root-user", "--net", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        return f"unprivileged user namespaces are not allowed here: {r.stderr.strip()}"
    return None


# ----------------------------------------------------------------------- root / auto


def test_isolate_gives_a_private_netns() -> None:
    """After isolate() in the main thread: own netns, lo up, TCP on 127.0.0.1 and ::1,
    /proc/self/net and sock_diag show only this namespace."""
    with socket.socket() as outside:
        # A listener in the parent's namespace that the child must not see.
        outside.bind(("127.0.0.1", 0))
        outside.listen()
        outside_port = outside.getsockname()[1]
        res = _run_root_script(
            """
            import json, os, socket, sys
            from conformance.harness import netns
            outside_port = int(sys.argv[1])
            out = {"before": netns.current() is not None,
                   "host_ino": os.stat("/proc/self/ns/net").st_ino,
                   "saw_outside_before": outside_port in proc_net_tcp_ports()}
            iso = netns.isolate()
            out["iso"] = [iso.kind, iso.wire, iso.reason]
            out["same_again"] = netns.isolate() is iso and netns.isolate("none") is iso
            out["current"] = netns.current() is iso
            out["ino"] = os.stat("/proc/self/ns/net").st_ino
            out["thread_ino"] = os.stat("/proc/thread-self/ns/net").st_ino
            if iso.kind == "host":
                print(json.dumps(out)); sys.exit(0)
            keep, ok = [], {}
            for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                lst = socket.socket(fam); lst.bind((addr, 0)); lst.listen()
                cli = socket.create_connection(lst.getsockname()[:2], timeout=5)
                srv, _ = lst.accept()
                cli.sendall(b"ping"); got = srv.recv(4)
                srv.sendall(b"pong"); back = cli.recv(4)
                ok[addr] = (got, back) == (b"ping", b"pong")
                keep += [lst, cli, srv]
            out["tcp_ok"] = ok
            out["own_ports"] = sorted({s.getsockname()[1] for s in keep})
            out["proc_ports"] = proc_net_tcp_ports()
            out["thread_proc_ports"] = proc_net_tcp_ports("/proc/thread-self/net")
            out["diag_ports"] = sock_diag_tcp_ports()
            print(json.dumps(out))
            """,
            str(outside_port),
        )
    assert res["before"] is False
    assert res["saw_outside_before"], "sanity: the child sees the parent's socket before isolate()"
    kind, wire, reason = res["iso"]
    if kind == "host":
        pytest.skip(f"cannot unshare a network namespace here: {reason}")
    assert kind in ("netns", "userns")
    assert kind == ("userns" if netns.in_user_namespace() else "netns")
    assert res["same_again"] and res["current"]
    assert res["ino"] != res["host_ino"] and res["thread_ino"] == res["ino"]
    assert res["tcp_ok"] == {"127.0.0.1": True, "::1": True}
    own = set(res["own_ports"])
    # Our own sockets are visible (the checks are not vacuous) and nothing else is.
    assert set(res["proc_ports"]) == own, res
    assert set(res["thread_proc_ports"]) == own, res
    assert set(res["diag_ports"]) == own, res
    assert outside_port not in res["proc_ports"] + res["diag_ports"]
    if os.geteuid() == 0 and not netns.in_user_namespace():
        assert wire is True and reason is None


def test_threads_and_subprocesses_inherit_only_after_isolate() -> None:
    """Threads/subprocesses started after isolate() share the new netns; a thread that
    already existed stays behind (unshare moves only the calling thread)."""
    res = _run_root_script(
        """
        import json, os, subprocess, sys, threading
        from conformance.harness import netns
        def ino():
            return os.stat("/proc/thread-self/ns/net").st_ino
        go, seen = threading.Event(), {}
        def early():
            go.wait(10); seen["early"] = ino()
        t_early = threading.Thread(target=early); t_early.start()
        host = ino()
        iso = netns.isolate()
        go.set(); t_early.join()
        t_late = threading.Thread(target=lambda: seen.__setitem__("late", ino()))
        t_late.start(); t_late.join()
        child = subprocess.run([sys.executable, "-c",
            "import os; print(os.stat('/proc/self/ns/net').st_ino)"],
            capture_output=True, text=True, check=True).stdout.strip()
        print(json.dumps({"kind": iso.kind, "reason": iso.reason, "host": host,
                          "main": ino(), "early": seen["early"], "late": seen["late"],
                          "child": int(child)}))
        """
    )
    if res["kind"] == "host":
        pytest.skip(f"cannot unshare a network namespace here: {res['reason']}")
    assert res["main"] != res["host"]
    assert res["late"] == res["main"]
    assert res["child"] == res["main"]
    assert res["early"] == res["host"]


def test_isolate_none_stays_on_host() -> None:
    res = _run_root_script(
        """
        import json, os
        from conformance.harness import netns
        before = os.stat("/proc/self/ns/net").st_ino
        iso = netns.isolate("none")
        print(json.dumps({"iso": [iso.kind, iso.wire, iso.reason],
                          "same": os.stat("/proc/self/ns/net").st_ino == before,
                          "again": netns.isolate("auto") is iso}))
        """
    )
    kind, wire, reason = res["iso"]
    assert kind == "host" and res["same"] and res["again"]
    if wire:
        assert reason is None
    else:
        assert reason


def test_isolate_rejects_bad_mode() -> None:
    with pytest.raises(ValueError, match="auto"):
        netns.isolate("bogus")


def test_isolate_outside_main_thread_is_refused() -> None:
    res = _run_root_script(
        """
        import json, threading
        from conformance.harness import netns
        out = {}
        def run():
            try:
                netns.isolate()
            except RuntimeError as e:
                out["error"] = str(e)
        t = threading.Thread(target=run); t.start(); t.join()
        out["current"] = netns.current() is not None
        print(json.dumps(out))
        """
    )
    assert "main thread" in res.get("error", ""), res
    assert res["current"] is False


def test_enter_user_namespace_is_a_noop_for_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("this case is about root")
    res = _run_root_script(
        """
        import json, os
        from conformance.harness import netns
        before = (os.readlink("/proc/self/ns/user"), os.readlink("/proc/self/ns/net"))
        r = netns.enter_user_namespace()
        after = (os.readlink("/proc/self/ns/user"), os.readlink("/proc/self/ns/net"))
        print(json.dumps({"r": r, "same": before == after}))
        """
    )
    assert res == {"r": False, "same": True}


# ----------------------------------------------------------------------------- nobody


def test_nobody_without_user_namespace_reports_no_cap_net_raw(
    nobody_python: str, nobody_dir: Path
) -> None:
    res = _run_as_nobody(
        nobody_python,
        nobody_dir,
        """
        import json, os, netns
        before = os.stat("/proc/self/ns/net").st_ino
        iso = netns.isolate()
        print(json.dumps({"uid": os.getuid(), "iso": [iso.kind, iso.wire, iso.reason],
                          "same": os.stat("/proc/self/ns/net").st_ino == before}))
        """,
    )
    assert res["uid"] == NOBODY
    assert res["iso"] == ["host", False, netns.NO_CAP_NET_RAW]
    assert res["same"]


def test_nobody_user_namespace_refused_when_multithreaded(
    nobody_python: str, nobody_dir: Path
) -> None:
    res = _run_as_nobody(
        nobody_python,
        nobody_dir,
        """
        import json, os, threading, netns
        stop = threading.Event()
        t = threading.Thread(target=stop.wait); t.start()
        r = netns.enter_user_namespace()
        stop.set(); t.join()
        print(json.dumps({"r": r, "uid": os.getuid()}))
        """,
    )
    assert res == {"r": False, "uid": NOBODY}


def test_nobody_user_namespace_gives_wire_capture(nobody_python: str, nobody_dir: Path) -> None:
    """Non-root for real: enter_user_namespace() (controller) then isolate() -- in the same
    process and in an exec'd child (an xdist worker) -- gives a private netns with lo
    up and CAP_NET_RAW: an AF_PACKET socket on lo sees this process's own packets."""
    why_not = _nobody_may_unshare_userns(nobody_python)
    if why_not:
        pytest.skip(why_not)
    res = _run_as_nobody(
        nobody_python,
        nobody_dir,
        """
        import json, os, socket, subprocess, sys, time, netns
        out = {"uid0": os.getuid()}
        out["entered"] = netns.enter_user_namespace()
        out["uid"], out["gid"] = os.getuid(), os.getgid()
        ns_controller = os.stat("/proc/self/ns/net").st_ino
        # The "worker": an exec'd child that is uid 0 in the user namespace.
        worker = subprocess.run([sys.executable, "-E", "-s", "-c",
            "import json, os, netns; i = netns.isolate(); "
            "print(json.dumps([i.kind, i.wire, i.reason, os.stat('/proc/self/ns/net').st_ino]))"],
            capture_output=True, text=True)
        out["worker"] = json.loads(worker.stdout) if worker.returncode == 0 else worker.stderr
        iso = netns.isolate()
        out["iso"] = [iso.kind, iso.wire, iso.reason]
        out["ns_changed"] = os.stat("/proc/self/ns/net").st_ino != ns_controller
        out["ns_controller"] = ns_controller
        # TCP on both loopback addresses.
        ok = {}
        for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(fam) as lst:
                lst.bind((addr, 0)); lst.listen()
                with socket.create_connection(lst.getsockname()[:2], timeout=5) as cli:
                    srv, _ = lst.accept()
                    cli.sendall(b"x"); ok[addr] = srv.recv(1) == b"x"; srv.close()
        out["tcp_ok"] = ok
        # Raw capture of our own datagram.
        pk = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        pk.bind(("lo", 0x0003))
        pk.settimeout(2)
        marker = b"sockconf-nobody-%d" % os.getpid()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
             socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            rx.bind(("127.0.0.1", 0))
            tx.sendto(marker, rx.getsockname())
            seen = 0
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    frame = pk.recv(65536)
                except socket.timeout:
                    break
                if marker in frame:
                    seen += 1
                    if seen == 2:
                        break
            out["raw_seen"] = seen
        pk.close()
        print(json.dumps(out))
        """,
    )
    assert res["uid0"] == NOBODY
    assert res["entered"] is True, res
    assert (res["uid"], res["gid"]) == (0, 0)
    kind, wire, reason, worker_ino = res["worker"]
    assert (kind, wire, reason) == ("userns", True, None)
    assert worker_ino != res["ns_controller"]
    assert res["iso"] == ["userns", True, None]
    assert res["ns_changed"]
    assert res["tcp_ok"] == {"127.0.0.1": True, "::1": True}
    # lo: the packet tap sees the frame leaving and arriving (no IGNORE_OUTGOING here).
    assert res["raw_seen"] >= 1
