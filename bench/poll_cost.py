#!/usr/bin/env python3
"""CPU cost of passive LISTEN polling: what `wait_listening` burns while a target
never listens.

Each run waits --wait seconds on a process (`sleep`) that never opens a socket, so
the poller runs for the whole wait; its own thread's CPU time comes from
/proc/thread-self/schedstat (exact runtime, not ticks).  Prints one line per run and
the median share of a core.  This used to be an assertion in the tests
(tests/harness/test_readiness.py); a time-based bound belongs here, not there.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess

from conformance.harness.readiness import NotReady, wait_listening


def thread_cpu() -> float:
    with open("/proc/thread-self/schedstat") as fh:
        return int(fh.read().split()[0]) / 1e9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(wait_s: float) -> tuple[float, float]:
    import time
    p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        c0, t0 = thread_cpu(), time.monotonic()
        try:
            wait_listening(p.pid, transport="tcp4", port=free_port(), timeout=wait_s,
                           exited=p.poll)
            raise SystemExit("sleep listened?")
        except NotReady:
            pass
        return thread_cpu() - c0, time.monotonic() - t0
    finally:
        os.killpg(p.pid, 9)
        p.wait(5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="runs (default 10)")
    ap.add_argument("--wait", type=float, default=1.0, help="seconds per run (default 1)")
    a = ap.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    shares = []
    for i in range(a.runs):
        cpu, wall = one_run(a.wait)
        shares.append(cpu / wall)
        print(f"run {i + 1}: {wall:.3f} s waited, {cpu * 1e3:.1f} ms CPU ({cpu / wall:.1%} of a core)")
    print(f"median {statistics.median(shares):.1%} of a core, max {max(shares):.1%} "
          f"over {a.runs} runs of {a.wait:g} s")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
