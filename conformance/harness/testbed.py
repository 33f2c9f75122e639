"""The testbed: what one check gets from the harness.

A check names its clause and asks the testbed for what it needs — a running server,
a client run, a trace, the wire — and never spawns processes or parses /proc itself.
The testbed owns everything it starts: `close()` kills the processes, stops the
capture and removes its temporary files; `save_artifacts()` keeps the evidence of a
failure (target stdout/stderr, strace logs, the pcap) before that.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from conformance.evidence import Doubt, Inconclusive, Violation
from conformance.harness import strace
from conformance.harness.capture import Capture, CaptureUnavailable
from conformance.harness.inspect import listening
from conformance.harness.netns import Isolation
from conformance.harness.process import Proc, Runner, on_exit, pdeath_guard
from conformance.harness.readiness import Listener, NotReady, wait_listening
from conformance.harness.wire import Wire
from conformance.target import Program, Target

LOOPBACK = {"tcp4": "127.0.0.1", "tcp6": "::1", "unix": "", "udp4": "127.0.0.1"}
STREAM_TRANSPORTS = ("tcp4", "tcp6", "unix")  # in the order checks prefer them


@dataclass
class Server:
    """A running server.  `proc` is what was spawned: the program itself, or
    strace running it.  Ending it goes through `signal` and `wait_exit`, which
    reach the program in either case."""
    proc: Proc
    transport: str
    port: int | None
    path: str | None
    trace_log: Path | None = None
    listener: Listener | None = None
    data: str | None = None   # the jsondoc store path it was given ({data})
    tracer: Proc | None = None  # strace attached to it (attach_trace)
    timeout_scale: float = 1.0  # the program's (and strace's slowdown), for every wait on it
    traced: bool = False        # started under strace: `proc` is strace, the program its child

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def listener_pid(self) -> int:
        """The process that holds the listening socket (readiness saw it): the
        program itself under a launcher that does not exec or under strace; the
        spawned process until readiness has looked."""
        return self.listener.pid if self.listener is not None else self.proc.pid

    def signal(self, sig: int) -> None:
        """Send `sig` to the server's process group, as a service manager does: a
        wrapper that does not exec (a launcher script, `npm start`) and what it
        started both get it.  A traced server's group holds strace and the
        program; strace run as `strace -o FILE PROG` blocks fatal signals (its
        -I3 default), so the program alone acts on it, and strace then ends the
        way the program did (an attached strace is in a group of its own)."""
        self.proc.signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to `timeout` s (times the program's timeout_scale) until the
        server and every process of its group have ended: the exit status
        (negative: the signal that ended it), or None if it is still running."""
        return self.proc.wait_group(timeout * self.timeout_scale)

    def stop(self, sig: int, timeout: float) -> int | None:
        """`signal(sig)` then `wait_exit(timeout)`; killed if it does not end then
        (None).  Without a signal (`sig` 0) it is only waited for."""
        if sig:
            self.signal(sig)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.kill()
        return rc

    def kill(self) -> None:
        """SIGKILL the whole group; a traced server's program first, so that strace
        logs its death and writes the end of its log before it is killed too."""
        if self.traced:
            kill_tracees(self.proc)
        self.proc.kill()

    def running(self) -> bool:
        return self.proc.poll() is None

    def status(self) -> str:
        return self.proc.status()


@dataclass
class ClientRun:
    """A program run to its end, the run observation: how it ended (exit status
    or signal, or still running at the timeout and then killed), how long it
    took, what it printed.  Its quality is in doubt only when strace was to run
    it and never did (no trace written): the status is then strace's, not the
    program's."""
    proc: Proc
    rc: int | None
    timed_out: bool
    trace_log: Path | None = None
    elapsed_s: float = 0.0
    timeout_s: float = 0.0

    @property
    def stdout(self) -> bytes:
        return self.proc.stdout()

    @property
    def stderr(self) -> bytes:
        return self.proc.stderr()

    def doubt(self) -> Doubt | None:
        if self.trace_log is not None and not (self.trace_log.exists()
                                               and self.trace_log.stat().st_size):
            return Doubt(f"strace did not run the program ({self.proc.status()}, "
                         f"stderr {self.proc.stderr_tail(200)!r})")
        return None

    def describe(self) -> str:
        status = (f"still running after {self.timeout_s:g} s (killed)" if self.timed_out
                  else f"{self.proc.status()} after {self.elapsed_s:.2f} s")
        return f"{status}; stdout={self.stdout[:200]!r}; stderr={self.stderr[:200]!r}"


@dataclass(frozen=True)
class Seen:
    """Something observed directly — a socket the kernel reported (sock_diag,
    /proc), a process's exit status — for a `Pass` to cite.  Sound as such: what
    it proves is the check's to say."""
    what: str
    record: object = None

    def doubt(self) -> Doubt | None:
        return None


