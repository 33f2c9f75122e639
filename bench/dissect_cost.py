#!/usr/bin/env python3
"""Cost of dissecting one capture: the struct path (harness.wire.Wire: TCP
conversations reassembled) against scapy (harness.packets.tcp_packets: every
frame dissected by scapy, TCP options decoded), on the same frames.

The capture is real: `--conns` loopback connections, each carrying `--bytes` in
`--chunk`-byte writes with TCP_NODELAY (so segments stay small and numerous),
captured on `lo` in a private network namespace (run as root, or the capture is
unavailable).  Each path is timed `--runs` times on a fresh Wire of the same
frames (nothing cached between runs); prints the frame count and per-path
min/median, and the per-frame cost.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time

from conformance.harness import netns, packets
from conformance.harness.capture import Capture
from conformance.harness.wire import Wire


def traffic(conns: int, nbytes: int, chunk: int) -> int:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(conns)
    port = int(lst.getsockname()[1])

    def sink() -> None:
        for _ in range(conns):
            c, _ = lst.accept()
            with c:
                while c.recv(65536):
                    pass

    t = threading.Thread(target=sink)
    t.start()
    data = b"x" * chunk
    for _ in range(conns):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(nbytes // chunk):
                s.sendall(data)
                time.sleep(0)  # let each write be its own segment
    t.join()
    lst.close()
    return port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--bytes", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    iso = netns.isolate("auto")
    if not iso.wire:
        raise SystemExit(f"no capture here: {iso.reason}")
    cap = Capture("lo").start()
    port = traffic(a.conns, a.bytes, a.chunk)
    time.sleep(0.05)
    cap.stop()
    print(f"frames: {len(cap.frames)} (lossless: {cap.lossless}); "
          f"{a.conns} connections x {a.bytes} bytes in {a.chunk}-byte writes")

    def struct_path() -> int:
        return sum(len(c.segments) for c in Wire.of(cap).tcp_connections(port))

    def scapy_path() -> int:
        return len(packets.tcp_packets(Wire.of(cap), port))

    for name, fn in (("struct (Wire.tcp_connections)", struct_path),
                     ("scapy (packets.tcp_packets)", scapy_path)):
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            n = fn()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"{name}: {n} segments; min {min(times) * 1000:.1f} ms, median {med * 1000:.1f} ms "
              f"({med / max(1, len(cap.frames)) * 1e6:.1f} us/frame)")


if __name__ == "__main__":
    main()
