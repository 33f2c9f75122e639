"""Helpers shared by the benchmark scripts: building the C fixtures, the machine
description and summary statistics.  Not a benchmark itself."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELLO = REPO / "fixtures" / "hello"


def build_hello(dest: Path, names: Sequence[str] = ("good_server", "good_client"),
                *, cc: str | None = None) -> Path:
    """Compile fixtures/hello/src/NAME.c into DEST/bin/NAME and copy
    fixtures/hello/targets/good.toml into DEST/targets/ (the layout of the tests'
    `fixtures_built` fixture, so the target file's ``../bin/NAME`` paths resolve).
    Returns DEST."""
    cc = cc or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("no C compiler (cc or gcc) on PATH: cannot build the C fixtures")
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    (dest / "targets").mkdir(parents=True, exist_ok=True)
    for name in names:
        src = HELLO / "src" / f"{name}.c"
        cmd = [cc, "-O1", "-Wall", "-Wextra", "-o", str(dest / "bin" / name), str(src)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            sys.exit(f"cc failed for {src}:\n{res.stderr}")
    shutil.copy2(HELLO / "targets" / "good.toml", dest / "targets" / "good.toml")
    return dest


def run_group(argv: Sequence[str], *, timeout: float,
              cwd: Path | None = None) -> tuple[int | None, str]:
    """Run ARGV in its own process group and wait up to TIMEOUT s; afterwards (and on
    timeout or any exception) SIGKILL whatever is left of the group.  Returns (exit
    status, or None on timeout; combined stdout+stderr)."""
    popen = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    rc: int | None = None
    data = b""
    try:
        data, _ = popen.communicate(timeout=timeout)
        rc = popen.returncode
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        try:
            os.killpg(popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            more, _ = popen.communicate(timeout=5)
            data += more or b""
        except (subprocess.TimeoutExpired, ValueError):
            pass
    return rc, data.decode("utf-8", "replace")


def machine() -> dict[str, str]:
    """nproc, CPU model, kernel, Python - for the BENCHMARKS.md header."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "root": "yes" if os.geteuid() == 0 else "no",
    }


def print_machine() -> None:
    m = machine()
    print(f"machine: nproc={m['nproc']}; CPU: {m['cpu']}; kernel: {m['kernel']}; "
          f"python: {m['python']}; root: {m['root']}")
    print_load("at start")


def print_load(when: str) -> None:
    """The 1/5/15-minute load averages: other work on the machine skews the numbers."""
    one, five, fifteen = os.getloadavg()
    print(f"load average {when}: {one:.2f} {five:.2f} {fifteen:.2f} "
          f"(nproc {os.cpu_count()})", flush=True)


def stats(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max); NaNs if empty."""
    if not values:
        nan = float("nan")
        return nan, nan, nan
    return statistics.median(values), min(values), max(values)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
