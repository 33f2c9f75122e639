"""A pytest plugin (`-p breakdown_probe`, with bench/ on PYTHONPATH) that records where
a `sockconf check` process spends its time, for bench/check_breakdown.py.  Not a
benchmark itself, and never loaded by sockconf on its own.

Every process of the run (the controller and each xdist worker) loads it, wraps a
few harness functions with timers and writes `$SOCKCONF_BREAKDOWN_DIR/<pid>.json` at
the end: its own start (from /proc), the session's milestones, and per wrapped
function the number of calls and their summed wall time.  The wrapped functions
nest (start_server includes spawn and wait_listening), so the sums are inclusive
and must not be added up; check_breakdown.py says which is which.  `time.sleep` is
wrapped too and charged to its caller (module:function), which is how fixed waits
show."""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

_T: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # name -> [calls, seconds]
_LOCK = threading.Lock()
_MARKS: dict[str, float] = {}
_REAL_SLEEP = time.sleep


def _add(name: str, dt: float) -> None:
    with _LOCK:
        rec = _T[name]
        rec[0] += 1
        rec[1] += dt


def _mark(name: str) -> None:
    _MARKS.setdefault(name, time.time())


def _timed(owner: Any, attr: str, name: str) -> None:
    original = getattr(owner, attr)
    if getattr(original, "_breakdown", False):
        return

    @functools.wraps(original)
    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            _add(name, time.perf_counter() - t0)

    wrapper._breakdown = True  # type: ignore[attr-defined]
    setattr(owner, attr, wrapper)


def _sleep(seconds: float) -> None:
    f = sys._getframe(1)
    where = f"sleep {Path(f.f_code.co_filename).stem}:{f.f_code.co_name}"
    t0 = time.perf_counter()
    try:
        _REAL_SLEEP(seconds)
    finally:
        _add(where, time.perf_counter() - t0)


def _process_start() -> float:
    """This process's start as a wall-clock time (from /proc/self/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + start_ticks / ticks


def _install() -> None:
    from conformance.harness import capture, netns, process, readiness, testbed
    try:  # (older trees: harness/trace.py)
        from conformance.harness import strace as tracing
    except ImportError:
        from conformance.harness import trace as tracing  # type: ignore[no-redef]

    time.sleep = _sleep
    _timed(netns, "isolate", "netns.isolate (namespace set-up, once per process)")
    _timed(capture.Capture, "start", "Capture.start")
    _timed(capture.Capture, "stop", "Capture.stop (drain + join)")
    _timed(process.Runner, "spawn", "Runner.spawn (fork/exec)")
    _timed(process.Runner, "close", "Runner.close (kill what is left)")
    _timed(process.Proc, "wait", "Proc.wait")
    _timed(process.Proc, "wait_group", "Proc.wait_group")
    _timed(process.Proc, "kill", "Proc.kill")
    _timed(readiness, "wait_listening", "readiness.wait_listening")
    _timed(testbed, "wait_listening", "readiness.wait_listening")
    _timed(testbed.Testbed, "__post_init__", "Testbed() (per check: capture start)")
    _timed(testbed.Testbed, "close", "Testbed.close (per check)")
    _timed(testbed.Testbed, "start_server", "Testbed.start_server (spawn + ready)")
    _timed(testbed.Testbed, "run", "Testbed.run (a program to its end)")
    _timed(testbed.Testbed, "attach_trace", "Testbed.attach_trace (strace -p)")
    _timed(tracing, "strace_path", "strace.strace_path (strace probe)")


_PHASES: dict[str, float] = defaultdict(float)


def pytest_configure(config: Any) -> None:
    _mark("configure")
    _install()


def pytest_sessionstart(session: Any) -> None:
    _mark("sessionstart")


def pytest_collection_finish(session: Any) -> None:
    _mark("collection_finish")


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _mark("first_test_start")


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    _MARKS["last_test_end"] = time.time()


def pytest_runtest_logreport(report: Any) -> None:
    if getattr(report, "when", None) in ("setup", "call", "teardown"):
        _PHASES[report.when] += report.duration
        if report.when == "call":
            _PHASES["checks"] += 1


def pytest_sessionfinish(session: Any) -> None:
    _MARKS["sessionfinish"] = time.time()
    if os.environ.get("SOCKCONF_BREAKDOWN_STACKS"):
        import faulthandler
        faulthandler.dump_traceback_later(float(os.environ["SOCKCONF_BREAKDOWN_STACKS"]),
                                          file=open(f"/tmp/speedrun/stack-{os.getpid()}.txt", "w"))


def pytest_unconfigure(config: Any) -> None:
    out = os.environ.get("SOCKCONF_BREAKDOWN_DIR")
    if not out:
        return
    _MARKS["unconfigure"] = time.time()
    doc = {
        "pid": os.getpid(),
        "worker": getattr(config, "workerinput", {}).get("workerid"),
        "process_start": _process_start(),
        "marks": _MARKS,
        "phases": dict(_PHASES),
        "timers": {k: v for k, v in _T.items()},
    }
    Path(out, f"{os.getpid()}.json").write_text(json.dumps(doc, indent=1))
