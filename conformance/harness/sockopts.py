"""Socket options as the kernel applied them to a target's sockets — as observations.

The OPT clauses are judged from outside the process (REQUIREMENTS.md, OPT): an
option read from a duplicate of the target's own descriptor, a sock_diag record of
its socket, a capture known to be lossless, and — for values the kernel derives
(buffer sizes, window scale) — a *calibration*: a socket of the suite's own in the
same network namespace, given the same value.  Each observation here carries its
quality (`doubt()`), so that a check can only build a `Pass` from what it really saw.

No pytest here: what cannot be observed is an observation with a doubt, or an
``Inconclusive`` raised.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from conformance.evidence import Doubt
from conformance.harness import inspect, sockfd
from conformance.harness.inspect import SockEntry

FAMILY = {"tcp4": socket.AF_INET, "tcp6": socket.AF_INET6}
LOOPBACK = {"tcp4": "127.0.0.1", "tcp6": "::1"}


# -- observations -----------------------------------------------------------------------------

@dataclass(frozen=True)
class OptionReading:
    """One getsockopt on a pidfd_getfd duplicate of the target's descriptor (closed
    at once).  `value` is None when it could not be read; `reason` says why."""
    what: str                      # e.g. "SO_DEBUG of the listening socket (pid 7, fd 3)"
    value: int | bytes | None
    reason: str | None = None

    def doubt(self) -> Doubt | None:
        return None if self.reason is None else Doubt(f"{self.what} could not be read: {self.reason}")

    def ints(self) -> tuple[int, ...]:
        """A struct of ints (e.g. struct linger) as a tuple; an int as a 1-tuple."""
        if isinstance(self.value, int):
            return (self.value,)
        if isinstance(self.value, bytes):
            return struct.unpack(f"{len(self.value) // 4}i", self.value[: len(self.value) // 4 * 4])
        return ()

    def __str__(self) -> str:
        shown = self.ints() if isinstance(self.value, bytes) else self.value
        return f"{self.what} = {shown}" if self.reason is None else f"{self.what}: {self.reason}"


@dataclass(frozen=True)
class DiagRecord:
    """A socket as sock_diag reported it (`record` from inspect.tcp_diag), or None
    with the reason it was not found."""
    what: str
    record: dict[str, Any] | None
    reason: str | None = None

    def doubt(self) -> Doubt | None:
        if self.record is None:
            return Doubt(f"sock_diag did not show {self.what}: {self.reason or 'not found'}")
        return None

    def skmem(self, name: str) -> int | None:
        mem = (self.record or {}).get("skmem") or {}
        return mem.get(name)


@dataclass(frozen=True)
class Calibration:
    """What the kernel makes of a value on a socket of the suite's own (same
    namespace, same family, option set before listen()/connect())."""
    what: str
    listener_rcvbuf: int
    accepted_rcvbuf: int
    accepted_sndbuf: int
    server_wscale: int     # the window scale the listener's SYN-ACK announced
    client_wscale: int     # the window scale the client's SYN announced
    extra: dict[str, int] = field(default_factory=dict)

    def doubt(self) -> Doubt | None:
        return None


# -- reading options ----------------------------------------------------------------------------

def read_option(entry: SockEntry, level: int, optname: int, what: str,
                buflen: int = 0) -> OptionReading:
    """getsockopt on the target's socket `entry` (found by inspect), through a
    duplicate; whatever prevents the read becomes the reading's doubt."""
    label = f"{what} (pid {entry.pid}, fd {entry.fd})"
    if entry.pid is None or entry.fd is None:
        return OptionReading(label, None, "the socket's owner is not known")
    try:
        value = inspect.getsockopt_of(entry.pid, entry.fd, level, optname, buflen)
    except inspect.PidfdUnavailable as e:
        return OptionReading(label, None, e.reason)
    except inspect.SocketNotFound as e:
        return OptionReading(label, None, str(e))
    except OSError as e:
        return OptionReading(label, None, f"getsockopt failed: {e}")
    return OptionReading(label, value)


