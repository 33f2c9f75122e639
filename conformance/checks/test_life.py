"""LIFE — the server lifecycle, from syscall order to the last FIN."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Sequence

from conformance.checks import profiles, support
from conformance.clauses import clause, client_side, transports
from conformance.evidence import Inconclusive, Pass, require
from conformance.harness import lifecycle, peers, syscalls
from conformance.harness.inspect import (
    ListenDiag,
    UnixListenDiag,
    listen_diag,
    process_tree,
    sockets_on_port,
    unix_listen_diag,
)
from conformance.harness.testbed import Seen, Server, Testbed, Violation

WILDCARDS = {"tcp4": ("0.0.0.0", "::"), "tcp6": ("::",), "udp4": ("0.0.0.0", "::")}


# -- LIFE-0 -----------------------------------------------------------------------------------

def _judge_lifecycle(life: lifecycle.Lifecycle) -> Pass:
    """A violation read off a trace the model followed, or a pass built from it;
    a trace not understood (unparsed lines, the target's socket lost) judges
    neither way."""
    require(life, context=f"{life.role} lifecycle")
    bad = life.violations
    if bad:
        raise Violation(f"{life.role} lifecycle: {bad[0]}"
                        + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""))
    return Pass(f"{life.role} lifecycle in order: {life.summary()}", life)


@clause("LIFE-0")
def test_server_syscall_order(bed: Testbed) -> Pass:
    srv = bed.start_server(support.stream_transport(bed), trace=True)
    support.exchange(bed, srv)
    # A one-shot server ends by itself (then explicit closes are required); a
    # concurrent one is stopped by SIGTERM after the exchange.
    rc = support.finish(bed, srv)
    complete = rc is not None and profiles.of(bed).one_shot
    if srv.trace_log is None or srv.listener is None:
        raise RuntimeError("a traced, ready server without its log or listener")
    entry = srv.listener.entry
    trace = syscalls.parse(srv.trace_log).anchored(syscalls.Anchor.listener(entry.inode,
                                                                           entry.where))
    return _judge_lifecycle(lifecycle.follow(trace, "server", complete=complete))


@client_side
@clause("LIFE-0")
def test_client_syscall_order(bed: Testbed) -> Pass:
    bed.need_strace()
    transport = bed.primary(bed.client_program)
    path = bed.unix_path("peer.sock") if transport == "unix" else None
    with peers.PeerServer(peers.greet(), transport, path=path) as peer:
        run = bed.run(bed.client_argv(transport, peer.port, path), trace=True)
    if run.trace_log is None:
        raise RuntimeError("a traced client run without its log")
    require(run)  # strace ran the program
    anchor = syscalls.Anchor.connection(port=None if path else peer.port, path=path)
    trace = syscalls.parse(run.trace_log).anchored(anchor)
    return _judge_lifecycle(lifecycle.follow(trace, "client", complete=not run.timed_out))


# -- LIFE-1 -----------------------------------------------------------------------------------

@clause("LIFE-1")
def test_listens_on_wildcard(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    listener = srv.listener
    if listener is None:
        raise RuntimeError("start_server returned without its listener")
    entry = listener.entry
    seen = Seen(f"{entry.kind} {entry.state} socket of pid {listener.pid} fd {listener.fd}", entry)
    took = f"{listener.elapsed_s:.2f} s after start"
    if server_transport == "unix":
        if entry.local != srv.path:
            raise Violation(f"listens on {entry.local!r}, not on the given path {srv.path!r}")
        return Pass(f"listens on {srv.path} {took}", seen)
    if not isinstance(entry.local, tuple):
        raise RuntimeError(f"an inet listener with a non-inet address: {entry}")
    addr, port = entry.local
    if port != srv.port:
        raise Violation(f"listens on port {port}, not on the given port {srv.port}")
    if addr not in WILDCARDS[server_transport]:
        raise Violation(f"listens on {addr}:{port}, not on the wildcard address "
                        f"({' or '.join(WILDCARDS[server_transport])})")
    if server_transport in ("tcp4", "udp4") and addr == "::" and entry.v6only:
        raise Violation(f"listens on [::]:{port} with IPV6_V6ONLY: IPv4 clients cannot connect")
    return Pass(f"listens on {entry.where} {took}", seen)


# -- LIFE-2 -----------------------------------------------------------------------------------

@clause("LIFE-2")
def test_backlog_at_least_5(bed: Testbed) -> Pass:
    transport = support.stream_transport(bed)
    srv = bed.start_server(transport)
    diags: Sequence[ListenDiag | UnixListenDiag]
    if srv.path is not None:
        diags, where = unix_listen_diag(srv.path), srv.path
    elif srv.port is not None:
        kind = "tcp6" if srv.listener and srv.listener.entry.kind == "tcp6" else "tcp4"
        diags, where = listen_diag(srv.port, kind), f"port {srv.port}"
    else:
        raise RuntimeError(f"a {transport} server without port or path")
    if not diags:
        raise Inconclusive(f"sock_diag shows no listener on {where} (server {srv.status()})")
    backlog = diags[0].backlog
    if backlog < 5:
        raise Violation(f"listen backlog is {backlog} (at least 5 required)")
    return Pass(f"listen backlog {backlog} on {where} (sock_diag)",
                Seen(f"sock_diag listener on {where}", diags[0]))


# -- LIFE-3 -----------------------------------------------------------------------------------

@clause("LIFE-3")
def test_one_shot(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    with support.blamed_on_target("connecting for the greeting", srv):
        got = peers.fetch_greeting(srv.transport, srv.port, srv.path,
                                   timeout=5.0 * srv.timeout_scale)
    rc = srv.wait_exit(5.0)
    if rc is None:
        raise Violation(f"after serving one client ({got.describe()}) the server is still "
                        f"running {5.0 * srv.timeout_scale:g} s later")
    if rc != 0:
        raise Violation(f"after serving one client: {srv.status()} (expected exit status 0); "
                        f"stderr {srv.proc.stderr()[:120]!r}")
    free = _port_free(srv, "after exit")
    return Pass(f"served one client ({got.describe()}), then exit status 0; {free.what}",
                Seen("exit status", rc), free)


def _port_free(srv: Server, when: str) -> Seen:
    """"The port is free": nothing listens on it (or accepts on the unix path) any
    more.  TIME_WAIT left by an active close is normal TCP; restarting through it
    is LIFE-5's concern."""
    if srv.transport == "unix":
        try:
            peers.connect("unix", path=srv.path, timeout=1.0).close()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            # Any other failure (EMFILE, EACCES in our process) proves nothing.
            return Seen(f"nothing accepts on {srv.path} any more ({e.strerror})")
        raise Violation(f"{when}: something still accepts on {srv.path}")
    if srv.port is None:
        raise RuntimeError(f"a {srv.transport} server without a port")
    if srv.transport == "udp4":
        bound = [e for e in sockets_on_port(srv.port, local_only=True)
                 if e.kind.startswith("udp") and e.state == "UNCONN"]
        if bound:
            raise Violation(f"{when}: UDP port {srv.port} is still bound ({bound[0].local})")
        return Seen(f"UDP port {srv.port} no longer bound")
    listeners = [e for e in sockets_on_port(srv.port) if e.state == "LISTEN"]
    if listeners:
        raise Violation(f"{when}: port {srv.port} still has a listener ({listeners[0].local})")
    return Seen(f"no listener on port {srv.port} any more")


# -- LIFE-4 -----------------------------------------------------------------------------------

@transports("tcp4", "tcp6", "unix")
@clause("LIFE-4")
def test_graceful_end(bed: Testbed, server_transport: str) -> Pass:
    srv = bed.start_server(server_transport)
    got = support.exchange(bed, srv)     # a refusal or reset there: a Violation
    if profiles.of(bed).one_shot:
        srv.wait_exit(5.0)
    if server_transport == "unix":
        # No wire on AF_UNIX: the socket itself tells EOF from reset.
        if got.end != "fin":
            raise Violation(f"the connection ended by {got.end} after {len(got.data)} byte(s), not EOF")
        return Pass(f"AF_UNIX: read {len(got.data)} byte(s), then EOF")
    support.settle()
    if srv.port is None:
        raise RuntimeError("a TCP server without a port")
    wire = bed.wire()
    conns = wire.tcp_connections(srv.port)
    if not conns:
        require(wire, context="LIFE-4")
        raise RuntimeError(f"a lossless capture shows no TCP connection to port {srv.port} "
                           f"(our socket saw {got.describe()})")
    conn = conns[0]
    rst = conn.rst()
    if rst:
        who = "server" if rst[0].from_server else "client"
        raise Violation(f"{who} sent RST at packet {rst[0].index}: {conn.describe()}")
    fin = conn.fin(from_server=True)
    late = [s for s in conn.payload_segments(from_server=True)
            if fin is not None and s.index > fin.index]
    if late and fin is not None:
        raise Violation(f"server data at packet {late[0].index} after its FIN at packet {fin.index}")
    # Absences from here on ("no FIN", bytes not delivered): only a complete
    # capture shows them.
    require(wire, context="LIFE-4")
    if fin is None:
        raise Violation(f"no FIN from the server: {conn.describe()}")
    if got.end != "fin" or got.data != conn.payload(from_server=True):
        raise Violation(f"the client socket read {got.describe()}; the wire carried "
                        f"{conn.payload(from_server=True)!r}")
    return Pass(f"{len(got.data)} byte(s) delivered, then the server's FIN at packet "
                f"{fin.index}, no RST ({len(conn.segments)} segments on the wire)", wire)


# -- LIFE-5 -----------------------------------------------------------------------------------

@clause("LIFE-5")
def test_restart_during_time_wait(bed: Testbed) -> Pass:
    transport = support.stream_transport(bed)
    if transport == "unix":
        raise Inconclusive("TIME_WAIT is a TCP state, and the target serves no TCP")
    srv = bed.start_server(transport)
    if srv.port is None:
        raise RuntimeError(f"a {transport} server without a port")
    if profiles.of(bed).one_shot:
        with support.blamed_on_target("connecting for the greeting", srv):
            got = peers.fetch_greeting(srv.transport, srv.port, srv.path,
                                       timeout=5.0 * srv.timeout_scale)
        if srv.wait_exit(5.0) is None:
            raise Inconclusive(f"the server did not exit after one client ({got.describe()}): "
                               "LIFE-3's concern")
    else:
        support.stop_while_connected(bed, srv)
    waiting = [e for e in sockets_on_port(srv.port) if e.state == "TIME_WAIT"
               and e.port == srv.port]
    if not waiting:
        raise Inconclusive("the server did not close first (no TIME_WAIT on its side): "
                           "nothing to test")
    again = bed.start_server(transport, port=srv.port, ready=False, name="restart")
    what, value = bed.exit_or_listen(again.proc)
    if what != "listen":
        status = again.status() if what == "exit" else "not listening"
        raise Violation(f"restart on port {srv.port} during TIME_WAIT failed: {status}, "
                        f"stderr {again.proc.stderr()[:120]!r} (SO_REUSEADDR before bind?)")
    return Pass(f"restarted on port {srv.port} while {len(waiting)} connection(s) of the "
                "first run were in TIME_WAIT, and listened",
                Seen("TIME_WAIT on the server's port", waiting[0]), Seen("listener", value))


# -- LIFE-6 -----------------------------------------------------------------------------------

@clause("LIFE-6")
def test_sigterm(bed: Testbed, server_transport: str) -> Pass:
    """SIGTERM goes to the server's process group, as a service manager sends it
    (a launcher that does not exec passes nothing on); the server has ended when
    its whole group has."""
    srv = bed.start_server(server_transport)
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    # The clause's own 1 s is a requirement, not a hang guard: timeout_scale
    # does not stretch it.
    rc = srv.proc.wait_group(1.0)
    if rc is None:
        raise Violation("still running 1 s after SIGTERM (to its process group)")
    took = time.monotonic() - t0
    ended = f"ended {took:.2f} s after SIGTERM ({srv.status()})"
    free = _port_free(srv, ended)
    return Pass(f"{ended}; {free.what}", Seen("exit status", rc), free)


# -- LIFE-7 -----------------------------------------------------------------------------------

CONCURRENT = 40  # the clause asks for at least 32
FLOOD = 2 << 20  # more than every buffer between a client and a server holds


def _blocker(bed: Testbed, srv: Server, kind: str) -> socket.socket:
    """A client that holds the server up if it is served inline: `idle` connects
    and says nothing; `partial` sends half a request; `nonreader` sends a lot and
    never reads the answers, so a server that writes to it blocks."""
    with support.blamed_on_target(f"connecting an {kind} client", srv):
        sock = peers.connect(srv.transport, srv.port, srv.path, timeout=5.0 * srv.timeout_scale)
    if kind == "partial":
        with support.blamed_on_target("sending half a request", srv):
            sock.sendall(profiles.of(bed).partial())
    elif kind == "nonreader":
        sock.settimeout(2.0)
        try:
            sock.sendall(profiles.of(bed).flood(FLOOD))  # stops when every buffer is full
        except OSError:
            pass  # full (timed out) or reset: either way it never reads
    return sock


@transports("tcp4", "tcp6", "unix")
@clause("LIFE-7")
def test_many_clients_at_once(bed: Testbed, server_transport: str) -> Pass:
    """Idle, half-speaking and non-reading clients connect first; then 40 more
    connect and stay connected; every one of the 40 is answered while all are
    connected."""
    srv = bed.start_server(server_transport)
    held: list[socket.socket] = []
    sessions: list[support.Session] = []
    try:
        for kind in ("idle", "partial", "nonreader"):
            held.append(_blocker(bed, srv, kind))
        for i in range(CONCURRENT):
            try:
                sessions.append(support.Session(bed, srv, timeout=5.0))
            except Violation as v:
                raise Violation(f"client {i + 1} of {CONCURRENT}, while {i} others and 3 slow "
                                f"clients were connected: {v}") from None
        sent = [s.send(i) for i, s in enumerate(sessions)]
        for i, s in enumerate(sessions):
            try:
                s.receive(i, sent[i])
            except Violation as v:
                raise Violation(f"client {i + 1} of {CONCURRENT}, with all connected at once "
                                f"(plus an idle, a half-speaking and a non-reading client): "
                                f"{v}") from None
    finally:
        for s in sessions:
            s.close()
        for h in held:
            h.close()
    return Pass(f"{CONCURRENT} clients connected at once, plus an idle, a half-speaking and a "
                f"non-reading one: each of the {CONCURRENT} got its answer")


# -- LIFE-8 -----------------------------------------------------------------------------------

def _socket_fds(pid: int) -> int:
    """Socket descriptors of the server and its children (a forking server's
    children hold connections too).  Only sockets count (the spec): an event
    loop's lazily created epoll/eventfd or files are not leaks."""
    total = 0
    for p in process_tree(pid):
        try:
            names = os.listdir(f"/proc/{p}/fd")
        except FileNotFoundError:
            continue  # ended meanwhile
        for name in names:
            try:
                if os.readlink(f"/proc/{p}/fd/{name}").startswith("socket:"):
                    total += 1
            except FileNotFoundError:
                continue  # closed meanwhile
    return total


def _settled_sockets(pid: int, want: int | None, timeout: float) -> int:
    """The socket count once it stops changing (or reaches `want`)."""
    deadline = time.monotonic() + timeout
    last, stable = -1, 0
    while True:
        n = _socket_fds(pid)
        if want is not None and n <= want:
            return n
        stable = stable + 1 if n == last else 0
        last = n
        if (want is None and stable >= 3) or time.monotonic() >= deadline:
            return n
        time.sleep(0.05)


ABUSE = ("rst-at-once", "rst-mid-request", "rst-while-answering", "fin-mid-request")


def _abuse(bed: Testbed, srv: Server, kind: str) -> None:
    with support.blamed_on_target(f"connecting a client that does {kind}", srv):
        sock = peers.connect(srv.transport, srv.port, srv.path, timeout=5.0 * srv.timeout_scale)
    try:
        if kind == "rst-mid-request" or kind == "fin-mid-request":
            try:
                sock.sendall(profiles.of(bed).partial())
            except OSError:
                pass  # refused mid-way: the abuse is done either way
            time.sleep(0.01)
        elif kind == "rst-while-answering":
            sock.settimeout(1.0)
            try:
                sock.sendall(profiles.of(bed).flood(FLOOD // 8))
            except OSError:
                pass
        if kind.startswith("rst") and srv.transport != "unix":
            peers.set_linger_abort(sock)
    finally:
        sock.close()


@transports("tcp4", "tcp6", "unix")
@clause("LIFE-8")
def test_resets_leak_nothing(bed: Testbed, server_transport: str) -> Pass:
    """Clients reset or vanish mid-exchange (RST at once, RST mid-request, RST
    while the server is answering, FIN mid-request); a client connected all along
    keeps being served, new clients are served, and the server's count of socket
    descriptors returns to what it was before."""
    srv = bed.start_server(server_transport)
    support.Session(bed, srv).close()          # warm up (lazy imports, thread pools)
    baseline = _settled_sockets(srv.pid, None, 3.0 * srv.timeout_scale)
    bystander = support.Session(bed, srv)
    tag = 0
    try:
        bystander.roundtrip(tag)
        for kind in ABUSE:
            for _ in range(5):
                _abuse(bed, srv, kind)
            tag += 1
            if not srv.running():
                raise Violation(f"after clients did {kind}: the server ended ({srv.status()}, "
                                f"stderr {srv.proc.stderr()[-160:]!r})")
            try:
                bystander.roundtrip(tag)
            except Violation as v:
                raise Violation(f"after 5 clients did {kind}, a client connected all along: "
                                f"{v}") from None
    finally:
        bystander.close()
    fresh = support.Session(bed, srv)
    try:
        fresh.roundtrip(tag + 1)
    except Violation as v:
        raise Violation(f"after {len(ABUSE) * 5} abusive clients, a new client: {v}") from None
    finally:
        fresh.close()
    after = _settled_sockets(srv.pid, baseline, 5.0 * srv.timeout_scale)
    if after > baseline:
        raise Violation(f"{len(ABUSE) * 5} clients reset or vanished mid-exchange: the server "
                        f"holds {after} socket descriptors, {after - baseline} more than the "
                        f"{baseline} it had before (not closed: leaked)")
    return Pass(f"{len(ABUSE) * 5} clients reset or vanished mid-exchange; a client connected "
                f"all along and a new one were served; socket descriptors {baseline} before, "
                f"{after} after", Seen("socket descriptors in /proc", (baseline, after)))
