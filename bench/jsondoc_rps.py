#!/usr/bin/env python3
"""jsondoc servers side by side: requests/s, pipelined and with 32 concurrent clients.

Contenders (all on 127.0.0.1, TCP/IPv4, each started once on a fresh port; data
files in one TemporaryDirectory):

  reference --data   sockconf-jsondoc-server --data T/ref.db PORT (SQLite, WAL,
                     synchronous=FULL: every insert is fsync'd before its response)
  reference memory   sockconf-jsondoc-server PORT (no --data: dicts in memory)
  C --data           fixtures/jsondoc/src/good_server.c built with
                     `cc -O2 -pthread ... -lcjson -lsqlite3 -lm`, --data T/c.db PORT
                     (SQLite, WAL, synchronous=FULL)
  C no --data        the same binary without --data (SQLite's private temporary
                     database: no durable file)

(a) pipelined: one connection, --requests (default 20000) requests in batches of
    --batch (default 1000), each batch one sendall() from a writer thread while the
    main thread reads; at most two batches are unanswered at any time.  The mix
    repeats every 4 requests: insert (client-chosen string _id), insert, find by the
    _id just inserted, count of the whole collection (filter {}); = 50 % insert,
    25 % find by _id, 25 % count.  Each run uses a fresh collection.  The time runs
    from the first send to the last response line.  Afterwards every response is
    checked (ok, id, the found document, the count).

(b) concurrent: --clients (default 32) connections, each with exactly one request
    outstanding (send, read its response line, send the next), for --seconds
    (default 3) per run; two workloads timed separately: ping, and insert (a small
    document, server-assigned _id).  req/s = responses received in the window /
    window.  Every response is checked (ok true).  The clients are one
    single-threaded Python selector loop (in this process).

Each measurement: --repeat runs (default 3) per contender, round-robin, after one
warm-up round; the median is reported.  "client CPU" and "server CPU" are CPU
seconds used during the timed windows / wall seconds (a 2-CPU machine has at most
200 %): they show which side is the bottleneck.

    python bench/jsondoc_rps.py [--repeat 3] [--requests 20000] [--batch 1000]
        [--clients 32] [--seconds 3] [--contenders ref-data ref-mem c-data c-mem]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import REPO, print_load, print_machine, stats, table
from echo_throughput import (
    HOST,
    TOX_BIN,
    TerminatedError,
    build_c,
    console_script,
    free_port,
    print_code_state,
    server,
    sigterm_unwinds,
)


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of PID and all its threads so far."""
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return t.user + t.system


@dataclass
class Sample:
    rps: float
    client_cpu: float  # fraction of one CPU
    server_cpu: float
    problem: str = ""
    first_batch: float = float("nan")  # (a): req/s over the first and the last batch
    last_batch: float = float("nan")


# ----------------------------------------------------------------------------- (a) pipelined


def pipelined_requests(coll: str, n: int) -> list[bytes]:
    lines = []
    for i in range(n):
        kind = i % 4
        if kind in (0, 1):
            req = {"op": "insert", "coll": coll, "id": i,
                   "doc": {"_id": f"{coll}-{i}", "n": i, "tag": "bench"}}
        elif kind == 2:
            req = {"op": "find", "coll": coll, "id": i, "filter": {"_id": f"{coll}-{i - 1}"}}
        else:
            req = {"op": "count", "coll": coll, "id": i}
        lines.append(json.dumps(req, separators=(",", ":")).encode() + b"\n")
    return lines


