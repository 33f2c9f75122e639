"""OPT — the options about routes and links: SO_DONTROUTE (a peer behind a gateway
is never answered; an on-link peer is) and SO_BROADCAST (a send to the link's
subnet broadcast address), on a veth link to a helper namespace (harness/links.py).

The wire of the link is captured on our end of the veth: that a SYN (or datagram)
of the far peer reached the target and nothing came back is judged on a capture
known to be lossless.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from conformance.checks import profiles
from conformance.checks.options import declared
from conformance.clauses import clause, client_side, transports
from conformance.evidence import NOT_APPLICABLE, Doubt, Inconclusive, Pass, Violation, require
from conformance.harness import peers, sockopts
from conformance.harness.capture import Capture, CaptureUnavailable
from conformance.harness.links import Link, open_link
from conformance.harness.testbed import Server, Testbed
from conformance.harness.wire import Wire

FAR_WAIT_S = 1.0     # a SYN-ACK (or an echo) on a veth comes within microseconds
NEAR_WAIT_S = 5.0    # a hang guard for the on-link exchange


@dataclass
class LinkWire:
    """The link's traffic, each direction captured where it arrives (a capture
    ignores what its own side sends): `inbound` on our end (from the helper
    side), `outbound` on the helper's end (from our side, the target's)."""
    inbound: Capture
    outbound: Capture

    def doubt(self) -> Doubt | None:
        for cap in (self.inbound, self.outbound):
            d = cap.doubt()
            if d is not None:
                return d
        return None

    def stop(self) -> None:
        self.inbound.stop()
        self.outbound.stop()

    def count(self, port: int, *, peer: str, outbound: bool) -> int:
        """TCP segments and UDP datagrams between `port` and the address `peer`
        in one direction (outbound: from our side to `peer`; else from `peer`)."""
        wire = Wire.of(self.outbound if outbound else self.inbound)
        n = sum(1 for d in wire.udp_datagrams(port)
                if (d.dst if outbound else d.src)[0] == peer)
        for conn in wire.tcp_connections(port):
            for seg in conn.segments:
                sender, receiver = ((conn.server, conn.client) if seg.from_server
                                    else (conn.client, conn.server))
                if (receiver if outbound else sender)[0] == peer:
                    n += 1
        return n


@contextmanager
def linked(bed: Testbed) -> Iterator[tuple[Link, LinkWire]]:
    """A veth helper link and captures of both directions on it, all gone afterwards."""
    link = open_link(bed.runner)
    try:
        try:
            inbound = Capture(link.ifname).start()
            outbound = link.inside(lambda: Capture(link.peer_ifname).start())
        except CaptureUnavailable as e:
            raise Inconclusive(f"wire evidence on the veth link unavailable: {e.reason}") from None
        wire = LinkWire(inbound, outbound)
        try:
            yield link, wire
        finally:
            wire.stop()
    finally:
        link.close()


def _tcp_from(src: str, dst: tuple[str, int], wait: float, payload: bytes
              ) -> tuple[bool, peers.Received | None]:
    """From `src`: does the handshake complete within `wait`; if so the profile's
    exchange (send `payload`, SHUT_WR, read to the end)."""
    s = socket.socket()
    try:
        s.bind((src, 0))
        s.settimeout(wait)
        try:
            s.connect(dst)
        except OSError:
            return False, None
        if payload:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        return True, peers.read_until_end(s, NEAR_WAIT_S)
    finally:
        s.close()


def _udp_from(src: str, dst: tuple[str, int], wait: float) -> bytes | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((src, 0))
        s.settimeout(wait)
        s.sendto(b"sockconf dontroute probe", dst)
        try:
            return s.recv(65536)
        except TimeoutError:
            return None
    finally:
        s.close()


# -- OPT-DONTROUTE (server) ---------------------------------------------------------------------

@transports("tcp4", "udp4")
@clause("OPT-DONTROUTE")
def test_dontroute(bed: Testbed, server_transport: str) -> Pass:
    """A peer behind the gateway gets no SYN-ACK (UDP: no echo), an on-link peer is
    served as usual (over the IPv4 link: tcp4 and udp4)."""
    declared(bed, "dontroute")
    transport = server_transport
    with linked(bed) as (link, wire):
        srv: Server = bed.start_server(transport, options={"dontroute": {}})
        assert srv.port is not None
        dst = (link.near, srv.port)
        if transport == "udp4":
            far = link.inside(lambda: _udp_from(link.far, dst, FAR_WAIT_S))
            near = link.inside(lambda: _udp_from(link.gateway, dst, NEAR_WAIT_S))
            far_served, near_ok = far is not None, bool(near)
            near_text = f"echo {near!r}"
        else:
            probe = profiles.of(bed).probe
            # The far peer first: a one-shot server serves one client only.
            far_served, _ = link.inside(lambda: _tcp_from(link.far, dst, FAR_WAIT_S, b""))
            ok, got = link.inside(lambda: _tcp_from(link.gateway, dst, NEAR_WAIT_S, probe))
            near_ok = ok and got is not None and bool(got.data)
            near_text = got.describe() if got is not None else "no handshake"
    to = wire.count(srv.port, peer=link.far, outbound=False)
    back = wire.count(srv.port, peer=link.far, outbound=True)
    if far_served or back:
        raise Violation(f"with dontroute, a peer behind the gateway ({link.far}) was answered "
                        f"({back} packet(s) back to it on the link)")
    require(wire, context="no answer to the peer behind the gateway")
    if not to:
        raise Inconclusive("the far peer's packets did not reach the link (the helper's route?)")
    if not near_ok:
        raise Violation(f"with dontroute, an on-link peer ({link.gateway}) was not served: "
                        f"{near_text}")
    return Pass(f"the peer behind the gateway sent {to} packet(s), none answered; the on-link "
                f"peer was served ({near_text})", wire)


# -- OPT-DONTROUTE (client) ---------------------------------------------------------------------

def _greeting_server(link: Link, addr: str) -> tuple[socket.socket, threading.Thread]:
    """A listener of ours in the helper namespace at `addr` that greets one client."""
    def make() -> socket.socket:
        s = socket.socket()
        s.bind((addr, 0))
        s.listen(1)
        s.settimeout(NEAR_WAIT_S)
        return s

    lst = link.inside(make)

    def serve() -> None:
        try:
            conn, _ = lst.accept()
        except OSError:
            return
        with conn:
            try:
                peers.greet(drain_timeout=2.0)(conn, peers.PeerLog())
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return lst, t


@client_side
@clause("OPT-DONTROUTE")
def test_client_dontroute(bed: Testbed) -> Pass:
    """No SYN goes to a server behind the gateway (connect fails: exit 1); a server
    on the link is reached as usual."""
    program = bed.client_program
    if not program.supports("dontroute"):
        raise Inconclusive("the target does not declare option 'dontroute' for its client",
                           NOT_APPLICABLE)
    if "tcp4" not in program.transports:
        raise Inconclusive("dontroute is judged over an IPv4 veth link; the client declares "
                           f"{', '.join(program.transports)}", NOT_APPLICABLE)
    opts: dict[str, dict[str, object]] = {"dontroute": {}}
    with linked(bed) as (link, wire):
        far_lst, far_t = _greeting_server(link, link.far)
        near_lst, near_t = _greeting_server(link, link.gateway)
        try:
            far_port, near_port = far_lst.getsockname()[1], near_lst.getsockname()[1]
            far = bed.run(bed.client_argv("tcp4", far_port, host=link.far, options=opts),
                          timeout=NEAR_WAIT_S, name="far")
            near = bed.run(bed.client_argv("tcp4", near_port, host=link.gateway, options=opts),
                           timeout=NEAR_WAIT_S, name="near")
        finally:
            for lst in (far_lst, near_lst):
                # shutdown() wakes a thread blocked in accept(); close() alone does not.
                try:
                    lst.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                lst.close()
            far_t.join(3)
            near_t.join(3)
    syns = wire.count(far_port, peer=link.far, outbound=True)
    if syns or far.rc == 0:
        raise Violation(f"with dontroute the client reached a server behind the gateway "
                        f"({syns} packet(s) to {link.far} on the link; client {far.describe()})")
    require(wire, context="no packet to the server behind the gateway")
    if far.timed_out or far.rc != 1:
        raise Violation(f"with dontroute, connecting to a server behind the gateway: expected "
                        f"'connect() error!' and exit 1, the client {far.describe()}")
    if near.rc != 0 or b"Hello World!" not in near.stdout:
        raise Violation(f"with dontroute the client did not reach a server on the link: "
                        f"{near.describe()}")
    return Pass(f"no packet to the server behind the gateway (the client {far.describe()}); "
                "the on-link server was reached", wire)


# -- OPT-BROADCAST --------------------------------------------------------------------------------

def _broadcast_from(link: Link, srv: Server) -> tuple[int, tuple[bytes, tuple[str, int]] | None]:
    """Through a duplicate of the target's UDP socket, a datagram to the link's
    broadcast address: (errno of the send, what a receiver on the helper side got)."""
    assert srv.port is not None
    entry = sockopts.udp_socket_of(srv.pid, srv.port)
    if entry is None:
        raise Inconclusive(f"the server's UDP socket on port {srv.port} was not found")

    def receiver() -> socket.socket:
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("0.0.0.0", 0))
        r.settimeout(NEAR_WAIT_S)
        return r

    rx = link.inside(receiver)
    try:
        err = sockopts.sendto_of(entry, b"sockconf broadcast", (link.broadcast, rx.getsockname()[1]))
        if err:
            return err, None
        try:
            data, src = rx.recvfrom(65536)
        except TimeoutError:
            return 0, None
        return 0, (data, src)
    finally:
        rx.close()


@clause("OPT-BROADCAST")
def test_broadcast(bed: Testbed) -> Pass:
    """A send to the link's subnet broadcast address through the target's own UDP
    socket is allowed and arrives with the target's port; where the option can be
    left off, the same send fails with EACCES."""
    declared(bed, "broadcast")
    if "udp4" not in bed.server_program.transports:
        raise Inconclusive("broadcast is a datagram option; the target declares no udp4",
                           NOT_APPLICABLE)
    with linked(bed) as (link, _wire):
        srv = bed.start_server("udp4", options={"broadcast": {}})
        err, got = _broadcast_from(link, srv)
        if err:
            raise Violation(f"with broadcast, a send to {link.broadcast} through the server's "
                            f"socket failed: {errno.errorcode.get(err, err)} (SO_BROADCAST not set?)")
        if got is None:
            raise Inconclusive(f"the datagram to {link.broadcast} was sent but not received on "
                               "the link")
        if got[1][1] != srv.port:
            raise Violation(f"the broadcast arrived from port {got[1][1]}, not the server's "
                            f"{srv.port}")
        evidence = f"sent to {link.broadcast} through the server's socket, received from {got[1]}"
        if bed.server_program.options["broadcast"]:
            srv.kill()
            off = bed.start_server("udp4", name="without")
            err, _ = _broadcast_from(link, off)
            if err != errno.EACCES:
                raise Violation(f"without the broadcast option the same send gave "
                                f"{errno.errorcode.get(err, err) if err else 'success'}, not "
                                "EACCES: the option is not what allows it")
            evidence += "; without the option: EACCES"
        return Pass(evidence, link)