def sendto_of(entry: SockEntry, data: bytes, addr: tuple[str, int]) -> int:
    """sendto() through a duplicate of the target's datagram socket `entry`: 0 when
    sent, else the errno (EACCES: a broadcast without SO_BROADCAST).  The
    duplicate is closed at once; the target's socket is otherwise untouched."""
    assert entry.pid is not None and entry.fd is not None
    # pidfd_getfd through sockfd's helper, as its getsockopt_of does.
    dup = sockfd._getfd(entry.pid, entry.fd)
    sock = socket.socket(fileno=dup)
    try:
        sock.sendto(data, socket.MSG_DONTWAIT, addr)
    except OSError as e:
        return e.errno or -1
    finally:
        sock.close()
    return 0


def _same_addr(a: tuple[str, int], b: tuple[str, int]) -> bool:
    def norm(h: str) -> str:
        return h.removeprefix("::ffff:")
    return a[1] == b[1] and norm(a[0]) == norm(b[0])


def listener_of(pid: int, port: int) -> SockEntry | None:
    cands = [e for e in inspect.listening(pid) if e.port == port and e.pid is not None]
    cands.sort(key=lambda e: e.kind != "tcp4")
    return cands[0] if cands else None


def connection_of(pid: int, peer: tuple[str, int], timeout: float = 2.0) -> SockEntry | None:
    """The target's (tree's) socket connected to `peer` — the accepted socket of our
    connection — waiting up to `timeout` for the target to accept it."""
    deadline = time.monotonic() + timeout
    while True:
        for e in inspect.sockets_of(pid, kinds=("tcp4", "tcp6")):
            if isinstance(e.remote, tuple) and e.state != "LISTEN" and _same_addr(e.remote, peer):
                return e
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def udp_socket_of(pid: int, port: int) -> SockEntry | None:
    for e in inspect.sockets_of(pid, kinds=("udp4", "udp6")):
        if e.port == port and e.pid is not None:
            return e
    return None


# -- sock_diag ------------------------------------------------------------------------------

def connection_diag(port: int, peer: tuple[str, int], kind: str = "tcp") -> DiagRecord:
    """The server side of our connection from `peer` to local `port` (by default
    in both families: a dual-stack AF_INET6 socket serves IPv4 peers too)."""
    what = f"the server's socket of the connection from {peer[0]}:{peer[1]}"
    try:
        recs = inspect.tcp_diag(port, kind, local_only=True)
    except OSError as e:
        return DiagRecord(what, None, f"sock_diag failed: {e}")
    for r in recs:
        if r["state"] != "LISTEN" and _same_addr(r["remote"], peer):
            return DiagRecord(what, r)
    return DiagRecord(what, None, "no such connection")


def listener_diag(port: int, kind: str = "tcp") -> DiagRecord:
    what = f"the LISTEN socket on port {port}"
    try:
        recs = inspect.tcp_diag(port, kind, local_only=True)
    except OSError as e:
        return DiagRecord(what, None, f"sock_diag failed: {e}")
    for r in recs:
        if r["state"] == "LISTEN":
            return DiagRecord(what, r)
    return DiagRecord(what, None, "no listener")


def somaxconn() -> int:
    """net.core.somaxconn of this (the workers' and the target's) namespace."""
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


# -- calibration ------------------------------------------------------------------------------

