#!/usr/bin/env python3
"""Spawn-to-ready latency on a one-shot server: our runner vs mirakuru vs pytest-xprocess.

The target is the C fixture good_server (fixtures/hello/src/good_server.c): it serves
exactly one client - accept(), write the 13-byte greeting "Hello World!\\0", drain,
exit 0.  Each tool starts it on a fresh port (bind to port 0, close, reuse the number)
and waits until it is "ready":

  sockconf   conformance.harness.process.Runner(workdir).spawn([...]) and
             conformance.harness.readiness.wait_listening(pid, transport="tcp4",
             port=PORT, timeout=5, exited=proc.poll) - passive: /proc + sock_diag,
             never connects;
  mirakuru   mirakuru.TCPExecutor(argv, host="127.0.0.1", port=PORT, timeout=5).start()
             (defaults otherwise: a connect probe every 0.1 s);
  xprocess   xprocess.XProcess(...).ensure(name, Starter) with a ProcessStarter whose
             startup_check() is the idiomatic TCP connect probe (the server prints
             nothing, so a stdout `pattern` cannot be used); xprocess calls it every
             0.1 s.  Outside pytest: XProcess(config, rootdir) only uses `config` as a
             place to store log handles (config.__dict__["_extlogfiles"]), so a bare
             namespace stands in for the pytest config; rootdir is a py.path.local
             temp folder (what the `xprocess` fixture passes: config.cache/.xprocess).

Latency: time.perf_counter() from just before the tool's object is created (Runner,
TCPExecutor, XProcess) to the return of its wait.  Then the "real client" connects
once and reads until EOF: does it get the greeting, or did the readiness check eat
the server's only accept()?

Probe accounting: for the whole of each tool's spawn-and-wait, socket.socket.connect
is wrapped (observed, not changed) to count TCP connects to the target's port made
by this process; "probe connects" are the ones that succeeded.  A connection that
the kernel completed is in the listener's accept queue ahead of the real client's,
so the one-shot server accepts it and writes its greeting there: "greetings consumed
by readiness" counts the runs where a probe connected and the real client then did
not get the greeting.

    python3 bench/readiness.py [--runs 20] [--tools sockconf mirakuru xprocess]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import py  # pytest's py.path shim: the xprocess fixture's rootdir is a py.path.local
from benchlib import build_hello, print_load, print_machine, stats, table
from mirakuru import TCPExecutor
from xprocess import ProcessStarter, XProcess

from conformance.harness.process import Runner
from conformance.harness.readiness import wait_listening

GREETING = b"Hello World!\0"
HOST = "127.0.0.1"
READY_TIMEOUT = 5.0
CLIENT_TIMEOUT = 2.0


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclass
class ProbeCount:
    """TCP connects of this process to `port` (attempted / completed)."""

    port: int
    attempts: int = 0
    connected: int = 0


@contextlib.contextmanager
def count_connects(port: int) -> Iterator[ProbeCount]:
    """Wrap socket.socket.connect (used by mirakuru and socket.create_connection) to
    count connects to `port`; behaviour unchanged."""
    counter = ProbeCount(port)
    original = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        ours = (self.family in (socket.AF_INET, socket.AF_INET6)
                and isinstance(address, tuple) and len(address) >= 2
                and address[1] == port)
        if ours:
            counter.attempts += 1
        original(self, address)  # raises on failure: not counted as connected
        if ours:
            counter.connected += 1

    socket.socket.connect = connect  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        socket.socket.connect = original  # type: ignore[method-assign]


def real_client(port: int) -> str:
    """Connect once as the real client and read to EOF.  'greeting' if exactly the
    13 bytes arrived; else what happened (refused, reset, empty, timeout, ...)."""
    data = b""
    try:
        with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT) as s:
            s.settimeout(CLIENT_TIMEOUT)
            while True:
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return f"reset after {len(data)} B" if data else "reset"
    except TimeoutError:
        return f"timeout after {len(data)} B"
    except OSError as e:
        return f"error {e.__class__.__name__}"
    if data == GREETING:
        return "greeting"
    return "empty (EOF)" if not data else f"wrong bytes {data!r}"


def kill_group(pid: int | None, popen: subprocess.Popen[bytes] | None = None) -> None:
    """SIGKILL process group `pid` (every tool starts the server as a group leader:
    start_new_session / os.setsid / os.setpgrp) and reap it, with a timeout."""
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if popen is not None:
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            print(f"warning: pid {pid} not reaped within 5 s", file=sys.stderr)


@dataclass
class Run:
    latency_s: float | None  # None: the tool did not report ready (error)
    attempts: int
    connected: int
    client: str
    server_exit: str
    error: str = ""


@dataclass
class Tool:
    name: str
    how: str
    start: Callable[[list[str], int, Path], tuple[Callable[[], None], int | None,
                                                  subprocess.Popen[bytes] | None]]
    runs: list[Run] = field(default_factory=list)


# ----------------------------------------------------------------------------- the tools
# Each `start` creates the tool's object, spawns the server and waits until the tool
# says it is ready; it returns (cleanup, pid, popen).  Timing is done by the caller
# around that call.  On failure it kills what it started, then raises.


def start_sockconf(argv: list[str], port: int, work: Path):
    runner = Runner(work)
    try:
        proc = runner.spawn(argv, name="good_server")
        wait_listening(proc.pid, transport="tcp4", port=port, timeout=READY_TIMEOUT,
                       exited=proc.poll)
    except BaseException:
        runner.close()
        raise
    return runner.close, proc.pid, proc.popen


def start_mirakuru(argv: list[str], port: int, work: Path):
    ex = TCPExecutor(argv, host=HOST, port=port, timeout=READY_TIMEOUT)
    try:
        ex.start()
    except BaseException:
        _mirakuru_cleanup(ex)
        raise
    popen = ex.process
    return (lambda: _mirakuru_cleanup(ex)), popen.pid if popen else None, popen


def _mirakuru_cleanup(ex) -> None:
    popen = ex.process
    if popen is not None:
        kill_group(popen.pid, popen)
    # mirakuru's own kill (the group is already gone: it just reaps and closes pipes)
    with contextlib.suppress(Exception):
        ex.kill()


def start_xprocess(argv: list[str], port: int, work: Path):
    class Starter(ProcessStarter):
        args = argv
        timeout = READY_TIMEOUT
        terminate_on_interrupt = True

        def startup_check(self) -> bool:
            try:
                with socket.create_connection((HOST, port), timeout=1.0):
                    return True
            except OSError:
                return False

    class QuietLog:
        def debug(self, msg: str, *args: object) -> None:
            pass

    config = types.SimpleNamespace()  # stands in for pytest's Config (see the docstring)
    xp = XProcess(config, py.path.local(work), log=QuietLog(), proc_wait_timeout=5)

    def cleanup() -> None:
        for res in xp.resources:
            if res.popen is not None:
                kill_group(res.popen.pid, res.popen)
        xp._force_clean_up()  # closes its log handles (what pytest_unconfigure does)

    try:
        pid, _log = xp.ensure("good_server", Starter, restart=True)
    except BaseException:
        cleanup()
        raise
    popen = xp.resources[-1].popen
    return cleanup, pid, popen


TOOLS = {
    "sockconf": ("passive: /proc + sock_diag LISTEN, no connect", start_sockconf),
    "mirakuru": ("TCPExecutor: connect probe, sleep 0.1 s", start_mirakuru),
    "xprocess": ("startup_check(): connect probe, every 0.1 s", start_xprocess),
}


# ----------------------------------------------------------------------------- one run


def one_run(tool: Tool, server: Path, work: Path) -> Run:
    port = free_port()
    argv = [str(server), str(port)]
    cleanup: Callable[[], None] | None = None
    popen: subprocess.Popen[bytes] | None = None
    latency: float | None = None
    error = ""
    with count_connects(port) as probes:
        t0 = time.perf_counter()
        try:
            cleanup, _pid, popen = tool.start(argv, port, work)
            latency = time.perf_counter() - t0
        except Exception as e:  # the tool did not see it ready: record and go on
            error = f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        client = real_client(port) if latency is not None else "-"
        server_exit = "-"
        if popen is not None:
            try:
                server_exit = str(popen.wait(timeout=CLIENT_TIMEOUT + 1))
            except subprocess.TimeoutExpired:
                server_exit = "still running"
    finally:
        if cleanup is not None:
            cleanup()
    return Run(latency, probes.attempts, probes.connected, client, server_exit, error)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="runs per tool (default 20)")
    ap.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS),
                    help="which tools (default: all three)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="uncounted runs per tool first (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = ap.parse_args(argv)

    print_machine()
    tmp = Path(tempfile.mkdtemp(prefix="sockconf-readiness-"))
    try:
        server = build_hello(tmp / "T", ("good_server",)) / "bin" / "good_server"
        tools = [Tool(name, *TOOLS[name]) for name in args.tools]
        for rep in range(args.warmup):  # page cache, lazy imports, first-call costs
            for tool in tools:
                work = tmp / "warmup" / tool.name / f"{rep:03d}"
                work.mkdir(parents=True)
                one_run(tool, server, work)
        for rep in range(args.runs):  # round-robin: drift affects every tool alike
            for tool in tools:
                work = tmp / "work" / tool.name / f"{rep:03d}"
                work.mkdir(parents=True)
                run = one_run(tool, server, work)
                tool.runs.append(run)
                if args.verbose or run.error:
                    lat = "-" if run.latency_s is None else f"{run.latency_s * 1e3:8.2f} ms"
                    print(f"[{rep + 1}/{args.runs}] {tool.name:9s} {lat}  probes "
                          f"{run.connected}/{run.attempts}  client: {run.client}  "
                          f"server exit {run.server_exit}  {run.error}", flush=True)
        print_load("at end")
        print()
        rows = []
        for tool in tools:
            ok = [r for r in tool.runs if r.latency_s is not None]
            med, lo, hi = stats([r.latency_s * 1e3 for r in ok])  # type: ignore[operator]
            attempts = sum(r.attempts for r in tool.runs)
            connected = sum(r.connected for r in tool.runs)
            got = sum(r.client == "greeting" for r in tool.runs)
            consumed = sum(r.connected > 0 and r.client != "greeting" for r in ok)
            outcomes: dict[str, int] = {}
            for r in ok:
                outcomes[r.client] = outcomes.get(r.client, 0) + 1
            rows.append([
                tool.name, tool.how, f"{len(ok)}/{len(tool.runs)}",
                f"{med:.2f}", f"{lo:.2f}", f"{hi:.2f}",
                f"{connected} ({attempts} tried)",
                f"{got}/{len(tool.runs)}",
                ", ".join(f"{k} ×{v}" for k, v in sorted(outcomes.items())),
                f"**{consumed}/{len(tool.runs)}**",
            ])
        print(table(["tool", "readiness check", "ready", "median ms", "min ms", "max ms",
                     "probe connects", "real client got greeting", "real client saw",
                     "greetings consumed by readiness"], rows))
        errors = [(t.name, r.error) for t in tools for r in t.runs if r.error]
        if errors:
            print("\nerrors:")
            for name, err in errors:
                print(f"  {name}: {err}")
        return 0
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
