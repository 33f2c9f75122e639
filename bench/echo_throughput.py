#!/usr/bin/env python3
"""Echo servers side by side: one-stream throughput and concurrent clients held.

Contenders (all on 127.0.0.1, TCP/IPv4, each started once on a fresh port):

  reference  sockconf-echo-server PORT (reference_impl/echo: Python, a thread per client)
  C good     fixtures/echo/src/good_server.c built with `cc -O2 -pthread` into a
             temporary folder (a detached thread per client, 16 KiB buffer)
  socat      socat TCP-LISTEN:PORT,reuseaddr,fork EXEC:cat (a process per client:
             socat forks, the child execs cat and relays through a socketpair)

Throughput: one connection per run; the payload is --size bytes (default 16 MiB) of
random data; a writer thread sendall()s it while the main thread recv_into()s the
echo.  The time runs from the first send to the last echoed byte (connect not
included); MB/s = 10^6 bytes/s of payload.  Every echo is compared with what was
sent (after the clock stops).  One warm-up run per contender, then --repeat rounds,
round-robin (run 1 of every contender, then run 2, ...).

Concurrent clients held: for N in --steps (default 32 64 128 256 512 1024), on a
fresh set of connections:
  ramp     open the N clients one by one; each sends a 12-byte tag and must get it
           back within --deadline s (default 2) before the next one connects, then
           stays connected and idle;
  burst    with all N open, every client sends a second tag at once; each must get
           it back within --deadline s of the burst.
The largest N where every client passed both is reported; the steps stop at the
first failure.  RLIMIT_NOFILE of this process (inherited by the servers) is raised
to hold 2N sockets and the server side.

Every server runs in its own process group, SIGKILLed on every exit path (also on
Ctrl-C / SIGTERM); temporary files live in one TemporaryDirectory.

    python bench/echo_throughput.py [--repeat 7] [--size 16777216]
        [--steps 32 64 128 256 512 1024] [--contenders reference c socat]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import REPO, print_load, print_machine, stats, table

HOST = "127.0.0.1"
TOX_BIN = REPO / ".tox" / "py311" / "bin"
READY_TIMEOUT = 10.0


# ----------------------------------------------------------------------------- shared helpers
# (jsondoc_rps.py and fuzz_throughput.py import these)


def free_port() -> int:
    """A port the OS just handed out (bind to 0, close): a tiny reuse race, no fixed port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def build_c(src: Path, out: Path, libs: Sequence[str] = ()) -> Path:
    """cc -O2 -pthread SRC -o OUT [LIBS]; exits with the compiler's message on failure."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("no C compiler (cc or gcc) on PATH")
    cmd = [cc, "-O2", "-pthread", "-Wall", "-Wextra", "-o", str(out), str(src), *libs]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr}")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    print(f"built {src.relative_to(REPO)} (sha256 {digest}..., "
          f"{time.strftime('%H:%M:%S', time.gmtime(src.stat().st_mtime))} UTC mtime) "
          f"with: cc -O2 -pthread -Wall -Wextra {' '.join(libs)}".rstrip(), flush=True)
    return out


def print_code_state(paths: Sequence[str]) -> None:
    """git HEAD and a short sha256 + mtime of each file the numbers depend on (the
    working tree may differ from HEAD while a benchmark runs)."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, timeout=30).stdout.strip()
    print(f"code: git HEAD {head or '?'}; files:")
    for rel in paths:
        f = REPO / rel
        if f.exists():
            mtime = time.strftime("%H:%M:%S", time.gmtime(f.stat().st_mtime))
            digest = hashlib.sha256(f.read_bytes()).hexdigest()[:12]
            print(f"  {rel}  sha256 {digest}...  mtime {mtime} UTC")