def _wscales(sock: socket.socket) -> tuple[int, int]:
    """(snd_wscale, rcv_wscale) of a connected socket from struct tcp_info."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return info[6] & 0x0F, info[6] >> 4


def calibrate(transport: str = "tcp4", *, rcvbuf: int | None = None,
              sndbuf: int | None = None, client_rcvbuf: int | None = None,
              client_sndbuf: int | None = None) -> Calibration:
    """A connection between two sockets of our own in this namespace: the listener
    given `rcvbuf`/`sndbuf` before listen(), the client `client_rcvbuf`/
    `client_sndbuf` before connect(); what the kernel made of it."""
    fam = FAMILY[transport]
    with socket.socket(fam, socket.SOCK_STREAM) as lst, socket.socket(fam, socket.SOCK_STREAM) as cli:
        if rcvbuf is not None:
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if client_rcvbuf is not None:
            cli.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_rcvbuf)
        if client_sndbuf is not None:
            cli.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, client_sndbuf)
        lst.bind((LOOPBACK[transport], 0))
        lst.listen(1)
        cli.settimeout(5.0)
        cli.connect(lst.getsockname()[:2])
        lst.settimeout(5.0)
        conn, _ = lst.accept()
        with conn:
            # The scale each side announced is the one the *other* side sends with.
            server_scale = _wscales(cli)[0]
            client_scale = _wscales(conn)[0]
            return Calibration(
                what=f"own {transport} sockets with rcvbuf={rcvbuf} sndbuf={sndbuf} "
                     f"client rcvbuf={client_rcvbuf} sndbuf={client_sndbuf}",
                listener_rcvbuf=lst.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                accepted_rcvbuf=conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                accepted_sndbuf=conn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                server_wscale=server_scale,
                client_wscale=client_scale,
                extra={"client_sndbuf": cli.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                       "client_rcvbuf": cli.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)})


def calibrate_udp(*, rcvbuf: int | None = None, sndbuf: int | None = None) -> dict[str, int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        return {"rcvbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                "sndbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}


# -- handshakes against a stopped server -------------------------------------------------------

def handshake(transport: str, port: int, wait: float) -> tuple[socket.socket, bool]:
    """Start a connection; whether the handshake completed within `wait` seconds.
    The socket is returned open (the caller closes it): a completed connection
    must stay in the accept queue while the next one is tried."""
    s = socket.socket(FAMILY[transport], socket.SOCK_STREAM)
    s.setblocking(False)
    err = s.connect_ex((LOOPBACK[transport], port))
    if err not in (0, 115):  # EINPROGRESS
        return s, False
    p = select.poll()
    p.register(s.fileno(), select.POLLOUT)
    if not p.poll(wait * 1000):
        return s, False
    return s, s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def completed(socks: list[socket.socket], wait: float) -> list[bool]:
    """Which of these non-blocking connects have completed, waiting up to `wait`
    seconds in all for those still pending (a SYN-ACK delayed under load)."""
    deadline = time.monotonic() + wait
    done = [False] * len(socks)
    while True:
        for i, s in enumerate(socks):
            if not done[i]:
                p = select.poll()
                p.register(s.fileno(), select.POLLOUT)
                if p.poll(0) and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done[i] = True
        if all(done) or time.monotonic() >= deadline:
            return done
        time.sleep(0.01)


def wait_stopped(pid: int, timeout: float = 5.0) -> bool:
    """Until /proc/PID/stat shows the process stopped (state T) or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state in ("T", "t"):
            return True
        time.sleep(0.005)
    return False


def in_initial_userns() -> bool:
    """CAP_NET_ADMIN in the initial user namespace is what SO_DEBUG needs."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"] and os.geteuid() == 0
    except OSError:
        return False


# close(2) by architecture, for /proc/PID/task/TID/syscall ("NR arg0 ..." while blocked).
_SYS_CLOSE = {"x86_64": 3, "aarch64": 57, "riscv64": 57, "i686": 6, "armv7l": 6}


def time_in_close(pid: int, fd: int, limit: float) -> tuple[bool, float, str | None]:
    """Whether a thread of `pid` was seen in close(`fd`) within `limit` s, and for
    how long (sampled every 5 ms from /proc/PID/task/*/syscall, until it leaves
    it); the reason when the threads' system calls cannot be read here."""
    import platform
    nr = _SYS_CLOSE.get(platform.machine())
    if nr is None:
        return False, 0.0, f"close()'s system call number on {platform.machine()} is not known"
    want = f"{nr} {hex(fd)} "
    first: float | None = None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        now = time.monotonic()
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            break
        inside = False
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                    inside = inside or f.read().startswith(want)
            except PermissionError:
                return False, 0.0, "no permission to read the target's /proc/PID/task/*/syscall"
            except OSError:
                continue
        if inside and first is None:
            first = now
        elif not inside and first is not None:
            return True, now - first, None
        time.sleep(0.005)
    return first is not None, 0.0 if first is None else time.monotonic() - first, None
