"""The strace command: tracing a target, injecting faults, finding the tracee.

`strace_argv` runs a program under strace (following forks and threads) and
`attach_argv` attaches to a running one; both log the lifecycle system calls that
`harness.syscalls.parse` reads, with the `Injection`s asked for.  `traced_by`
tells whether every thread of a process is traced, `slowdown` how much slower a
program runs under strace here (to scale waits).  Standard library only.

What strace 6.1 actually does (verified by tests/harness/test_trace.py)
------------------------------------------------------------------------
* `inject=...:when=N` counts invocations **per tracee** (per thread, per process),
  **per syscall** (``inject=accept,accept4:when=1`` fails the first accept *and* the
  first accept4 of every tracee), every new thread or forked child starting again
  at 1; the count is **not** reset by execve, so a wrapper's calls (``setpriv ...
  -- target``) count too.  A 2-phase injection (trace a normal run, find the
  ordinal, inject with that ``when``) is consistent as long as the same argv
  (wrapper included) is run in the same environment and takes the same path;
  whether it did is read from the injected run's own trace
  (`conformance.checks.faults`).  Because every tracee has its own count,
  ``when=N`` also fails the Nth call of any *other* thread/process of the target.
* Injection applies only to traced syscalls (``-e trace=none -e inject=dup``
  injects nothing), so `strace_argv` adds the injected names to the trace set.
  Injected calls are not executed; strace prints ``= -1 EMFILE (...) (INJECTED)``.
* when=1 on read() hits the dynamic loader, not the program: every dynamically
  linked program read()s libc.so.6 (ELF header) before main; a Python program
  reads dozens of files.  The first *socket* read needs its ordinal from a normal
  run.  socket(), bind(), listen(), accept() and connect() are not called before
  main by glibc, so when=1 is right for them in C.
* ``-y`` decorates every socket descriptor as ``3<socket:[8366]>`` (the inode: a
  stable identity across dup() and fork(), and the one /proc and sock_diag show),
  files as ``3</path>``; ``-yy`` would print protocol details instead and lose the
  inode, so we use ``-y``.
* ``-qq`` suppresses ``+++ exited with N +++`` (not ``+++ killed by SIG +++``), so
  we use ``-q`` (which only hides attach/detach chatter).
* strace exits with its tracee's status and dies by the tracee's signal (tracee
  killed by SIGTERM -> strace killed by SIGTERM), so Popen.returncode keeps its
  meaning.  Signal the program or the process group (`testbed.Server.signal`),
  not strace alone: with ``-o FILE PROG`` strace blocks fatal signals (its default ``-I3``),
  so a SIGTERM to strace does nothing and it just waits for the program; a SIGKILL
  to strace detaches the tracee, which lives on (hence killpg / pdeathsig), and may
  lose the end of the log.
* strace keeps one inject rule per syscall: a second ``-e inject=`` naming the
  same syscall replaces the first (`strace_argv` refuses that).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

STRACE_HINT = "strace not installed: apt-get install strace"

# What the suite traces.  A leading "?" tells strace to ignore a name this
# architecture does not have (recv/send exist on some, dup2/fork/vfork not on arm64).
TRACED_SYSCALLS: tuple[str, ...] = (
    "socket", "socketpair", "setsockopt", "getsockopt", "bind", "listen", "accept", "accept4",
    "connect", "shutdown",
    "read", "readv", "pread64", "preadv", "preadv2", "?recv", "recvfrom", "recvmsg", "recvmmsg",
    "write", "writev", "pwrite64", "pwritev", "pwritev2", "?send", "sendto", "sendmsg",
    "sendmmsg", "sendfile", "splice",
    "close", "close_range", "dup", "?dup2", "dup3", "fcntl", "?fcntl64",
    "clone", "clone3", "?fork", "?vfork", "execve", "execveat", "exit", "exit_group",
)

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@functools.cache
def strace_path() -> str | None:
    return shutil.which("strace")


@dataclass(frozen=True)
class Injection:
    """One strace ``-e inject=`` rule: make the `when`-th call (counted per tracee
    and per syscall, see the module docstring) of each of `syscalls` fail with
    `error`.  strace keeps one rule per syscall (a later rule for the same
    syscall replaces the earlier one), so `strace_argv` refuses overlaps."""

    syscalls: tuple[str, ...]
    error: str
    when: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.syscalls, str):  # Injection("accept", ...) : be forgiving
            object.__setattr__(self, "syscalls", (self.syscalls,))
        if not self.syscalls or not all(_NAME.match(s) for s in self.syscalls):
            raise ValueError(f"bad syscall names {self.syscalls!r}")
        if not re.match(r"^E[A-Z0-9_]+$", self.error):
            raise ValueError(f"bad errno name {self.error!r}")
        if self.when < 1:
            raise ValueError(f"when must be >= 1, not {self.when}")

    def strace_arg(self) -> str:
        return f"inject={','.join(self.syscalls)}:error={self.error}:when={self.when}"

    def __str__(self) -> str:
        nth = "" if self.when == 1 else f" (call #{self.when} of its thread)"
        return f"{'/'.join(self.syscalls)}() failing with {self.error}{nth}"


def strace_argv(argv: Sequence[str], log: Path | str, injections: Sequence[Injection] = (),
                *, strace: str | None = None) -> list[str]:
    """The command that runs `argv` under strace, following forks and threads,
    logging the lifecycle syscalls to `log`, with the given injections."""
    return [*_strace_options(log, injections, strace), "--", *argv]


def attach_argv(pid: int, log: Path | str, injections: Sequence[Injection] = (),
                *, strace: str | None = None) -> list[str]:
    """The command that attaches strace to the running process `pid` (all its
    threads, and what it forks from then on).  Injection counts then start at
    the attach, in every thread: `when=1` on read is the first read *after* the
    attach — in a thread-per-client server, the first read of each new client's
    thread — instead of a read the loader did at start-up."""
    return [*_strace_options(log, injections, strace), "-p", str(pid)]


def _strace_options(log: Path | str, injections: Sequence[Injection],
                    strace: str | None) -> list[str]:
    names = list(TRACED_SYSCALLS)
    known = {n.lstrip("?") for n in names}
    injected = [s for inj in injections for s in inj.syscalls]
    if len(set(injected)) != len(injected):
        raise ValueError(f"several injections for one syscall (strace keeps the last): {injected}")
    for inj in injections:
        for s in inj.syscalls:  # injection only works on traced syscalls
            if s not in known:
                names.append(s)
                known.add(s)
    cmd = [strace or strace_path() or "strace", "-f", "-q", "-y", "-s", "64", "-o", str(log),
           "-e", "trace=" + ",".join(names)]
    for inj in injections:
        cmd += ["-e", inj.strace_arg()]
    return cmd


# -- the processes behind strace --------------------------------------------------------


def traced_by(pid: int) -> set[int]:
    """The tracer pids of every thread of `pid` (0 for an untraced thread)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("TracerPid:"):
                    out.add(int(line.split()[1]))
        except OSError:
            continue
    return out


