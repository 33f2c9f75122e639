#!/usr/bin/env python3
"""Wall time of `sockconf check --profile hello`: the built-in reference and the C pair
(fixtures/hello good_server + good_client), each with -n 0 (one process, the default),
-n 1 and -n 2 (pytest-xdist workers).

The C fixtures are built with cc into a temporary folder laid out like the tests'
(T/bin/NAME, T/targets/good.toml).  Each configuration runs --repeat times; the runs
are interleaved round-robin (rep 1 of every configuration, then rep 2, ...) so that a
drift of the machine does not favour one configuration.  Every run must exit 0
(conformant); the script exits 1 otherwise.

    python3 bench/check_walltime.py [--repeat 3] [--jobs 0 1 2] [--timeout 900]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchlib import build_hello, print_load, print_machine, run_group, stats, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration (default 3)")
    ap.add_argument("--jobs", type=int, nargs="+", default=[0, 1, 2], metavar="N",
                    help="values of -n to time (default: 0 1 2)")
    ap.add_argument("--targets", nargs="+", choices=["reference", "c", "all"],
                    default=["reference", "c"],
                    help="what to check: reference (hello), c (the C hello pair), all (no "
                         "target: the three reference profiles) (default: reference c)")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds after which one run is killed (default 900)")
    ap.add_argument("--sockconf", nargs="+", default=[shutil.which("sockconf") or "sockconf"],
                    metavar="[LABEL=]PATH",
                    help="the sockconf executable(s) (default: the one on PATH); several "
                         "(e.g. before=/old/venv/bin/sockconf after=.venv/bin/sockconf) are "
                         "timed interleaved, each row labelled")
    ap.add_argument("--keep", action="store_true", help="keep the temporary build folder")
    args = ap.parse_args(argv)

    print_machine()
    tmp = Path(tempfile.mkdtemp(prefix="sockconf-bench-"))
    try:
        build = build_hello(tmp / "T")
        target = build / "targets" / "good.toml"
        commands: dict[str, list[str]] = {}
        tools = [t.partition("=")[::2] if "=" in t else ("", t) for t in args.sockconf]
        for label, exe in tools:
            for what in args.targets:
                for n in args.jobs:
                    base = [exe, "check"]
                    if what == "c":
                        base.append(str(target))
                    if what != "all":
                        base += ["--profile", "hello"]
                    key = f"{label + ' ' if label else ''}{what} -n {n}"
                    commands[key] = [*base, "-n", str(n)]
        times: dict[str, list[float]] = {k: [] for k in commands}
        statuses: dict[str, list[str]] = {k: [] for k in commands}
        summaries: dict[str, str] = {}
        loads: dict[str, list[float]] = {k: [] for k in commands}
        for rep in range(1, args.repeat + 1):
            for key, cmd in commands.items():
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                rc, out = run_group(cmd, timeout=args.timeout, cwd=tmp)
                dt = time.perf_counter() - t0
                times[key].append(dt)
                statuses[key].append("timeout" if rc is None else str(rc))
                summary = _summary(out)
                summaries.setdefault(key, summary)
                loads[key].append(load)
                print(f"[{rep}/{args.repeat}] {key:14s} {dt:7.2f} s  exit {statuses[key][-1]}"
                      f"  load {load:.2f}  {summary}", flush=True)
                if rc != 0:
                    print(out[-3000:], file=sys.stderr)
        print_load("at end")
        print()
        print("commands (T = the temporary build folder):")
        for key, cmd in commands.items():
            shown = " ".join(cmd).replace(str(build), "T")
            print(f"  {key:14s} {shown}")
        print()
        rows = []
        for key in commands:
            med, lo, hi = stats(times[key])
            what, _, n = key.partition(" -n ")
            label, _, what = what.rpartition(" ")
            rows.append([
                (f"{label}: " if label else "")
                + {"reference": "reference (built-in)", "c": "C pair (good.toml)",
                   "all": "all three reference profiles"}[what],
                n, str(len(times[key])), f"{med:.2f}", f"{lo:.2f}", f"{hi:.2f}",
                f"{min(loads[key]):.1f}-{max(loads[key]):.1f}",
                ", ".join(sorted(set(statuses[key]))), summaries[key],
            ])
        print(table(["target", "-n", "runs", "median s", "min s", "max s",
                     "load (1 min) at start", "exit",
                     "verdict / pytest summary"], rows))
        ok = all(s == "0" for v in statuses.values() for s in v)
        if not ok:
            print("\nsome run did not exit 0", file=sys.stderr)
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"\nbuild kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _summary(out: str) -> str:
    """'CONFORMANT: 27 pass, ...; 82 passed' from the output of sockconf check
    (its verdict line, then its line of clause counts)."""
    combined = re.search(r"^== all profiles \(([^)]*)\): ([^\n]*)$", out, re.M)
    if combined:
        return f"all profiles ({combined.group(1)}): {combined.group(2).strip()}"
    verdict = re.search(r"^\s*((?:NOT )?CONFORMANT\b[^\n]*|NO VERDICT\b[^\n]*)$", out, re.M)
    counts = re.search(r"^\s*(\d+ pass, [^\n]*)$", out, re.M)
    tests = re.findall(r"^=*\s*(\d+ passed[^\n]*?) in [\d.]+s", out, re.M)
    parts = []
    if verdict:
        parts.append(verdict.group(1).strip() + (f": {counts.group(1)}" if counts else ""))
    if tests:
        parts.append(f"pytest: {tests[-1].strip()}")
    return "; ".join(parts) or "(no summary line)"


if __name__ == "__main__":
    sys.exit(main())
