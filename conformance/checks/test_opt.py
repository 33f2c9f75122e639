"""OPT — socket-option semantics, for the options a target declares.

Each check starts the target with the suite's own value for the option and judges
it from outside the process (REQUIREMENTS.md, OPT): an option read from a duplicate
of the target's descriptor, the kernel's sock_diag record of its socket, a lossless
capture dissected with scapy, or the target's behaviour; values the kernel derives
(buffer sizes, window scale) are compared with a calibration socket of the suite's
own given the same value in the same namespace.  An option the target does not
declare is not a case of its clause here (`not-applicable`).
"""

from __future__ import annotations

import signal
import socket

from conformance.checks.options import (
    BACKLOG,
    RCVBUF,
    SNDBUF,
    connected,
    declared,
    listener,
    tcp_transport,
)
from conformance.clauses import clause, transports
from conformance.evidence import NOT_APPLICABLE, Inconclusive, Pass, Violation, require
from conformance.harness import packets, peers, sockopts
from conformance.harness.testbed import Testbed

HANDSHAKE_WAIT_S = 0.15   # OPT-BACKLOG: a queued SYN on loopback completes at once
LATE_HANDSHAKE_S = 1.0    # ... or, on a loaded machine, a little later


# -- OPT-DEBUG -----------------------------------------------------------------------------------

@transports("tcp4", "tcp6", "udp4")
@clause("OPT-DEBUG")
def test_debug(bed: Testbed, server_transport: str) -> Pass:
    """SO_DEBUG is 1 on duplicates of the listening and the accepted socket (udp4:
    of the datagram socket)."""
    declared(bed, "debug")
    if not sockopts.in_initial_userns():
        raise Inconclusive("setting SO_DEBUG needs CAP_NET_ADMIN in the initial user namespace "
                           "(run as root): a target would fail with EACCES here")
    if server_transport == "udp4":
        srv = bed.start_server("udp4", options={"debug": {}})
        assert srv.port is not None
        entry = sockopts.udp_socket_of(srv.pid, srv.port)
        if entry is None:
            raise Inconclusive(f"the server's UDP socket on port {srv.port} was not found")
        reading = sockopts.read_option(entry, socket.SOL_SOCKET, socket.SO_DEBUG,
                                       "SO_DEBUG of the UDP socket")
        readings = [reading]
    else:
        srv = bed.start_server(server_transport, options={"debug": {}})
        with connected(srv) as (_sock, accepted):
            readings = [
                sockopts.read_option(listener(srv), socket.SOL_SOCKET, socket.SO_DEBUG,
                                     "SO_DEBUG of the listening socket"),
                sockopts.read_option(accepted, socket.SOL_SOCKET, socket.SO_DEBUG,
                                     "SO_DEBUG of the accepted socket")]
    require(*readings)
    wrong = [r for r in readings if r.value != 1]
    if wrong:
        raise Violation("with the debug option: " + "; ".join(map(str, wrong)) + " (expected 1)")
    return Pass("; ".join(map(str, readings)), *readings)


# -- OPT-BACKLOG --------------------------------------------------------------------------------