@dataclass
class Testbed:
    __test__ = False  # not a pytest test class
    target: Target
    isolation: Isolation
    workdir: Path
    name: str = "check"
    runner: Runner = field(init=False)
    capture: Capture | None = field(init=False, default=None)
    capture_reason: str | None = field(init=False, default=None)
    _pcap: Path | None = field(init=False, default=None)
    _sockdir: Path | None = field(init=False, default=None)
    _traces: int = field(init=False, default=0)
    _datas: int = field(init=False, default=0)
    _wire: Wire | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.runner = Runner(self.workdir)
        # Every check runs under a capture when the wire is visible: a failure then
        # always comes with its pcap, whichever clause it is about.
        if self.isolation.wire:
            try:
                self.capture = Capture("lo").start()
            except CaptureUnavailable as e:
                self.capture_reason = e.reason
        else:
            self.capture_reason = self.isolation.reason or "packet capture unavailable"

    # -- what the target declares ------------------------------------------------

    @property
    def server_program(self) -> Program:
        if self.target.server is None:
            raise Inconclusive("the target declares no server")
        return self.target.server

    @property
    def client_program(self) -> Program:
        if self.target.client is None:
            raise Inconclusive("the target declares no client")
        return self.target.client

    def primary(self, program: Program) -> str:
        """The transport checks use when the clause is not about transports: the
        first stream one (tcp4 first), since most clauses judge connections."""
        for t in STREAM_TRANSPORTS:
            if t in program.transports:
                return t
        return program.transports[0]

    def require_transport(self, program: Program, transport: str) -> None:
        if transport not in program.transports:
            raise Inconclusive(f"the target does not declare transport {transport}")

    # -- resources ------------------------------------------------------------------

    def free_port(self, transport: str = "tcp4") -> int:
        """A port nothing uses now.  In the private namespace only this worker
        allocates ports, so it stays free until the target binds it."""
        fam = socket.AF_INET6 if transport == "tcp6" else socket.AF_INET
        kind = socket.SOCK_DGRAM if transport == "udp4" else socket.SOCK_STREAM
        with socket.socket(fam, kind) as s:
            # The wildcard (dual-stack for tcp6), as the target will bind it: a port
            # free on ::1 only may be held over IPv4, and a dual-stack bind fails.
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", 0))
            return int(s.getsockname()[1])

    def unix_path(self, name: str = "srv.sock") -> str:
        # sun_path holds 107 bytes: keep socket paths short, outside the workdir.
        if self._sockdir is None:
            self._sockdir = Path(tempfile.mkdtemp(prefix="", dir=scratch("sc-", short=True)))
        return str(self._sockdir / name)

    def need_strace(self) -> None:
        if strace.strace_path() is None:
            raise Inconclusive(strace.STRACE_HINT)

    def _trace_log(self, role: str) -> Path:
        self._traces += 1
        return self.workdir / f"strace-{self._traces:02d}-{role}.log"

    # -- servers ----------------------------------------------------------------------

    def server_argv(self, transport: str, port: int | str | None, path: str | None,
                    options: dict[str, dict[str, object]] | None = None,
                    data: str | None = None) -> list[str]:
        return self.target.command(self.server_program, transport=transport, port=port,
                                   host=LOOPBACK[transport], path=path or "",
                                   data=data if data is not None else self.data_path(),
                                   options=options)

    def data_path(self, name: str = "data") -> str:
        """A fresh path for a jsondoc store (`{data}`), in this check's workdir: a
        new one per call unless `name` repeats (a restart on the same data)."""
        d = self.workdir / "data"
        d.mkdir(exist_ok=True)
        if name == "data":
            self._datas += 1
            name = f"data-{self._datas:02d}"
        return str(d / f"{name}.db")

    def spawn_server(self, argv: Sequence[str], *, transport: str = "tcp4",
                     port: int | None = None, path: str | None = None, trace: bool = False,
                     injections: Sequence[strace.Injection] = (),
                     name: str = "server") -> Server:
        program = self.server_program
        log = None
        cmd = list(argv)
        if trace or injections:
            self.need_strace()
            log = self._trace_log(name)
            cmd = strace.strace_argv(pdeath_guard(cmd), log, injections)
        proc = self.runner.spawn(cmd, name=name, cwd=self.target.base_dir,
                                 env=program.env)
        scale = program.timeout_scale * (strace.slowdown() if log is not None else 1.0)
        return Server(proc, transport, port, path, log, timeout_scale=scale,
                      traced=log is not None)

    def start_server(self, transport: str | None = None, *, port: int | None = None,
                     options: dict[str, dict[str, object]] | None = None, trace: bool = False,
                     injections: Sequence[strace.Injection] = (), ready: bool = True,
                     name: str = "server", data: str | None = None) -> Server:
        """Start the target's server on a fresh port (or unix path) and, unless
        `ready=False`, wait passively until it listens there."""
        program = self.server_program
        transport = transport or self.primary(program)
        self.require_transport(program, transport)
        path = self.unix_path() if transport == "unix" else None
        if transport != "unix" and port is None:
            port = self.free_port(transport)
        data = data if data is not None else self.data_path()
        argv = self.server_argv(transport, port, path, options, data)
        srv = self.spawn_server(argv, transport=transport, port=port, path=path, trace=trace,
                                injections=injections, name=name)
        srv.data = data
        if ready:
            self.wait_ready(srv)
        return srv

    def attach_trace(self, srv: Server, injections: Sequence[strace.Injection] = (),
                     name: str = "attach") -> Path:
        """Trace a running server from now on (strace -p, all threads), with
        `injections` counted from now; returns the log.  Waits until every thread
        is traced, so the next exchange is seen whole."""
        self.need_strace()
        log = self._trace_log(name)
        # The process holding the listener, not a launcher that waits for it.
        target = srv.listener_pid
        tracer = self.runner.spawn(strace.attach_argv(target, log, injections), name=name)
        deadline = time.monotonic() + 5.0
        while strace.traced_by(target) != {tracer.pid}:
            if tracer.poll() is not None or srv.proc.poll() is not None:
                raise Inconclusive(f"could not trace the running server: strace {tracer.status()}, "
                                   f"{tracer.stderr_tail(200)!r}; server {srv.proc.status()}")
            if time.monotonic() >= deadline:
                raise Inconclusive("strace could not attach to the running server within 5 s "
                                   "(ptrace not permitted here?)")
            time.sleep(0.005)
        srv.trace_log = log
        srv.tracer = tracer
        return log

    def trace_done(self, srv: Server, timeout: float = 5.0) -> None:
        """Wait until the strace attached to `srv` (now ended) has written its
        whole log; kill it if it does not end."""
        if srv.tracer is not None and srv.tracer.wait(timeout) is None:
            srv.tracer.kill()

    @property
    def startup_timeout(self) -> float:
        """How long the server may take to listen: its startup_timeout, scaled."""
        program = self.server_program
        return program.startup_timeout * program.timeout_scale

    @property
    def traced_startup_timeout(self) -> float:
        """The same under strace: also times strace's measured slowdown here."""
        return self.startup_timeout * strace.slowdown()

    def wait_ready(self, srv: Server) -> Listener:
        try:
            srv.listener = wait_listening(
                srv.pid, transport=srv.transport, port=srv.port, path=srv.path,
                timeout=self.traced_startup_timeout if srv.traced else self.startup_timeout,
                exited=srv.proc.poll,
                stderr_tail=srv.proc.stderr_tail)
        except NotReady as e:
            raise Violation(f"server not ready: {e.reason}"
                            + (f" ({e.detail})" if getattr(e, "detail", "") else "")) from None
        return srv.listener

    def exit_or_listen(self, proc: Proc, timeout: float | None = None) -> tuple[str, object]:
        """Watch a process that should exit without ever listening: returns
        ("listen", [SockEntry...]) as soon as it listens anywhere, ("exit", status)
        when it ends, ("running", None) if neither happened within `timeout`
        (default: the server's scaled startup timeout)."""
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        delay = 0.001
        while True:
            found = listening(proc.pid)
            if found:
                return "listen", found
            rc = proc.poll()
            if rc is not None:
                return "exit", rc
            if time.monotonic() >= deadline:
                return "running", None
            # Sleeps until the next look for a listener, but an exit ends it at once.
            proc.wait(delay)
            delay = min(delay * 2, 0.02)

    # -- clients --------------------------------------------------------------------------

    def client_argv(self, transport: str, port: int | str | None, path: str | None = None,
                    host: str | None = None,
                    options: dict[str, dict[str, object]] | None = None) -> list[str]:
        return self.target.command(self.client_program, transport=transport, port=port,
                                   host=host if host is not None else LOOPBACK[transport],
                                   path=path or "", options=options)

    def program_of(self, argv: Sequence[str]) -> Program:
        """The declared program `argv` runs (the client or the server, for its
        timeout_scale and env): the one whose command line starts the same way,
        placeholders aside — the server's on a tie (usage runs drop arguments)."""
        best: tuple[int, Program] | None = None
        for program in (self.target.server, self.target.client):
            if program is None:
                continue
            for template in {program.argv, *program.transport_argv.values()}:
                literal = [_literal(a) for a in template]
                same = 0
                for want, got in zip(literal, argv, strict=False):
                    if want is None or want != got:
                        break
                    same += 1
                if best is None or same > best[0]:
                    best = (same, program)
        if best is None:
            raise Inconclusive("the target declares no program")
        return best[1]

    def spawn_client(self, argv: Sequence[str], *, trace: bool = False,
                     injections: Sequence[strace.Injection] = (), name: str = "client",
                     program: Program | None = None) -> tuple[Proc, Path | None]:
        """Start `argv` (a client, or a server meant to exit by itself) with its
        program's environment; returns it and its trace log."""
        program = program or self.program_of(argv)
        log = None
        cmd = list(argv)
        if trace or injections:
            self.need_strace()
            log = self._trace_log(name)
            cmd = strace.strace_argv(pdeath_guard(cmd), log, injections)
        proc = self.runner.spawn(cmd, name=name, cwd=self.target.base_dir,
                                 env=program.env)
        return proc, log

    def run(self, argv: Sequence[str], *, timeout: float = 5.0, trace: bool = False,
            injections: Sequence[strace.Injection] = (), name: str = "client",
            program: Program | None = None) -> ClientRun:
        """Run a program to its end (killed after `timeout` s, times its
        timeout_scale, and under strace times strace's slowdown): a client, or a
        server that is expected to exit by itself (usage, bad port, bind failure)."""
        program = program or self.program_of(argv)
        limit = timeout * program.timeout_scale
        if trace or injections:
            limit *= strace.slowdown()
        t0 = time.monotonic()
        proc, log = self.spawn_client(argv, trace=trace, injections=injections, name=name,
                                      program=program)
        rc = proc.wait_group(limit)
        timed_out = rc is None
        if timed_out:
            if log is not None:
                kill_tracees(proc)
            proc.kill()
        return ClientRun(proc, rc, timed_out, log, time.monotonic() - t0, limit)

    # -- evidence -------------------------------------------------------------------------

    def require_wire(self) -> None:
        """Inconclusive now (not halfway through) when the wire cannot be seen here."""
        if self.capture is None:
            raise Inconclusive(f"wire evidence unavailable: {self.capture_reason}")

    def wire(self) -> Wire:
        """What the capture saw so far (the capture is stopped: call this once the
        exchange is over), as an observation whose doubt() says whether it was
        lossless; Inconclusive (skip) when the wire cannot be seen here."""
        if self.capture is None:
            raise Inconclusive(f"wire evidence unavailable: {self.capture_reason}")
        if self._wire is None:
            self.capture.stop()
            self._wire = Wire.of(self.capture)
        return self._wire

    def pcap(self) -> Path | None:
        if self.capture is None:
            return None
        if self._pcap is None:
            self.capture.stop()
            self._pcap = self.capture.write_pcap(self.workdir / "capture.pcap")
        return self._pcap

    def save_artifacts(self, dest: Path) -> list[str]:
        """Copy the evidence of this check into `dest`; returns the file paths."""
        dest.mkdir(parents=True, exist_ok=True)
        saved: list[str] = []
        self.pcap()
        for f in sorted(self.workdir.iterdir()):
            if f.is_file() and f.stat().st_size > 0 or f.suffix in (".stdout", ".stderr"):
                shutil.copy2(f, dest / f.name)
                saved.append(str(dest / f.name))
        return saved

    def close(self) -> None:
        try:
            self.runner.close()
        finally:
            if self.capture is not None:
                self.capture.stop()
            if self._sockdir is not None:
                shutil.rmtree(self._sockdir, ignore_errors=True)