def console_script(name: str) -> str:
    """The tox venv's console script NAME (else the one on PATH)."""
    path = TOX_BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def raise_nofile(want: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to `want` (capped by the hard limit; root may
    raise the hard one too).  Returns the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new_hard = hard if hard == resource.RLIM_INFINITY or hard >= want else want
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, new_hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


class TerminatedError(Exception):
    """SIGTERM arrived: unwinds like Ctrl-C so that every `finally` kills its servers."""


def sigterm_unwinds() -> None:
    def handler(signum: int, frame: object) -> None:
        raise TerminatedError(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@dataclass
class Running:
    name: str
    argv: list[str]
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, limit: int = 400) -> str:
        try:
            return self.log.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""


def kill_group(popen: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group led by POPEN (start_new_session) and reap the leader."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    try:
        popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        print(f"warning: pid {popen.pid} not reaped within 5 s", file=sys.stderr)


@contextlib.contextmanager
def server(name: str, argv: list[str], port: int, logdir: Path) -> Iterator[Running]:
    """Start ARGV in its own session/process group (stdout+stderr to a log file), wait
    passively until it listens on PORT (conformance.harness.readiness: /proc +
    sock_diag, no probe connection), yield it; kill the whole group on the way out."""
    from conformance.harness.readiness import wait_listening

    log = logdir / f"{name.replace(' ', '_')}-{port}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        running = Running(name, argv, port, popen, log)
        wait_listening(popen.pid, transport="tcp4", port=port, timeout=READY_TIMEOUT,
                       exited=popen.poll, stderr_tail=running.log_tail)
        yield running
    finally:
        kill_group(popen)


def tree_usage(pid: int) -> str:
    """'P proc, T thr, M MiB PSS' of PID and its descendants.  PSS (proportional set
    size, from smaps_rollup) shares each shared page among the processes mapping
    it, so the sum over many forked processes is not inflated as RSS would be."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return "?"
    threads = pss = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            threads += p.num_threads()
            pss += p.memory_full_info().pss
    return f"{len(procs)} proc, {threads} thr, {pss / 2**20:.0f} MiB PSS"


# ----------------------------------------------------------------------------- throughput


def echo_once(port: int, payload: bytes, timeout: float) -> tuple[float, bool, str]:
    """(seconds from first send to last echoed byte, identical?, problem or '')."""
    got = bytearray(len(payload))
    view = memoryview(got)
    errors: list[BaseException] = []
    with socket.create_connection((HOST, port), timeout=timeout) as sock:

        def writer() -> None:
            try:
                sock.sendall(payload)
            except OSError as e:
                errors.append(e)

        w = threading.Thread(target=writer, daemon=True)
        n = 0
        t0 = time.perf_counter()
        w.start()
        try:
            while n < len(payload):
                k = sock.recv_into(view[n:], min(1 << 20, len(payload) - n))
                if k == 0:
                    break
                n += k
        except OSError as e:
            errors.append(e)
        dt = time.perf_counter() - t0
        w.join(timeout)
    view.release()
    problem = ""
    if errors:
        problem = f"{errors[0].__class__.__name__}: {errors[0]}"
    elif n < len(payload):
        problem = f"EOF after {n} of {len(payload)} bytes"
    return dt, n == len(payload) and bytes(got) == payload, problem


# ----------------------------------------------------------------------------- clients held


@dataclass
class Held:
    n: int
    ok: bool
    detail: str = ""
    ramp_s: float = 0.0
    burst_s: float = 0.0  # time until the last burst echo arrived
    usage: str = ""


def _tag(kind: str, i: int) -> bytes:
    return f"{kind}{i:06d}\n".encode().rjust(12, b"-")


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = b""
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            break
        if not chunk:
            break
        buf += chunk
    return buf


def hold(srv: Running, n: int, deadline: float) -> Held:
    """Ramp up to N connected clients, then a burst; see the module docstring."""
    socks: list[socket.socket] = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            tag = _tag("r", i)
            try:
                s = socket.create_connection((HOST, srv.port), timeout=deadline)
            except OSError as e:
                return Held(n, False, f"ramp: client {i + 1} connect: {e.__class__.__name__}")
            socks.append(s)
            try:
                s.sendall(tag)
                got = _recv_exact(s, len(tag), time.monotonic() + deadline)
            except OSError as e:
                return Held(n, False, f"ramp: client {i + 1}: {e.__class__.__name__}")
            if got != tag:
                return Held(n, False, f"ramp: client {i + 1} got {got!r} within {deadline} s "
                                      f"({len(socks) - 1} others idle)")
        ramp = time.monotonic() - t0
        return _burst(srv, socks, deadline, ramp)
    finally:
        for s in socks:
            s.close()


def _burst(srv: Running, socks: list[socket.socket], deadline: float, ramp: float) -> Held:
    n = len(socks)
    want = {s.fileno(): _tag("b", i) for i, s in enumerate(socks)}
    got = {fd: b"" for fd in want}
    sel = selectors.DefaultSelector()
    try:
        t0 = time.monotonic()
        for s in socks:
            s.setblocking(False)
            s.send(want[s.fileno()])  # 12 bytes into an empty send buffer: never partial
            sel.register(s, selectors.EVENT_READ)
        pending = n
        last = t0
        while pending and time.monotonic() < t0 + deadline:
            for key, _ in sel.select(max(0.0, t0 + deadline - time.monotonic())):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                fd = ready.fileno()
                try:
                    chunk = ready.recv(64)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(ready)
                    continue
                got[fd] += chunk
                if len(got[fd]) >= len(want[fd]):
                    sel.unregister(ready)
                    pending -= 1
                    last = time.monotonic()
        bad = [i for i, s in enumerate(socks) if got[s.fileno()] != want[s.fileno()]]
        usage = tree_usage(srv.popen.pid)
    finally:
        sel.close()
    if bad:
        return Held(n, False, f"burst: {len(bad)} of {n} clients without their echo within "
                              f"{deadline} s (first: client {bad[0] + 1})", ramp)
    return Held(n, True, "", ramp, last - t0, usage)


# ----------------------------------------------------------------------------- main


@dataclass
class Contender:
    key: str
    label: str
    model: str
    argv: list[str]
    port: int = 0
    times: list[float] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)


def contenders(keys: Sequence[str], tmp: Path) -> list[Contender]:
    out = []
    for key in keys:
        port = free_port()
        if key == "reference":
            out.append(Contender(key, "reference (sockconf-echo-server)",
                                 "Python, thread per client", [
                                     console_script("sockconf-echo-server"), str(port)], port))
        elif key == "c":
            exe = build_c(REPO / "fixtures" / "echo" / "src" / "good_server.c", tmp / "echo_good")
            out.append(Contender(key, "C good_server (-O2)", "C, thread per client",
                                 [str(exe), str(port)], port))
        elif key == "socat":
            socat = shutil.which("socat") or "socat"
            out.append(Contender(key, "socat … fork EXEC:cat", "process per client (+ cat)",
                                 [socat, f"TCP-LISTEN:{port},reuseaddr,fork", "EXEC:cat"],
                                 port))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per contender (default 7)")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted runs first (default 1)")
    ap.add_argument("--size", type=int, default=16 * 2**20, help="payload bytes (default 16 MiB)")
    ap.add_argument("--steps", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024],
                    metavar="N", help="client counts to try (default 32 ... 1024)")
    ap.add_argument("--deadline", type=float, default=2.0,
                    help="seconds each client may wait for its echo (default 2)")
    ap.add_argument("--contenders", nargs="+", choices=["reference", "c", "socat"],
                    default=["reference", "c", "socat"])
    ap.add_argument("--skip", choices=["throughput", "held"], action="append", default=[],
                    help="leave one part out")
    args = ap.parse_args(argv)
    if min(args.steps) < 1 or max(args.steps) > 1024:
        ap.error("--steps must be within 1..1024")

    sigterm_unwinds()
    # Our 2N client sockets plus slack; the servers inherit the limit (they hold N each).
    nofile = raise_nofile(2 * max(args.steps) + 256)
    print_machine()
    print(f"RLIMIT_NOFILE now {nofile[0]} (soft) / {nofile[1]} (hard)")
    print_code_state(["reference_impl/echo/server.py", "reference_impl/echo/protocol.py",
                      "fixtures/echo/src/good_server.c"])
    payload = os.urandom(args.size)
    with tempfile.TemporaryDirectory(prefix="sockconf-bench-echo-") as td, \
            contextlib.ExitStack() as stack:
        tmp = Path(td)
        cs = contenders(args.contenders, tmp)
        running = {c.key: stack.enter_context(server(c.label, c.argv, c.port, tmp)) for c in cs}
        for c in cs:
            shown = " ".join(c.argv).replace(str(tmp), "T").replace(str(TOX_BIN) + "/", "")
            print(f"  {c.label}: {shown}")

        if "throughput" not in args.skip:
            timeout = 60.0 + args.size / 1e6
            for rep in range(-args.warmup, args.repeat):
                for c in cs:
                    dt, same, problem = echo_once(c.port, payload, timeout)
                    if rep < 0:
                        continue
                    c.times.append(dt)
                    if not same:
                        c.bad.append(problem or "bytes differ")
                    print(f"[{rep + 1}/{args.repeat}] {c.key:9s} {args.size / dt / 1e6:9.1f} MB/s"
                          f"  {'ok' if same else 'MISMATCH ' + problem}", flush=True)

        if "held" not in args.skip:
            for c in cs:
                for n in sorted(args.steps):
                    srv = running[c.key]
                    res = hold(srv, n, args.deadline)
                    c.held.append(res)
                    print(f"{c.key:9s} N={n:5d} {'held' if res.ok else 'FAILED'}  ramp "
                          f"{res.ramp_s:.2f} s  burst {res.burst_s * 1e3:.1f} ms  {res.usage}"
                          f"{res.detail}", flush=True)
                    if not res.ok or not srv.alive():
                        break
                    time.sleep(0.5)  # let the server retire the previous step's clients
        print_load("at end")
        dead = [c.label for c in cs if not running[c.key].alive()]

    print()
    if "throughput" not in args.skip:
        rows = []
        for c in cs:
            med, lo, hi = stats([args.size / t / 1e6 for t in c.times])
            rows.append([c.label, c.model, str(len(c.times)), f"{med:.1f}", f"{lo:.1f}",
                         f"{hi:.1f}", f"{len(c.times) - len(c.bad)}/{len(c.times)}"])
        print(f"one stream, {args.size} bytes per run, MB/s = 10^6 B/s:")
        print(table(["server", "model", "runs", "median MB/s", "min MB/s", "max MB/s",
                     "echo identical"], rows))
        print()
    if "held" not in args.skip:
        rows = []
        for c in cs:
            ok = [h for h in c.held if h.ok]
            best = ok[-1] if ok else None
            fail = next((h for h in c.held if not h.ok), None)
            rows.append([
                c.label,
                (f"{best.n} (the cap)" if best.n == max(args.steps) else str(best.n))
                if best else "0",
                f"N={fail.n}: {fail.detail}" if fail else "none up to the cap",
                f"{best.ramp_s:.2f}" if best else "-",
                f"{best.burst_s * 1e3:.1f}" if best else "-",
                best.usage if best else "-",
            ])
        print(f"concurrent clients held (steps {' '.join(map(str, sorted(args.steps)))}; "
              f"each echo within {args.deadline:g} s):")
        print(table(["server", "largest N held", "first failure", "ramp s (at largest N)",
                     "burst: last echo ms", "server at largest N"], rows))
    for c in cs:
        for problem in c.bad:
            print(f"{c.label}: echo mismatch: {problem}", file=sys.stderr)
    if dead:
        print(f"server(s) died during the run: {', '.join(dead)}", file=sys.stderr)
    return 1 if dead or any(c.bad for c in cs) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, TerminatedError):
        sys.exit(130)
