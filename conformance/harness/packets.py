"""TCP segments of a capture dissected with scapy, for the clauses judged on TCP
options, flags and sequence numbers (OPT-RCVBUF's window scale, OPT-KEEPALIVE's
probes, OPT-LINGER's RST vs FIN).

scapy is imported only when a capture is dissected here (Wire.packets()); bulk
work (reassembling conversations) stays on capture.py's struct path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conformance.harness.wire import Wire


@dataclass(frozen=True)
class TcpPacket:
    """One TCP segment as scapy dissected it."""
    index: int        # 1-based frame number in the capture (as in the pcap)
    time: float
    src: tuple[str, int]
    dst: tuple[str, int]
    flags: str        # scapy's flag letters: S A F R P U E C
    seq: int
    ack: int
    payload_len: int
    options: dict[str, Any]

    def has(self, letters: str) -> bool:
        return all(c in self.flags for c in letters)

    def describe(self) -> str:
        return (f"#{self.index} {self.src[0]}:{self.src[1]} > {self.dst[0]}:{self.dst[1]} "
                f"[{self.flags}] seq={self.seq} ack={self.ack} len={self.payload_len}"
                + (f" opts={self.options}" if self.options else ""))


def tcp_packets(wire: Wire, port: int) -> list[TcpPacket]:
    """Every TCP segment from or to `port`, IPv4 and IPv6, in capture order."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    out: list[TcpPacket] = []
    for i, pkt in enumerate(wire.packets(), 1):
        if TCP not in pkt:
            continue
        tcp = pkt[TCP]
        if port not in (tcp.sport, tcp.dport):
            continue
        ip = pkt[IP] if IP in pkt else pkt[IPv6] if IPv6 in pkt else None
        if ip is None:
            continue
        opts: dict[str, Any] = {}
        for name, value in tcp.options:
            if isinstance(name, str):
                opts[name] = value
        # The IP header says how long the segment is: a frame may carry padding.
        ip_len = ip.len - ip.ihl * 4 if IP in pkt else ip.plen
        out.append(TcpPacket(i, float(pkt.time), (ip.src, tcp.sport), (ip.dst, tcp.dport),
                             str(tcp.flags), tcp.seq, tcp.ack,
                             max(0, int(ip_len) - tcp.dataofs * 4), opts))
    return out


def conversation(packets: list[TcpPacket], server_port: int,
                 client: tuple[str, int]) -> list[TcpPacket]:
    """The segments between `client` and the server port (either direction)."""
    def norm(h: str) -> str:
        return h.removeprefix("::ffff:")

    def is_client(ep: tuple[str, int]) -> bool:
        return ep[1] == client[1] and norm(ep[0]) == norm(client[0])

    return [p for p in packets
            if (is_client(p.src) and p.dst[1] == server_port)
            or (is_client(p.dst) and p.src[1] == server_port)]


def syn_ack(conv: list[TcpPacket], server_port: int) -> TcpPacket | None:
    return next((p for p in conv if p.src[1] == server_port and p.has("SA")), None)


def syn(conv: list[TcpPacket], server_port: int) -> TcpPacket | None:
    return next((p for p in conv if p.dst[1] == server_port and p.flags == "S"), None)