def kill_tracees(tracer: Proc, timeout: float = 5.0) -> None:
    """SIGKILL every process strace traces (its descendants), then wait up to
    `timeout` for strace to log their deaths and end by itself."""
    try:
        tracees = psutil.Process(tracer.pid).children(recursive=True)
    except psutil.Error:
        return
    for p in tracees:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    tracer.wait(timeout)


_SCRATCH: dict[str, Path] = {}


def scratch(prefix: str = "sockconf-", *, short: bool = False) -> Path:
    """This process's scratch directory (one per prefix; in $TMPDIR, or in /tmp
    when `short` paths are needed): removed when the process ends, also on Ctrl-C
    or SIGTERM, so an interrupted run leaves nothing behind."""
    if prefix not in _SCRATCH:
        d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if short else None))
        _SCRATCH[prefix] = d
        on_exit(lambda: shutil.rmtree(d, ignore_errors=True))
    return _SCRATCH[prefix]


def _literal(arg: str) -> str | None:
    """A program argument as it is run when it is a literal or `{python}`; None
    for one that carries another placeholder."""
    if arg == "{python}":
        return sys.executable
    return None if "{" in arg else arg


def lines(data: bytes) -> list[str]:
    return data.decode("utf-8", "replace").splitlines()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120] or "check"
