#!/usr/bin/env python3
"""Fuzz throughput (cases/s) against one echo server: sockconf's ECHO-1 fuzzing vs boofuzz.

The target is the C echo fixture good_server (fixtures/echo/src/good_server.c, built
with `cc -O2 -pthread` into a temporary folder), or the reference echo server with
--target reference.  Everything runs on 127.0.0.1 (TCP/IPv4).

  check body   The ECHO-1 fuzz check itself, conformance.checks.test_echo.
               test_echo_fuzz, called in this process against an already running
               server (a stand-in Testbed whose start_server() returns it), under a
               hypothesis profile like the suite's (deadline None, database None,
               the same suppressed health checks) with max_examples=--examples and
               derandomize=True (the ci profile's setting: every repeat draws the
               same examples).  So: whatever strategies, exchange (peers.stream:
               one connection, writer thread, read while writing) and oracle
               (every byte compared; the server alive afterwards:
               LiveServer.require_alive) the check has in the working tree.  A
               case = one call of test_echo.echo_roundtrip (counted by wrapping
               it); its payload size, number of writes and duration are recorded.
  small        The same exchange and oracle (test_echo.echo_roundtrip, a byte
               comparison, LiveServer.require_alive) under our own @given with
               payloads st.binary(min_size=1, max_size=4096) and 1..12 write sizes
               of 1 B..1 MiB: the per-case cost when payloads are small.
  CLI          `sockconf check T/echo.toml --clause ECHO-1 --isolation none
               --hypothesis-profile dev --hypothesis-seed S --pytest-arg=-k
               --pytest-arg=test_echo_fuzz` as a whole process (profile dev = 100
               examples), minus the median wall time of the same command selecting
               no test (-k no_such_check: start-up, collection, report); cases/s =
               100 / (difference).  The CLI starts its own server.
  boofuzz      boofuzz 0.4.2 in its own interpreter (--boofuzz-python; not in the
               tox venv): Session(web_port=None, fuzz_loggers=[] (no console log;
               the always-on SQLite case log goes to a temporary file),
               index_end=--boofuzz-cases), one request
               "ECHO " + s_string("hello") + s_delim(" ") + s_bytes(b"\\x00\\x01\\x02\\x03")
               + "\\n", a new TCP connection per case.  Three settings:
               receive_data_after_fuzz False (boofuzz's default: send, close), the
               same with the case log on tmpfs (/dev/shm: its per-case SQLite
               commit no longer waits for the disk), and receive_data_after_fuzz
               True (one recv() of up to 10000 bytes after the send).  boofuzz has
               no echo oracle: it only notices a connection that fails (liveness);
               sockconf compares every echoed byte.

cases/s = cases / wall seconds of the fuzzing run (hypothesis' generation and
shrinking included; none shrank: no failure).  Each row is the median over
--repeat runs (the CLI: --cli-repeat), after one warm-up run of the in-process
parts.  Server processes and the CLI/boofuzz child processes run in their own
process groups, killed on every exit path; all files live in one TemporaryDirectory.

    python bench/fuzz_throughput.py [--examples 25] [--small-examples 300] [--repeat 3]
        [--cli-repeat 3] [--boofuzz-cases 2000] [--target c|reference]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BOOFUZZ_PYTHON = "/root/.pyenv/versions/3.11.7/bin/python"
MiB = 1 << 20


# ----------------------------------------------------------------------------- boofuzz child
# Runs under the boofuzz interpreter: only the standard library and boofuzz here.


def boofuzz_child(port: int, cases: int, db: str, recv: bool) -> None:
    import boofuzz as bz

    sent = [0]

    class Counting(bz.TCPSocketConnection):
        def send(self, data: bytes) -> int:
            n = int(super().send(data))  # one socket send(): boofuzz does not loop
            sent[0] += n
            return n

    session = bz.Session(
        target=bz.Target(connection=Counting("127.0.0.1", port)),
        web_port=None, keep_web_open=False, fuzz_loggers=[], db_filename=db,
        index_end=cases, receive_data_after_fuzz=recv,
    )
    bz.s_initialize("echo")
    bz.s_static(b"ECHO ")
    bz.s_string("hello", name="word")
    bz.s_delim(" ", name="sep")
    bz.s_bytes(b"\x00\x01\x02\x03", name="blob")
    bz.s_static(b"\n")
    session.connect(bz.s_get("echo"))
    t0 = time.perf_counter()
    session.fuzz()
    dt = time.perf_counter() - t0
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as c:
        fails = c.execute("SELECT count(*) FROM steps WHERE type IN ('fail', 'error')").fetchone()
    print(json.dumps({"cases": session.num_cases_actually_fuzzed, "seconds": dt,
                      "bytes": sent[0], "failures": fails[0]}), flush=True)


# ----------------------------------------------------------------------------- results


@dataclass
class Run:
    cases: int
    seconds: float
    payload_bytes: int = 0
    writes: int = 0
    empty_cases: int = 0
    empty_seconds: float = 0.0
    slowest: tuple[float, int, int] = (0.0, 0, 0)  # seconds, bytes, writes
    problem: str = ""

    @property
    def rate(self) -> float:
        return self.cases / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Row:
    key: str
    label: str
    measures: str
    oracle: str
    runs: list[Run] = field(default_factory=list)


# ----------------------------------------------------------------------------- our fuzzing


def hypothesis_profile(name: str, examples: int) -> None:
    """Like conformance.plugin's profiles (deadline None, database None, the same
    health checks off), with max_examples=EXAMPLES and derandomize=True."""
    from hypothesis import HealthCheck, settings

    slow = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large, HealthCheck.large_base_example]
    settings.register_profile(name, max_examples=examples, derandomize=True, deadline=None,
                              suppress_health_check=slow, database=None, print_blob=True)
    settings.load_profile(name)


class StandInBed:
    """What LiveServer needs from a Testbed: start_server() -> the running Server
    (a new one only if it died: then the run is reported as failed anyway)."""

    def __init__(self, srv: object) -> None:
        self.srv = srv

    def start_server(self, transport: str, **kw: object) -> object:
        return self.srv


def counting_roundtrips(run: Run):
    """Wrap the exchanges the check makes (EchoConnection.echo on the reused
    connection, test_echo.echo_roundtrip on a fresh one: both looked up at call
    time) to count cases, bytes, writes and time; returns a context manager."""
    from conformance.checks import test_echo
    from conformance.harness.exchange import EchoConnection

    original_fresh = test_echo.echo_roundtrip
    original_reused = EchoConnection.echo

    def counted(fn, chunks, *a, **kw):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return fn(*a, chunks, **kw)
        finally:
            dt = time.perf_counter() - t0
            size = sum(map(len, chunks))
            run.cases += 1
            run.payload_bytes += size
            run.writes += len(chunks)
            if size == 0:
                run.empty_cases += 1
                run.empty_seconds += dt
            if dt > run.slowest[0]:
                run.slowest = (dt, size, len(chunks))

    def fresh(srv, chunks, **kw):  # type: ignore[no-untyped-def]
        return counted(original_fresh, chunks, srv, **kw)

    def reused(self, srv, chunks, **kw):  # type: ignore[no-untyped-def]
        return counted(original_reused, chunks, self, srv, **kw)

    @contextlib.contextmanager
    def patched():  # type: ignore[no-untyped-def]
        test_echo.echo_roundtrip = fresh
        EchoConnection.echo = reused  # type: ignore[method-assign]
        try:
            yield
        finally:
            test_echo.echo_roundtrip = original_fresh
            EchoConnection.echo = original_reused  # type: ignore[method-assign]

    return patched()


def run_check_body(srv: object, examples: int) -> Run:
    from conformance.checks import test_echo

    run = Run(0, 0.0)
    hypothesis_profile("sockconf-bench-check", examples)
    with counting_roundtrips(run):
        t0 = time.perf_counter()
        try:
            test_echo.test_echo_fuzz(StandInBed(srv), "tcp4")  # type: ignore[arg-type]
        except Exception as e:  # a finding (or a dead server): report, keep the timing
            run.problem = f"{e.__class__.__name__}: {str(e)[:200]}"
        run.seconds = time.perf_counter() - t0
    return run


def run_small(srv: object, examples: int) -> Run:
    from hypothesis import given
    from hypothesis import strategies as st

    from conformance.checks import test_echo
    from conformance.checks.fuzzing import LiveServer
    from conformance.evidence import Violation
    from conformance.harness.exchange import EchoConnection

    run = Run(0, 0.0)
    hypothesis_profile("sockconf-bench-small", examples)
    live = LiveServer(StandInBed(srv), "tcp4")  # type: ignore[arg-type]
    conn = EchoConnection()

    @given(data=st.binary(min_size=1, max_size=4096),
           codes=st.binary(min_size=1, max_size=12))
    def example(data: bytes, codes: bytes) -> None:
        chunks = test_echo.chunked(data, test_echo.write_sizes(codes))
        got, _ = conn.echo(live.get(), chunks, timeout=10.0, nudge=test_echo.NUDGE,
                           idle=test_echo.IDLE)
        if got.data != data:
            raise Violation(f"sent {len(data)} bytes, got {len(got.data)} then {got.end}")
        live.require_alive("after the echo", grace=0)

    with counting_roundtrips(run):
        t0 = time.perf_counter()
        try:
            example()
        except Exception as e:
            run.problem = f"{e.__class__.__name__}: {str(e)[:200]}"
        finally:
            conn.close()
        run.seconds = time.perf_counter() - t0
    return run


def run_cli(sockconf: str, target: Path, cwd: Path, profile: str, seed: str,
            select: str, timeout: float) -> tuple[float, int | None, str]:
    from benchlib import run_group

    cmd = [sockconf, "check", str(target), "--clause", "ECHO-1", "--isolation", "none",
           "--hypothesis-profile", profile, "--hypothesis-seed", seed,
           "--pytest-arg=-k", f"--pytest-arg={select}"]
    t0 = time.perf_counter()
    rc, out = run_group(cmd, timeout=timeout, cwd=cwd)
    dt = time.perf_counter() - t0
    summary = next((ln.strip() for ln in reversed(out.splitlines())
                    if " in " in ln and ("passed" in ln or "deselected" in ln)), "")
    if select != "no_such_check" and rc != 0:
        print(f"--- sockconf check exited {rc}; the end of its output:\n{out[-4000:]}\n---",
              file=sys.stderr, flush=True)
    return dt, rc, summary


def run_boofuzz(python: str, port: int, cases: int, logdir: Path, recv: bool,
                timeout: float) -> Run:
    from benchlib import run_group

    db = logdir / f"boofuzz-{time.monotonic_ns()}.db"
    cmd = [python, str(Path(__file__).resolve()), "--boofuzz-child", str(port), str(cases),
           str(db), "1" if recv else "0"]
    rc, out = run_group(cmd, timeout=timeout, cwd=logdir)
    line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("{")), None)
    if rc != 0 or line is None:
        return Run(0, 0.0, problem=f"boofuzz exit {rc}: {out[-500:]}")
    r = json.loads(line)
    problem = f"{r['failures']} failure/error step(s) logged" if r["failures"] else ""
    return Run(r["cases"], r["seconds"], payload_bytes=r["bytes"], writes=r["cases"],
               problem=problem)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=25,
                    help="max_examples for the ECHO-1 check body (default 25)")
    ap.add_argument("--small-examples", type=int, default=300,
                    help="max_examples for the small-payload variant (default 300)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per row (default 3)")
    ap.add_argument("--cli-repeat", type=int, default=3,
                    help="timed runs of the CLI (default 3; the empty run also 3 times)")
    ap.add_argument("--cli-profile", default="dev", choices=["ci", "dev", "nightly"])
    ap.add_argument("--cli-seed", default="1", help="--hypothesis-seed of the CLI run")
    ap.add_argument("--boofuzz-cases", type=int, default=2000)
    ap.add_argument("--boofuzz-python", default=BOOFUZZ_PYTHON,
                    help=f"an interpreter that can import boofuzz (default {BOOFUZZ_PYTHON})")
    ap.add_argument("--target", choices=["c", "reference"], default="c")
    ap.add_argument("--parts", nargs="+", choices=["check", "small", "cli", "boofuzz"],
                    default=["boofuzz", "small", "check", "cli"])
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds after which one child run is killed (default 1800)")
    ap.add_argument("--boofuzz-child", nargs=4, metavar=("PORT", "CASES", "DB", "RECV"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.boofuzz_child:
        port, cases, db, recv = args.boofuzz_child
        boofuzz_child(int(port), int(cases), db, recv == "1")
        return 0
    return bench(args)


def bench(args: argparse.Namespace) -> int:
    from benchlib import REPO, print_load, print_machine, stats, table
    from echo_throughput import (
        TOX_BIN,
        build_c,
        console_script,
        free_port,
        print_code_state,
        server,
        sigterm_unwinds,
    )

    from conformance.harness.process import Proc
    from conformance.harness.testbed import Server

    sigterm_unwinds()
    print_machine()
    print_code_state(["conformance/checks/test_echo.py", "conformance/harness/peers.py",
                      "conformance/plugin.py", "fixtures/echo/src/good_server.c"])
    rows = {
        "check": Row("check", f"sockconf ECHO-1 fuzz check body, {args.examples} examples",
                     "in-process, test_echo_fuzz", "every byte compared + alive"),
        "small": Row("small", f"same exchange, payloads 1..4096 B, {args.small_examples} "
                              "examples", "in-process, echo_roundtrip",
                     "every byte compared + alive"),
        "boofuzz": Row("boofuzz", f"boofuzz, recv off (default), {args.boofuzz_cases} cases",
                       "Session.fuzz()", "none (liveness: connect)"),
        "boofuzz-shm": Row("boofuzz-shm", f"boofuzz, recv off, case log on tmpfs, "
                                          f"{args.boofuzz_cases} cases", "Session.fuzz()",
                           "none (liveness: connect)"),
        "boofuzz-recv": Row("boofuzz-recv", f"boofuzz, receive_data_after_fuzz, "
                                            f"{args.boofuzz_cases} cases", "Session.fuzz()",
                            "none (liveness: connect)"),
        "cli": Row("cli", f"sockconf check CLI, profile {args.cli_profile}", "whole process "
                   "minus empty run", "every byte compared + alive"),
    }
    cli_info: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="sockconf-bench-fuzz-") as td, \
            contextlib.ExitStack() as stack:
        tmp = Path(td)
        work = tmp / "work"
        work.mkdir()
        src = REPO / "fixtures" / "echo" / "src" / "good_server.c"
        if args.target == "c" and src.exists():
            exe = build_c(src, tmp / "echo_good")
            argv_of = lambda port: [str(exe), str(port)]  # noqa: E731
            label = "C echo good_server (-O2)"
        else:
            ref = console_script("sockconf-echo-server")
            argv_of = lambda port: [ref, str(port)]  # noqa: E731
            label = "reference sockconf-echo-server"
        port = free_port()
        running = stack.enter_context(server(label, argv_of(port), port, tmp))
        print(f"target: {label}: "
              f"{' '.join(argv_of(port)).replace(str(tmp), 'T').replace(str(TOX_BIN) + '/', '')}")
        log = running.log
        srv = Server(Proc("server", running.argv, running.popen, log, log), "tcp4", port, None)
        # hypothesis may keep caches in ./.hypothesis: keep them in the temporary folder
        stack.enter_context(contextlib.chdir(work))

        if "boofuzz" in args.parts:
            shm = Path("/dev/shm")
            variants = [("boofuzz", False, work), ("boofuzz-recv", True, work)]
            if shm.is_dir():
                ram = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix="sockconf-bench-fuzz-", dir=shm)))
                variants.insert(1, ("boofuzz-shm", False, ram))
            for rep in range(args.repeat):
                for key, recv, logdir in variants:
                    r = run_boofuzz(args.boofuzz_python, port, args.boofuzz_cases, logdir, recv,
                                    args.timeout)
                    rows[key].runs.append(r)
                    _progress(rep, args.repeat, key, r)
        for key, fn, n in (("small", run_small, args.small_examples),
                           ("check", run_check_body, args.examples)):
            if key not in args.parts:
                continue
            for rep in range(-1, args.repeat):
                r = fn(srv, n)
                if rep >= 0:
                    rows[key].runs.append(r)
                _progress(rep, args.repeat, key, r)
        if not running.alive():
            print("the server died", file=sys.stderr)

        if "cli" in args.parts:
            target = tmp / "echo.toml"
            target.write_text(
                f'name = "{label}"\nprofile = "echo"\n\n[server]\n'
                f"argv = {json.dumps(argv_of('{port}'))}\n"
                'transports = ["tcp4"]\nstartup_timeout = 5.0\n')
            sockconf = console_script("sockconf")
            empties = []
            for _ in range(3):
                dt, rc, summary = run_cli(sockconf, target, work, args.cli_profile,
                                          args.cli_seed, "no_such_check", args.timeout)
                empties.append(dt)
                print(f"CLI empty run {dt:6.2f} s exit {rc}  {summary}", flush=True)
            fixed = stats(empties)[0]
            examples = {"ci": 25, "dev": 100, "nightly": 5000}[args.cli_profile]
            for _ in range(args.cli_repeat):
                dt, rc, summary = run_cli(sockconf, target, work, args.cli_profile,
                                          args.cli_seed, "test_echo_fuzz", args.timeout)
                r = Run(examples, dt - fixed,
                        problem="" if rc == 0 else f"exit {rc}")
                rows["cli"].runs.append(r)
                print(f"CLI {args.cli_profile} run {dt:6.2f} s exit {rc}  {summary}", flush=True)
            cli_info = {"fixed": fixed, "target": target}
        leftovers = sorted(str(p.relative_to(work)) for p in work.rglob("*")
                           if not p.name.startswith("boofuzz-"))
        print_load("at end")

    if leftovers:
        print(f"files hypothesis/pytest left in the working folder: {leftovers[:10]}")
    if cli_info:
        print(f"CLI fixed cost (median of 3 runs selecting no test): {cli_info['fixed']:.2f} s")
    print()
    out = []
    for row in rows.values():
        if not row.runs:
            continue
        med, lo, hi = stats([r.rate for r in row.runs])
        mid = sorted(row.runs, key=lambda r: r.rate)[len(row.runs) // 2]
        avg = mid.payload_bytes / mid.cases if mid.cases else 0.0
        empty = (f"{mid.empty_cases} ({mid.empty_seconds:.1f} s)"
                 if row.key in ("check", "small") else "-")
        slow = (f"{mid.slowest[0]:.2f} s ({mid.slowest[1]} B, {mid.slowest[2]} writes)"
                if row.key in ("check", "small") else "-")
        out.append([row.label, row.measures, row.oracle, str(len(row.runs)),
                    f"{med:.1f}", f"{lo:.1f}", f"{hi:.1f}",
                    str(mid.cases), f"{mid.seconds:.1f}",
                    "-" if row.key == "cli" else f"{avg:,.0f}",
                    "-" if row.key in ("cli",) or not mid.cases
                    else f"{mid.writes / mid.cases:.1f}",
                    empty, slow])
    print(table(["fuzzer", "what runs", "oracle", "runs", "median cases/s", "min", "max",
                 "cases (median run)", "s (median run)", "mean payload B", "mean writes/case",
                 "0-byte cases (their s)", "slowest case"], out))
    problems = [(row.label, r.problem) for row in rows.values() for r in row.runs if r.problem]
    for label, problem in problems:
        print(f"{label}: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _progress(rep: int, total: int, key: str, r: Run) -> None:
    tag = "warm-up" if rep < 0 else f"{rep + 1}/{total}"
    print(f"[{tag}] {key:12s} {r.cases:5d} cases {r.seconds:8.2f} s {r.rate:9.1f} cases/s"
          f"  {r.payload_bytes / max(r.cases, 1):12,.0f} B/case  empty {r.empty_cases}"
          f"  {r.problem or 'ok'}", flush=True)


if __name__ == "__main__":
    from echo_throughput import TerminatedError  # stdlib-only at import time

    try:
        sys.exit(main())
    except (KeyboardInterrupt, TerminatedError):
        sys.exit(130)
