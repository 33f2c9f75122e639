"""The process runner: own process group, output to files, signals to the group, no survivors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.harness import process
from conformance.harness.process import Runner


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def test_output_status_and_group(tmp_path: Path) -> None:
    r = Runner(tmp_path)
    try:
        p = r.spawn([sys.executable, "-c", "import os,sys; print(os.getpgrp()); "
                     "sys.stderr.write('err\\n'); sys.exit(3)"], name="t")
        assert p.wait(10) == 3
        assert p.stdout().strip() == str(p.pid).encode()  # its own process group
        assert p.stderr() == b"err\n" and p.status() == "exit status 3"
    finally:
        r.close()


def test_close_kills_the_whole_group(tmp_path: Path) -> None:
    r = Runner(tmp_path)
    p = r.spawn(["sh", "-c", "sleep 60 & echo $!; wait"])
    deadline = time.monotonic() + 10
    while not p.stdout().strip() and time.monotonic() < deadline:
        time.sleep(0.01)
    child = int(p.stdout().strip())
    r.close()
    assert not _alive(p.pid) and not _alive(child)
    assert p.status() == "killed by SIGKILL"


def _launcher(tmp_path: Path, trap: str = "") -> list[str]:
    """A launcher that does not exec: a shell that starts `sleep` and waits for it
    (printing the child's pid), optionally with a trap of its own."""
    return ["sh", "-c", f"{trap} sleep 60 & echo $!; wait $!; exit $?"]


def _child_of(p: process.Proc) -> int:
    deadline = time.monotonic() + 10
    while not p.stdout().strip() and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(p.stdout().strip())


def test_a_signal_reaches_what_a_launcher_started(tmp_path: Path) -> None:
    """SIGTERM to the group, as a service manager sends it: the launcher's child
    gets it too, and wait_group() returns only once both have ended."""
    r = Runner(tmp_path)
    try:
        p = r.spawn(_launcher(tmp_path))
        child = _child_of(p)
        assert p.group_alive() and child in p.group_alive()
        p.signal(signal.SIGTERM)
        assert p.wait_group(10) == -signal.SIGTERM
        assert not _alive(child) and p.group_alive() == []
    finally:
        r.close()


def test_wait_group_waits_for_the_whole_group(tmp_path: Path) -> None:
    """A launcher that ends while what it started still runs has not ended as a
    service: wait_group() says so (None) until the rest of the group is gone."""
    r = Runner(tmp_path)
    try:
        # The launcher ignores SIGTERM's default: it exits at once, its child (which
        # ignores SIGTERM) lives on.
        p = r.spawn(["sh", "-c", "trap '' TERM; sleep 60 & echo $!; trap 'exit 0' USR1; "
                     "wait $!"])
        child = _child_of(p)
        p.signal(signal.SIGUSR1)  # ends the launcher; `sleep` dies of SIGUSR1 too
        assert p.wait_group(10) is not None
        assert not _alive(child)
        # The child says its pid once it ignores SIGUSR1 (the signal must not race
        # the trap).
        q = r.spawn(["sh", "-c", "sh -c 'trap \"\" USR1; echo $$; exec sleep 60' & "
                     "trap 'exit 0' USR1; while :; do sleep 0.01; done"])
        orphan = _child_of(q)
        q.signal(signal.SIGUSR1)  # the launcher exits, the sleep ignores it and stays
        assert q.wait(10) == 0
        assert q.wait_group(0.2) is None and _alive(orphan)
        assert orphan in q.group_alive()
    finally:
        r.close()
    assert not _alive(orphan)


def test_unreadable_output_is_an_error(tmp_path: Path) -> None:
    """The suite's trouble (its output file gone) raises: it is never read as
    "the program printed nothing"."""
    r = Runner(tmp_path)
    try:
        p = r.spawn(["true"])
        assert p.wait(10) == 0
        p.stdout_path.unlink()
        with pytest.raises(FileNotFoundError):
            p.stdout()
    finally:
        r.close()


def test_target_dies_with_a_killed_test_process(tmp_path: Path) -> None:
    if not process._PDEATH_PREFIX:
        pytest.skip("setpriv (util-linux) not installed: no pdeathsig guard")
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r});"
            "from pathlib import Path; from conformance.harness.process import Runner;"
            f"p = Runner(Path({str(tmp_path)!r})).spawn(['sleep', '60']);"
            # setpriv sets the pdeathsig after the fork: killed before that, we would
            # test the race, not the guard.  Tell the pid once sleep runs.
            "import os, time\n"
            "while not os.readlink(f'/proc/{p.pid}/exe').endswith('/sleep'): time.sleep(0.005)\n"
            "print(p.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        target = int(parent.stdout.readline())
        assert _alive(target)
        parent.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel can help
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(target) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(target)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