def check_pipelined(coll: str, raw: bytes, n: int) -> str:
    """'' if every one of the N responses is right, else the first problem."""
    lines = raw.split(b"\n")[:-1]
    if len(lines) != n:
        return f"{len(lines)} response lines for {n} requests"
    for i, line in enumerate(lines):
        r = json.loads(line)
        if r.get("ok") is not True or r.get("id") != i:
            return f"request {i}: {line[:200]!r}"
        kind = i % 4
        if kind in (0, 1) and r.get("_id") != f"{coll}-{i}":
            return f"insert {i}: {line[:200]!r}"
        if kind == 2 and [d.get("_id") for d in r.get("docs", [])] != [f"{coll}-{i - 1}"]:
            return f"find {i}: {line[:200]!r}"
        if kind == 3 and r.get("count") != 2 * (i // 4 + 1):
            return f"count {i}: expected {2 * (i // 4 + 1)}, got {line[:200]!r}"
    return ""


def pipelined(port: int, pid: int, coll: str, n: int, batch: int, timeout: float) -> Sample:
    lines = pipelined_requests(coll, n)
    batches = [b"".join(lines[k:k + batch]) for k in range(0, n, batch)]
    answered = 0
    marks: list[float] = []  # when the responses to each batch were all in
    cond = threading.Condition()
    errors: list[BaseException] = []
    buf = bytearray()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:

        def writer() -> None:
            try:
                for k, data in enumerate(batches):
                    def room(k: int = k) -> bool:
                        return answered >= (k - 1) * batch or bool(errors)

                    with cond:  # window: batch k goes out once batch k-2 is answered
                        if not cond.wait_for(room, timeout):
                            raise TimeoutError(f"batch {k}: no room within {timeout} s")
                    if errors:
                        return
                    sock.sendall(data)
            except OSError as e:
                errors.append(e)

        w = threading.Thread(target=writer, daemon=True)
        cpu0, scpu0 = time.process_time(), cpu_seconds(pid)
        t0 = time.perf_counter()
        w.start()
        try:
            while answered < n:
                chunk = sock.recv(1 << 18)
                if not chunk:
                    errors.append(ConnectionError(f"EOF after {answered} responses"))
                    break
                buf += chunk
                with cond:
                    answered += chunk.count(b"\n")
                    cond.notify()
                while len(marks) < min(answered // batch, len(batches)):
                    marks.append(time.perf_counter())
        except OSError as e:
            errors.append(e)
        finally:
            with cond:
                cond.notify()
        dt = time.perf_counter() - t0
        cpu, scpu = time.process_time() - cpu0, cpu_seconds(pid) - scpu0
        w.join(timeout)
    problem = f"{errors[0].__class__.__name__}: {errors[0]}" if errors else ""
    problem = problem or check_pipelined(coll, bytes(buf), n)
    sample = Sample(n / dt, cpu / dt, scpu / dt, problem)
    if len(marks) >= 2 and marks[0] > t0 and marks[-1] > marks[-2]:
        # The first batch goes out alone; the last one is answered after the one before it.
        sample.first_batch = batch / (marks[0] - t0)
        sample.last_batch = batch / (marks[-1] - marks[-2])
    return sample


# ----------------------------------------------------------------------------- (b) concurrent


@dataclass
class _Client:
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    sent: int = 0


def concurrent(port: int, pid: int, clients: int, seconds: float,
               request: Callable[[int, int], bytes], timeout: float) -> Sample:
    """CLIENTS connections, one request in flight each, for SECONDS."""
    cs: list[_Client] = []
    sel = selectors.DefaultSelector()
    lines: list[bytes] = []
    try:
        for _ in range(clients):
            s = socket.create_connection((HOST, port), timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cs.append(_Client(s))
        cpu0, scpu0 = time.process_time(), cpu_seconds(pid)
        t0 = time.perf_counter()
        end = t0 + seconds
        for k, c in enumerate(cs):
            c.sock.sendall(request(k, 0))  # blocking: a short line into an empty buffer
            c.sent = 1
            c.sock.setblocking(False)
            sel.register(c.sock, selectors.EVENT_READ, (k, c))
        last_progress = t0
        while (now := time.perf_counter()) < end:
            if now - last_progress > timeout:
                raise TimeoutError(f"no response for {timeout} s")
            for key, _ in sel.select(end - now):
                k, c = key.data
                try:
                    chunk = c.sock.recv(65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise ConnectionError(f"client {k}: EOF")
                c.inbuf += chunk
                nl = c.inbuf.find(b"\n")
                if nl < 0:
                    continue
                lines.append(bytes(c.inbuf[:nl]))
                del c.inbuf[:nl + 1]
                last_progress = time.perf_counter()
                if last_progress < end:
                    c.sock.setblocking(True)
                    c.sock.sendall(request(k, c.sent))
                    c.sock.setblocking(False)
                    c.sent += 1
        dt = time.perf_counter() - t0
        cpu, scpu = time.process_time() - cpu0, cpu_seconds(pid) - scpu0
    except OSError as e:
        return Sample(float("nan"), 0.0, 0.0, f"{e.__class__.__name__}: {e}")
    finally:
        sel.close()
        for c in cs:
            c.sock.close()
    bad = next((ln for ln in lines if json.loads(ln).get("ok") is not True), None)
    problem = f"response {bad[:200]!r}" if bad is not None else ""
    return Sample(len(lines) / dt, cpu / dt, scpu / dt, problem)


def ping(k: int, i: int) -> bytes:
    return b'{"op":"ping","id":%d}\n' % i


def inserter(coll: str) -> Callable[[int, int], bytes]:
    def insert(k: int, i: int) -> bytes:
        return b'{"op":"insert","coll":"%s","id":%d,"doc":{"client":%d,"n":%d}}\n' % (
            coll.encode(), i, k, i)
    return insert


# ----------------------------------------------------------------------------- main


@dataclass
class Contender:
    key: str
    label: str
    argv: list[str]
    port: int
    pid: int = 0
    results: dict[str, list[Sample]] = field(default_factory=dict)


def contenders(keys: Sequence[str], tmp: Path) -> list[Contender]:
    exe: Path | None = None
    out = []
    for key in keys:
        port = free_port()
        if key.startswith("c-") and exe is None:
            exe = build_c(REPO / "fixtures" / "jsondoc" / "src" / "good_server.c",
                          tmp / "jsondoc_good", ["-lcjson", "-lsqlite3", "-lm"])
        ref = console_script("sockconf-jsondoc-server")
        if key == "ref-data":
            argv = [ref, "--data", str(tmp / "ref.db"), str(port)]
            label = "reference --data (SQLite, fsync per write)"
        elif key == "ref-mem":
            argv, label = [ref, str(port)], "reference, no --data (in memory)"
        elif key == "c-data":
            assert exe is not None
            argv = [str(exe), "--data", str(tmp / "c.db"), str(port)]
            label = "C good_server --data (SQLite, fsync per write)"
        else:
            assert exe is not None
            argv, label = [str(exe), str(port)], "C good_server, no --data (SQLite temp db)"
        out.append(Contender(key, label, argv, port))
    return out


def fs_of(path: Path) -> str:
    """The file system type holding PATH (from /proc/mounts: the longest mount prefix)."""
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], f"{parts[2]} ({parts[0]} on {parts[1]})"
    except OSError:
        pass
    return kind


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="uncounted rounds first (default 1)")
    ap.add_argument("--requests", type=int, default=20000, help="(a) requests (default 20000)")
    ap.add_argument("--batch", type=int, default=1000, help="(a) requests per batch (default 1000)")
    ap.add_argument("--clients", type=int, default=32, help="(b) connections (default 32)")
    ap.add_argument("--seconds", type=float, default=3.0, help="(b) seconds per run (default 3)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds without progress after which a run fails (default 60)")
    ap.add_argument("--contenders", nargs="+", choices=["ref-data", "ref-mem", "c-data", "c-mem"],
                    default=["ref-data", "ref-mem", "c-data", "c-mem"])
    ap.add_argument("--workloads", nargs="+", choices=["pipelined", "ping", "insert"],
                    default=["pipelined", "ping", "insert"])
    args = ap.parse_args(argv)

    sigterm_unwinds()
    print_machine()
    print_code_state(["reference_impl/jsondoc/server.py", "reference_impl/jsondoc/protocol.py",
                      "reference_impl/jsondoc/store.py", "fixtures/jsondoc/src/good_server.c"])
    workloads: list[tuple[str, Callable[[Contender, str], Sample]]] = [
        ("pipelined", lambda c, coll: pipelined(c.port, c.pid, coll, args.requests, args.batch,
                                                args.timeout)),
        ("32 clients: ping", lambda c, coll: concurrent(c.port, c.pid, args.clients,
                                                        args.seconds, ping, args.timeout)),
        ("32 clients: insert", lambda c, coll: concurrent(c.port, c.pid, args.clients,
                                                          args.seconds, inserter(coll),
                                                          args.timeout)),
    ]
    workloads = [(w.replace("32", str(args.clients)), f) for w, f in workloads
                 if w.split()[-1] in args.workloads]
    with tempfile.TemporaryDirectory(prefix="sockconf-bench-jsondoc-") as td, \
            contextlib.ExitStack() as stack:
        tmp = Path(td)
        print(f"data files in a temporary folder on {fs_of(tmp)}")
        cs = contenders(args.contenders, tmp)
        for c in cs:
            c.pid = stack.enter_context(server(c.label, c.argv, c.port, tmp)).popen.pid
            shown = " ".join(c.argv).replace(str(tmp), "T").replace(str(TOX_BIN) + "/", "")
            print(f"  {c.key}: {shown}")
        for name, run in workloads:
            for rep in range(-args.warmup, args.repeat):
                for c in cs:
                    coll = f"{name.split()[-1]}_{rep + args.warmup}"
                    s = run(c, coll)
                    if rep >= 0:
                        c.results.setdefault(name, []).append(s)
                    print(f"[{'warm-up' if rep < 0 else f'{rep + 1}/{args.repeat}'}] {name:20s}"
                          f" {c.key:9s} {s.rps:9.0f} req/s  client CPU {s.client_cpu:4.0%}"
                          f"  server CPU {s.server_cpu:4.0%}  {s.problem or 'ok'}", flush=True)
        print_load("at end")
        sizes = {c.key: (tmp / f"{c.key.split('-')[0]}.db").stat().st_size
                 for c in cs if c.key.endswith("-data")}
    print()
    print(f"data file sizes at the end: "
          f"{', '.join(f'{k} {v / 2**20:.1f} MiB' for k, v in sizes.items()) or '-'}")
    print()
    rows = []
    for name, _ in workloads:
        for c in cs:
            samples = c.results.get(name, [])
            med, lo, hi = stats([s.rps for s in samples])
            ccpu = stats([s.client_cpu * 100 for s in samples])[0]
            scpu = stats([s.server_cpu * 100 for s in samples])[0]
            good = sum(not s.problem for s in samples)
            first = stats([s.first_batch for s in samples])[0]
            last = stats([s.last_batch for s in samples])[0]
            batches = "-" if name != "pipelined" else f"{first:.0f} → {last:.0f}"
            rows.append([name, c.label, str(len(samples)), f"{med:.0f}", f"{lo:.0f}",
                         f"{hi:.0f}", batches, f"{ccpu:.0f} %", f"{scpu:.0f} %",
                         f"{good}/{len(samples)}"])
    print(table(["workload", "server", "runs", "median req/s", "min", "max",
                 "first → last batch req/s (medians)", "client CPU (median)",
                 "server CPU (median)", "responses all correct"], rows))
    problems = [(c.key, n, s.problem) for c in cs for n, ss in c.results.items() for s in ss
                if s.problem]
    for key, name, problem in problems:
        print(f"{key} {name}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, TerminatedError):
        sys.exit(130)
