"""The process runner: own process group, output to files, rlimits, no survivors."""

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


def test_rlimits_apply_from_the_start(tmp_path: Path) -> None:
    r = Runner(tmp_path)
    try:
        p = r.spawn([sys.executable, "-c", "import resource;"
                     "print(resource.getrlimit(resource.RLIMIT_NOFILE))"],
                    rlimits={"nofile": (32, 64)})
        assert p.wait(10) == 0
        assert p.stdout().strip() == b"(32, 64)"
    finally:
        r.close()


def test_target_dies_with_a_killed_test_process(tmp_path: Path) -> None:
    if not process._PDEATH_PREFIX:
        pytest.skip("setpriv (util-linux) not installed: no pdeathsig guard")
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r});"
            "from pathlib import Path; from conformance.harness.process import Runner;"
            f"p = Runner(Path({str(tmp_path)!r})).spawn(['sleep', '60']); print(p.pid, flush=True);"
            "import time; time.sleep(60)")
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