# -- how much slower a traced program runs --------------------------------------------

# A runtime's start-up in miniature: the Python interpreter importing asyncio,
# json and socket makes about ten thousand system calls (files, mmap, futex), and
# strace stops the program at each of them.
_PROBE = [sys.executable, "-c", "import asyncio, json, socket"]
# CPU time is what can be measured steadily on a loaded machine; each stop also
# waits for strace to be scheduled, which CPU time does not show: hence a margin.
SCHEDULING_MARGIN = 2.0
SLOWDOWN_RANGE = (2.0, 20.0)


@functools.cache
def slowdown() -> float:
    """How many times longer a program may take under our strace command than
    without: the CPU time of the probe traced / untraced (best of 3 each way,
    measured once per process; CPU time, not wall time, because the machine's
    load makes wall times of one run meaningless), times SCHEDULING_MARGIN,
    within SLOWDOWN_RANGE.  1.0 when strace is missing.  Waits on a traced target
    (all of them hang guards) are scaled by it: a JVM's start-up under strace on
    a loaded machine would otherwise fail a plain timeout."""
    strace = strace_path()
    if strace is None:
        return 1.0
    lo, hi = SLOWDOWN_RANGE
    with tempfile.TemporaryDirectory(prefix="sockconf-slowdown-") as d:
        plain = _least_cpu(2, _PROBE)
        traced = _least_cpu(2, strace_argv(_PROBE, Path(d) / "probe.log", strace=strace))
    if plain is None or traced is None or plain <= 0:
        return hi
    return min(hi, max(lo, SCHEDULING_MARGIN * traced / plain))


def _least_cpu(n: int, argv: Sequence[str], timeout: float = 30.0) -> float | None:
    """The least CPU time (user + system, the process and what it waited for) of
    `n` runs of `argv`; None if one fails or takes longer than `timeout`."""
    best: float | None = None
    for _ in range(n):
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        except OSError:
            return None
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() >= deadline:
                proc.kill()
                proc.wait()
                return None
            time.sleep(0.005)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            return None
        cpu = usage.ru_utime + usage.ru_stime
        best = cpu if best is None else min(best, cpu)
    return best