@clause("OPT-BACKLOG")
def test_backlog(bed: Testbed) -> Pass:
    """sock_diag shows the backlog n (capped by somaxconn); with the server stopped
    (SIGSTOP), exactly n + 1 handshakes complete and the next SYNs get no SYN-ACK."""
    declared(bed, "backlog")
    transport = tcp_transport(bed, "backlog")
    srv = bed.start_server(transport, options={"backlog": {"n": BACKLOG}})
    assert srv.port is not None
    diag = sockopts.listener_diag(srv.port)
    require(diag)
    assert diag.record is not None
    expected = min(BACKLOG, sockopts.somaxconn())
    if diag.record["wqueue"] != expected:
        raise Violation(f"started with backlog {BACKLOG}: sock_diag shows the listener's backlog "
                        f"{diag.record['wqueue']} (expected {expected})",
                        expected=str(expected), seen=str(diag.record["wqueue"]))
    srv.signal(signal.SIGSTOP)
    socks: list[socket.socket] = []
    try:
        if not sockopts.wait_stopped(srv.listener_pid):
            raise Inconclusive(f"the server did not stop on SIGSTOP within 5 s ({srv.status()})")
        for _ in range(expected + 3):
            s, _done = sockopts.handshake(transport, srv.port, HANDSHAKE_WAIT_S)
            socks.append(s)
        # Settle: a handshake the kernel accepted but a loaded machine answered late
        # still counts (the queue being full is decided when each SYN arrives).
        outcome = sockopts.completed(socks[:expected + 1], LATE_HANDSHAKE_S)
        outcome += sockopts.completed(socks[expected + 1:], 0.0)
    finally:
        for s in socks:
            s.close()
        # Resuming would let it serve the queued connections: end it instead.
        srv.kill()
    want = [True] * (expected + 1) + [False] * 2
    shown = "".join("+" if d else "-" for d in outcome)
    if outcome != want:
        raise Violation(f"backlog {expected}, server stopped: {sum(outcome)} of {len(outcome)} "
                        f"handshakes completed ({shown}; + = completed within "
                        f"{HANDSHAKE_WAIT_S * 1000:.0f} ms), expected exactly {expected + 1} "
                        "then none")
    return Pass(f"sock_diag backlog {expected}; server stopped: handshakes {shown} "
                f"(exactly {expected + 1} completed)", diag)


# -- OPT-RCVBUF / OPT-SNDBUF -------------------------------------------------------------------------

def _udp_buffer(bed: Testbed, option: str, value: int) -> Pass:
    """udp4: the datagram socket's buffer (read on a duplicate) equals a
    calibration socket's."""
    srv = bed.start_server("udp4", options={option: {"bytes": value}})
    assert srv.port is not None
    entry = sockopts.udp_socket_of(srv.pid, srv.port)
    if entry is None:
        raise Inconclusive(f"the server's UDP socket on port {srv.port} was not found")
    optname = socket.SO_RCVBUF if option == "rcvbuf" else socket.SO_SNDBUF
    reading = sockopts.read_option(entry, socket.SOL_SOCKET, optname,
                                   f"SO_{option.upper()} of the UDP socket")
    require(reading)
    cal = sockopts.calibrate_udp(**{option: value})[option]
    if reading.value != cal:
        raise Violation(f"with {option} {value}: {reading} (a socket given {value} has {cal})",
                        expected=str(cal), seen=str(reading.value))
    return Pass(f"{reading} = calibration ({value} -> {cal})", reading)


@transports("tcp4", "tcp6", "udp4")
@clause("OPT-RCVBUF")
def test_rcvbuf(bed: Testbed, server_transport: str) -> Pass:
    """The listener's and the accepted socket's receive buffer (sock_diag skmem)
    and the SYN-ACK's window scale (scapy, lossless capture) equal a calibration
    listener given the same value before listen()."""
    declared(bed, "rcvbuf")
    if server_transport == "udp4":
        return _udp_buffer(bed, "rcvbuf", RCVBUF)
    transport = server_transport
    bed.require_wire()
    cal = sockopts.calibrate(transport, rcvbuf=RCVBUF)
    srv = bed.start_server(transport, options={"rcvbuf": {"bytes": RCVBUF}})
    assert srv.port is not None
    with connected(srv) as (sock, _accepted):
        peer = sock.getsockname()[:2]
        lst = sockopts.listener_diag(srv.port)
        acc = sockopts.connection_diag(srv.port, peer)
    require(lst, acc)
    wire = bed.wire()
    require(wire)
    conv = packets.conversation(packets.tcp_packets(wire, srv.port), srv.port, peer)
    sa = packets.syn_ack(conv, srv.port)
    if sa is None:
        raise Inconclusive("no SYN-ACK of our connection in the (lossless) capture")
    seen = {"listener buffer": lst.skmem("rcvbuf"), "accepted buffer": acc.skmem("rcvbuf"),
            "SYN-ACK window scale": sa.options.get("WScale")}
    want = {"listener buffer": cal.listener_rcvbuf, "accepted buffer": cal.accepted_rcvbuf,
            "SYN-ACK window scale": cal.server_wscale}
    wrong = [k for k in want if seen[k] != want[k]]
    if wrong:
        late = " (the scale is fixed from the listener's buffer when the SYN arrives: " \
               "was it set only after accept()?)" if "SYN-ACK window scale" in wrong else ""
        raise Violation(f"with rcvbuf {RCVBUF}: " + ", ".join(
            f"{k} {seen[k]} (calibration {want[k]})" for k in wrong) + late,
            expected=str(want), seen=str(seen))
    return Pass(f"rcvbuf {RCVBUF}: listener and accepted buffer {cal.listener_rcvbuf}, SYN-ACK "
                f"{sa.describe()} window scale {cal.server_wscale}, as the calibration",
                lst, acc, wire, cal)


