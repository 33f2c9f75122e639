#!/usr/bin/env python3
"""Where the wall time of one `sockconf check` goes: session start-up, collection,
namespace set-up, per-check spawn, strace, capture start/stop, fixed sleeps.

Runs the command (default `sockconf check --profile hello -n 2`) --repeat times with
the probe plugin bench/breakdown_probe.py loaded in every process (controller and
xdist workers).  Each process writes its milestones and timers; this script prints,
per row, the median over the runs:

  * the controller's milestones (process start -> plugins configured -> session
    start -> last worker done -> exit), and each worker's (start -> configured ->
    collected -> first check -> last check), as offsets from the controller's start;
  * the timers summed over all workers: calls and seconds of each wrapped harness
    function (inclusive: Testbed.start_server contains Runner.spawn and
    wait_listening) and of every time.sleep by caller;
  * the load average before and after every run.

    python3 bench/check_breakdown.py [--repeat 3] [-- sockconf check ARGS...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchlib import print_load, print_machine, run_group, table

HERE = Path(__file__).resolve().parent


def one_run(cmd: list[str], timeout: float) -> tuple[float, int | None, list[dict], str]:
    with tempfile.TemporaryDirectory(prefix="sockconf-breakdown-") as td:
        env_dir = Path(td) / "probe"
        env_dir.mkdir()
        os.environ["SOCKCONF_BREAKDOWN_DIR"] = str(env_dir)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
        t0 = time.time()
        rc, out = run_group([*cmd, "--pytest-arg=-p", "--pytest-arg=breakdown_probe"],
                            timeout=timeout, cwd=Path(td))
        wall = time.time() - t0
        docs = [json.loads(p.read_text()) for p in env_dir.glob("*.json")]
        for d in docs:
            d["t0"] = t0
    return wall, rc, docs, out


def rows_of(wall: float, docs: list[dict]) -> dict[str, float]:
    """One run's figures, by row name (seconds, or calls for `# ...` rows)."""
    t0 = docs[0]["t0"] if docs else 0.0
    rows: dict[str, float] = {"wall (whole command)": wall}
    ctrl = [d for d in docs if d["worker"] is None]
    workers = [d for d in docs if d["worker"] is not None]
    if ctrl:
        c = ctrl[0]
        m = c["marks"]
        rows["controller: exec -> interpreter started"] = c["process_start"] - t0
        rows["controller: interpreter start -> plugins configured"] = (
            m["configure"] - c["process_start"])
        rows["controller: configured -> session start"] = m["sessionstart"] - m["configure"]
        rows["controller: session finish -> exit (report)"] = (
            m.get("unconfigure", 0) - m.get("sessionfinish", 0))
        rows["controller: exit -> command returned"] = t0 + wall - m.get("unconfigure", t0)
    if workers:
        def med(f):  # the median over the workers of a per-worker figure
            return statistics.median(f(w) for w in workers)
        rows["workers: controller start -> worker process start"] = med(
            lambda w: w["process_start"] - t0)
        rows["workers: process start -> plugins configured"] = med(
            lambda w: w["marks"]["configure"] - w["process_start"])
        rows["workers: configured -> collected"] = med(
            lambda w: w["marks"]["collection_finish"] - w["marks"]["configure"])
        rows["workers: collected -> first check starts"] = med(
            lambda w: w["marks"]["first_test_start"] - w["marks"]["collection_finish"])
        rows["workers: first check start -> last check end"] = med(
            lambda w: w["marks"]["last_test_end"] - w["marks"]["first_test_start"])
        rows["workers: controller start -> last check end (latest worker)"] = max(
            w["marks"]["last_test_end"] - t0 for w in workers)
    src = workers or ctrl
    for phase in ("setup", "call", "teardown"):
        rows[f"sum over checks: {phase}"] = sum(d["phases"].get(phase, 0.0) for d in src)
    rows["# checks"] = sum(d["phases"].get("checks", 0) for d in src)
    timers: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for d in src:
        for k, (n, s) in d["timers"].items():
            timers[k][0] += n
            timers[k][1] += s
    for k, (n, s) in sorted(timers.items(), key=lambda kv: -kv[1][1]):
        rows[f"timer: {k}"] = s
        rows[f"# timer: {k}"] = n
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("command", nargs="*",
                    help="the command after --; default: sockconf check --profile hello -n 2")
    args = ap.parse_args(argv)
    cmd = args.command or [shutil.which("sockconf") or "sockconf", "check", "--profile",
                           "hello", "-n", "2"]
    print_machine()
    print("command:", " ".join(cmd))
    runs: list[dict[str, float]] = []
    for i in range(args.repeat):
        before = os.getloadavg()[0]
        wall, rc, docs, out = one_run(cmd, args.timeout)
        after = os.getloadavg()[0]
        print(f"[{i + 1}/{args.repeat}] {wall:6.2f} s exit {rc} "
              f"(load {before:.2f} -> {after:.2f}, {len(docs)} process(es) reported)",
              flush=True)
        if not docs:
            print(out[-3000:], file=sys.stderr)
            return 1
        r = rows_of(wall, docs)
        r["load average (1 min) before"] = before
        runs.append(r)
    print_load("at end")
    names = list(dict.fromkeys(k for r in runs for k in r))
    out_rows = []
    for k in names:
        if k.startswith("# timer: "):
            continue
        vals = [r.get(k, 0.0) for r in runs]
        calls = [r.get(f"# {k}", 0) for r in runs] if k.startswith("timer: ") else None
        shown = (f"{statistics.median(vals):.0f}" if k.startswith("#")
                 else f"{statistics.median(vals):.3f}")
        out_rows.append([k, shown, f"{min(vals):.3f}", f"{max(vals):.3f}",
                         f"{statistics.median(calls):.0f}" if calls else ""])
    print()
    print(table(["where (median over runs)", "median s", "min", "max", "calls"], out_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