@transports("tcp4", "tcp6", "udp4")
@clause("OPT-SNDBUF")
def test_sndbuf(bed: Testbed, server_transport: str) -> Pass:
    """The accepted socket's send buffer (sock_diag skmem) equals a calibration
    socket's given the same value (so it is locked, not auto-tuned)."""
    declared(bed, "sndbuf")
    if server_transport == "udp4":
        return _udp_buffer(bed, "sndbuf", SNDBUF)
    transport = server_transport
    cal = sockopts.calibrate(transport, sndbuf=SNDBUF)
    srv = bed.start_server(transport, options={"sndbuf": {"bytes": SNDBUF}})
    assert srv.port is not None
    with connected(srv) as (sock, _accepted):
        acc = sockopts.connection_diag(srv.port, sock.getsockname()[:2])
    require(acc)
    if acc.skmem("sndbuf") != cal.accepted_sndbuf:
        raise Violation(f"with sndbuf {SNDBUF}: the accepted socket's send buffer is "
                        f"{acc.skmem('sndbuf')} (calibration {cal.accepted_sndbuf})",
                        expected=str(cal.accepted_sndbuf), seen=str(acc.skmem("sndbuf")))
    return Pass(f"sndbuf {SNDBUF}: the accepted socket's send buffer {cal.accepted_sndbuf}, "
                "as the calibration", acc, cal)


# -- OPT-OOBINLINE ---------------------------------------------------------------------------------

@clause("OPT-OOBINLINE")
def test_oobinline(bed: Testbed) -> Pass:
    """SO_OOBINLINE is 1 on a duplicate of the accepted socket, and the urgent byte
    comes back in the stream, in order (ECHO-5's inline case)."""
    declared(bed, "oobinline")
    if bed.target.profile != "echo":
        raise Inconclusive("urgent-data semantics are defined for the echo profile only",
                           NOT_APPLICABLE)
    srv = bed.start_server(tcp_transport(bed, "oobinline"), options={"oobinline": {}})
    with connected(srv) as (sock, accepted):
        reading = sockopts.read_option(accepted, socket.SOL_SOCKET, socket.SO_OOBINLINE,
                                       "SO_OOBINLINE of the accepted socket")
        try:
            peers.send_urgent(sock)
        except OSError as e:
            raise Violation(f"the server reset the connection during the exchange ({e})") from None
        got = peers.read_until_end(sock, 5.0)
    require(reading)
    if reading.value != 1:
        raise Violation(f"with the oobinline option: {reading} (expected 1)")
    if got.end != "fin" or got.data != b"abXcd":
        raise Violation(f"with the oobinline option: sent b'ab' + urgent b'X' + b'cd' + SHUT_WR, "
                        f"expected b'abXcd' then FIN, got {got.describe()}")
    return Pass(f"{reading}; b'ab' + urgent b'X' + b'cd' came back as b'abXcd', then FIN", reading)
