"""Socket inspection from outside the target process.

Everything here looks at a running program without touching its traffic:

* ``/proc/PID/fd`` links map the process tree's descriptors to socket inodes;
* ``/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`` (the *target's* network namespace, which
  may not be ours) give each inode its state and addresses;
* sock_diag (pyroute2's ``DiagSocket``, run inside the target's namespace) gives
  what /proc does not: a listener's backlog and accept-queue length, v6only, timers,
  retransmits and socket memory;
* ``pidfd_getfd`` duplicates one of the target's descriptors so that we can
  ``getsockopt`` it; the duplicate is closed at once (a lingering duplicate keeps the
  connection open, and the target's close() would then send no FIN).

Processes may exit at any moment: every reader tolerates that and returns what it
has (an empty list at worst) instead of raising FileNotFoundError or
ProcessLookupError.  Errors that a caller must tell apart are PidfdUnavailable (the
kernel or the permissions do not allow the duplicate: a "not-testable" verdict) and
SocketNotFound (the process, descriptor or listener is not there).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import psutil

__all__ = [
    "KINDS",
    "SockEntry",
    "ListenDiag",
    "UnixListenDiag",
    "PidfdUnavailable",
    "SocketNotFound",
    "process_tree",
    "socket_fds",
    "sockets_of",
    "listening",
    "sockets_on_port",
    "port_free",
    "listen_diag",
    "unix_listen_diag",
    "tcp_diag",
    "getsockopt_of",
    "sockopt_of_listener",
]

KINDS = ("tcp4", "tcp6", "udp4", "udp6", "unix")
# kind -> file name under /proc/PID/net
NET_FILES = {"tcp4": "tcp", "tcp6": "tcp6", "udp4": "udp", "udp6": "udp6", "unix": "unix"}

TCP_STATES = {
    0x01: "ESTABLISHED",
    0x02: "SYN_SENT",
    0x03: "SYN_RECV",
    0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2",
    0x06: "TIME_WAIT",
    0x07: "CLOSE",
    0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
    0x0C: "NEW_SYN_RECV",
}
# UDP sockets reuse the TCP state numbers: 07 (TCP_CLOSE) is an unconnected socket.
UDP_STATES = {0x01: "ESTABLISHED", 0x07: "UNCONN"}
UNIX_STATES = {0x01: "UNCONN", 0x02: "CONNECTING", 0x03: "ESTABLISHED", 0x04: "DISCONNECTING"}
_UNIX_ACCEPTCON = 0x10000  # __SO_ACCEPTCON in the Flags column: a listening socket
TCP_LISTEN = 0x0A
# inet_diag idiag_timer values
DIAG_TIMERS = {0: "off", 1: "retransmit", 2: "keepalive", 3: "time_wait", 4: "probe"}
SK_MEMINFO_FIELDS = (
    "rmem_alloc",
    "rcvbuf",
    "wmem_alloc",
    "sndbuf",
    "fwd_alloc",
    "wmem_queued",
    "optmem",
    "backlog",
    "drops",
)

_LITTLE = sys.byteorder == "little"
_CLONE_NEWNET = 0x40000000
_SYS_PIDFD_GETFD = 438  # same number on every architecture (unified syscall table)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.getsockopt.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint32),
]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

T = TypeVar("T")


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SockEntry:
    """One socket as the kernel's tables show it."""

    inode: int
    kind: str  # "tcp4" | "tcp6" | "udp4" | "udp6" | "unix"
    state: str  # TCP state name; udp: "UNCONN" | "ESTABLISHED"; unix: "LISTEN" | "UNCONN" | "ESTABLISHED" ...
    local: tuple[str, int] | str  # (addr, port), or the unix path ("" unnamed, "@x" abstract)
    remote: tuple[str, int] | str | None  # (addr, port); None for unix (peer not in /proc)
    pid: int | None = None  # owner, when known
    fd: int | None = None
    v6only: bool | None = None  # tcp6 listeners: True = IPv6 only, False = dual-stack

    @property
    def port(self) -> int | None:
        return self.local[1] if isinstance(self.local, tuple) else None

    @property
    def where(self) -> str:
        """The local address as a person writes it: 0.0.0.0:80, [::]:80, /tmp/s."""
        if isinstance(self.local, str):
            return self.local
        addr, port = self.local
        return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"

    @property
    def wildcard(self) -> bool:
        return isinstance(self.local, tuple) and self.local[0] in ("0.0.0.0", "::")

    def reachable_over_ipv4(self) -> bool:
        """Whether an IPv4 peer can reach this (listening or bound) inet socket."""
        if not isinstance(self.local, tuple):
            return False
        if self.kind in ("tcp4", "udp4"):
            return True
        addr = self.local[0]
        if addr.startswith("::ffff:"):
            return True
        return addr == "::" and self.v6only is not True

    def reachable_over_ipv6(self) -> bool:
        return (
            self.kind in ("tcp6", "udp6")
            and isinstance(self.local, tuple)
            and not self.local[0].startswith("::ffff:")
        )


@dataclass(frozen=True)
class ListenDiag:
    """A TCP listener as sock_diag reports it."""

    backlog: int  # sk_max_ack_backlog: listen()'s backlog as the kernel applied it
    queued: int  # completed connections waiting in the accept queue
    local: tuple[str, int]
    inode: int
    kind: str = "tcp4"
    v6only: bool | None = None


@dataclass(frozen=True)
class UnixListenDiag:
    """An AF_UNIX listener as unix_diag reports it."""

    backlog: int
    queued: int
    path: str
    inode: int


class PidfdUnavailable(Exception):
    """pidfd_getfd cannot be used on this target: the verdict is "not-testable"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SocketNotFound(LookupError):
    """The process, the descriptor or the listener asked about is not there (any more)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------------------- processes


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (empty if ``pid`` is gone)."""
    try:
        proc = psutil.Process(pid)
        kids = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return [pid] if psutil.pid_exists(pid) else []
    except psutil.AccessDenied:
        return [pid]
    return [pid] + [k.pid for k in kids]


def _fd_sockets(pid: int) -> list[tuple[int, int]]:
    """(fd, inode) for each socket descriptor of one process; [] if it is gone."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return []
    out = []
    for name in names:
        try:
            link = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.append((int(name), int(link[8:-1])))
    return out


def socket_fds(pid: int, tree: bool = True) -> dict[int, tuple[int, int]]:
    """Socket inode -> (pid, fd) for the process (and its descendants).

    A socket shared by several descriptors or processes (dup, fork) is reported once,
    with the first owner found (the tree is walked parent first, fds in order)."""
    return _owners(process_tree(pid) if tree else [pid])


def _owners(pids: Iterable[int]) -> dict[int, tuple[int, int]]:
    owners: dict[int, tuple[int, int]] = {}
    for p in pids:
        for fd, inode in sorted(_fd_sockets(p)):
            owners.setdefault(inode, (p, fd))
    return owners


def netns_id(pid: int | str) -> int | None:
    """The inode of the process's network namespace (None if it is gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def own_netns_id() -> int | None:
    return netns_id("thread-self")


def run_in_netns(pid: int | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in the network namespace of ``pid`` (ours when None or the same).

    Sockets that ``fn`` creates belong to that namespace for their whole life.
    A foreign namespace is entered by a short-lived thread (setns is per thread), so
    the caller's own namespace is never changed."""
    if pid is None:
        return fn()
    target = netns_id(pid)
    if target is None:
        raise SocketNotFound(f"process {pid} is gone")
    if target == own_netns_id():
        return fn()
    try:
        nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SocketNotFound(f"process {pid}: cannot open its network namespace: {e}") from None
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            if _libc.setns(nsfd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns(net of pid {pid}): {os.strerror(err)}")
            box["value"] = fn()
        except BaseException as e:  # handed back to the caller's thread
            box["error"] = e

    try:
        t = threading.Thread(target=runner, name=f"netns-{pid}", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(nsfd)
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- /proc/net parsing


def _ip4(h: bytes) -> str:
    raw = bytes.fromhex(h.decode())
    return socket.inet_ntop(socket.AF_INET, raw[::-1] if _LITTLE else raw)


def _ip6(h: bytes) -> str:
    raw = bytes.fromhex(h.decode())
    if _LITTLE:  # four 32-bit words, each printed in host byte order
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, raw)


def _endpoint(field: bytes, v6: bool) -> tuple[str, int]:
    addr, _, port = field.partition(b":")
    return (_ip6(addr) if v6 else _ip4(addr)), int(port, 16)


def parse_inet(
    data: bytes,
    kind: str,
    inodes: Iterable[int] | None = None,
    port: int | None = None,
    local_only: bool = True,
) -> list[SockEntry]:
    """Entries of a /proc/net/{tcp,tcp6,udp,udp6} text.

    ``inodes``: keep only those; ``port``: keep only sockets whose local port (or, with
    ``local_only=False``, local or remote port) is ``port``."""
    want = None if inodes is None else set(inodes)
    v6 = kind.endswith("6")
    states = TCP_STATES if kind.startswith("tcp") else UDP_STATES
    out = []
    for line in data.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        try:
            inode = int(f[9])
            if want is not None and inode not in want:
                continue
            local = _endpoint(f[1], v6)
            remote = _endpoint(f[2], v6)
            st = int(f[3], 16)
        except ValueError:
            continue
        if port is not None and local[1] != port and (local_only or remote[1] != port):
            continue
        out.append(
            SockEntry(
                inode=inode,
                kind=kind,
                state=states.get(st, f"0x{st:02X}"),
                local=local,
                remote=remote,
            )
        )
    return out


def parse_unix(data: bytes, inodes: Iterable[int] | None = None) -> list[SockEntry]:
    """Entries of a /proc/net/unix text."""
    want = None if inodes is None else set(inodes)
    out = []
    for line in data.splitlines()[1:]:
        f = line.split(None, 7)
        if len(f) < 7:
            continue
        try:
            inode = int(f[6])
            if want is not None and inode not in want:
                continue
            flags = int(f[3], 16)
            st = int(f[5], 16)
        except ValueError:
            continue
        path = f[7].decode(errors="surrogateescape") if len(f) > 7 else ""
        state = "LISTEN" if flags & _UNIX_ACCEPTCON else UNIX_STATES.get(st, f"0x{st:02X}")
        out.append(SockEntry(inode=inode, kind="unix", state=state, local=path, remote=None))
    return out


def read_net(pid: int | str, kind: str) -> bytes | None:
    """The raw /proc/PID/net file for ``kind`` (None if the process is gone)."""
    try:
        with open(f"/proc/{pid}/net/{NET_FILES[kind]}", "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _group_by_netns(pids: Iterable[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for p in pids:
        ns = netns_id(p)
        if ns is not None:
            groups.setdefault(ns, []).append(p)
    return groups


def _read_any(pids: list[int], kind: str) -> bytes | None:
    for p in pids:
        data = read_net(p, kind)
        if data is not None:
            return data
    return None


def sockets_of(pid: int, tree: bool = True, kinds: Iterable[str] = KINDS) -> list[SockEntry]:
    """The process's (and descendants') sockets with state and addresses.

    Read from each owner's own /proc/PID/net view (its network namespace).  Only
    sockets that the kernel's tables list appear: a TCP socket that is neither
    listening nor connected (socket() or bind() done, listen() not yet) is in none of
    them - ``socket_fds`` still counts it.  tcp6 listeners carry ``v6only`` when
    sock_diag can tell."""
    owners = socket_fds(pid, tree)
    return _entries_for(owners, kinds)


def _entries_for(owners: dict[int, tuple[int, int]], kinds: Iterable[str]) -> list[SockEntry]:
    if not owners:
        return []
    kinds = tuple(kinds)
    out: list[SockEntry] = []
    owner_pids = list(dict.fromkeys(p for p, _ in owners.values()))
    for ns_pids in _group_by_netns(owner_pids).values():
        found: list[SockEntry] = []
        for kind in kinds:
            data = _read_any(ns_pids, kind)
            if data is None:
                continue
            if kind == "unix":
                found += parse_unix(data, owners)
            else:
                found += parse_inet(data, kind, owners)
        v6only: dict[int, bool | None] = {}
        if any(e.kind == "tcp6" and e.state == "LISTEN" for e in found):
            v6only = {e.inode: e.v6only for e in tcp_listeners(ns_pids, owners, ("tcp6",))}
        for e in found:
            p, fd = owners[e.inode]
            out.append(_replace(e, pid=p, fd=fd, v6only=v6only.get(e.inode, e.v6only)))
    out.sort(key=lambda e: (e.pid or 0, e.fd or 0))
    return out


def _replace(e: SockEntry, **kw: Any) -> SockEntry:
    return dataclasses.replace(e, **kw)


def listening(pid: int, tree: bool = True) -> list[SockEntry]:
    """The tree's listening sockets (TCP LISTEN and accepting AF_UNIX sockets).

    Cheaper than filtering ``sockets_of``: TCP listeners come from a LISTEN-only
    sock_diag dump (with v6only), falling back to /proc/PID/net/tcp{,6}; AF_UNIX ones
    from /proc/PID/net/unix; nothing is read if the tree holds no socket."""
    owners = socket_fds(pid, tree)
    if not owners:
        return []
    out: list[SockEntry] = []
    owner_pids = list(dict.fromkeys(p for p, _ in owners.values()))
    for ns_pids in _group_by_netns(owner_pids).values():
        found = tcp_listeners(ns_pids, owners)
        data = _read_any(ns_pids, "unix")
        if data is not None:
            found += [e for e in parse_unix(data, owners) if e.state == "LISTEN"]
        for e in found:
            if e.inode in owners:
                p, fd = owners[e.inode]
                out.append(_replace(e, pid=p, fd=fd))
    out.sort(key=lambda e: (e.pid or 0, e.fd or 0))
    return out


def tcp_listeners(
    ns_pids: list[int],
    owners: Iterable[int] | None = None,
    kinds: Iterable[str] = ("tcp4", "tcp6"),
    port: int = 0,
    dump: ListenDump | None = None,
) -> list[SockEntry]:
    """TCP LISTEN sockets of the namespace of ``ns_pids`` (restricted to the inodes
    ``owners`` if given, to ``port`` if not 0), by sock_diag or else /proc."""
    want = None if owners is None else set(owners)
    out: list[SockEntry] = []
    own = dump is None
    if own:
        try:
            dump = ListenDump(ns_pids[0])
        except (OSError, SocketNotFound):
            dump = None
    try:
        for kind in kinds:
            family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
            found: list[SockEntry] | None = None
            if dump is not None and not dump.broken:
                try:
                    found = dump.listeners(family, port)
                except (OSError, DiagUnavailable):
                    dump.broken = True
            if found is None:
                data = _read_any(ns_pids, kind)
                found = (
                    []
                    if data is None
                    else [
                        e
                        for e in parse_inet(data, kind, want, port=port or None)
                        if e.state == "LISTEN"
                    ]
                )
            out += [
                e
                for e in found
                if (want is None or e.inode in want) and (not port or e.port == port)
            ]
    finally:
        if own and dump is not None:
            dump.close()
    return out


def sockets_on_port(
    port: int,
    *,
    netns_pid: int | None = None,
    owners: bool = False,
    local_only: bool = False,
    kinds: Iterable[str] = ("tcp4", "tcp6", "udp4", "udp6"),
) -> list[SockEntry]:
    """Every inet socket on ``port``, any owner, TIME_WAIT included.

    Read from /proc/<netns_pid>/net, or without it from the calling thread's own
    namespace (/proc/thread-self/net).  By default a socket is "on the port"
    when its local *or* remote port is ``port`` (so the client side of a connection
    to the port, and its TIME_WAIT, are included); ``local_only=True`` keeps only
    local ones.  With ``owners=True`` the owning pid/fd is filled in by scanning
    every process's descriptors (slower)."""
    base: int | str = "thread-self" if netns_pid is None else netns_pid
    out: list[SockEntry] = []
    for kind in kinds:
        if kind == "unix":
            continue
        data = read_net(base, kind)
        if data is not None:
            out += parse_inet(data, kind, port=port, local_only=local_only)
    if owners and out:
        want = {e.inode for e in out if e.inode}
        found: dict[int, tuple[int, int]] = {}
        for p in psutil.pids():
            if not want - found.keys():
                break
            for fd, inode in _fd_sockets(p):
                if inode in want:
                    found.setdefault(inode, (p, fd))
        out = [
            _replace(e, pid=found[e.inode][0], fd=found[e.inode][1]) if e.inode in found else e
            for e in out
        ]
    return out


def port_free(port: int, kind: str = "tcp4", *, netns_pid: int | None = None) -> bool:
    """No socket holds ``port`` for ``kind`` and a fresh bind with SO_REUSEADDR works.

    tcp4: no LISTEN socket reachable over IPv4 on the port (an IPv4 one, or an IPv6 one
    on :: or a mapped address); tcp6: no IPv6 LISTEN socket (the test bind is
    IPV6_V6ONLY); udp4/udp6: no bound UDP socket.  TIME_WAIT does not make a port busy
    (SO_REUSEADDR binds over it)."""
    if kind not in ("tcp4", "tcp6", "udp4", "udp6"):
        raise ValueError(f"port_free: kind must be tcp4/tcp6/udp4/udp6, not {kind!r}")
    v6 = kind.endswith("6")
    tcp = kind.startswith("tcp")
    kinds = ("tcp4", "tcp6") if tcp else ("udp4", "udp6")
    for e in sockets_on_port(port, netns_pid=netns_pid, local_only=True, kinds=kinds):
        if tcp and e.state != "LISTEN":
            continue
        if v6 and e.reachable_over_ipv6():
            return False
        # A dual-stack [::] socket (v6only unknown here) is caught by the bind below.
        if not v6 and (e.kind in ("tcp4", "udp4") or str(e.local[0]).startswith("::ffff:")):
            return False

    def try_bind() -> bool:
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if v6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(("::" if v6 else "0.0.0.0", port))
            except OSError:
                return False
        return True

    try:
        return run_in_netns(netns_pid, try_bind)
    except SocketNotFound:
        return False


# ----------------------------------------------------------------------------- sock_diag


_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_INET_DIAG_SKV6ONLY = 11
_NETLINK_SOCK_DIAG = 4
_HDR = struct.Struct("=IHHII")
_MSG_LEN = 72  # struct inet_diag_msg


class DiagUnavailable(Exception):
    """sock_diag did not answer (module missing, not permitted, bad reply)."""


class ListenDump:
    """A raw netlink sock_diag socket in one network namespace that asks for TCP
    LISTEN sockets only.

    The kernel then walks only its listening hash: ~20 us a query, where reading
    /proc/PID/net/tcp walks the whole established hash (milliseconds on a machine
    with a lot of memory, even when it is empty).  Used where listeners are polled;
    the full reports (listen_diag, tcp_diag) go through pyroute2's DiagSocket."""

    def __init__(self, netns_pid: int) -> None:
        def make() -> socket.socket:
            return socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG
            )

        self.sock = run_in_netns(netns_pid, make)
        self.sock.settimeout(1.0)
        self.seq = 0
        self.broken = False  # set when a query failed: callers fall back to /proc

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ListenDump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def listeners(self, family: int, port: int = 0) -> list[SockEntry]:
        """The namespace's TCP listeners of ``family`` (on ``port`` if not 0)."""
        self.seq += 1
        req = (
            struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
            + struct.pack("!HH", port, 0)
            + bytes(32)
            + struct.pack("=IQ", 0, 0)
        )
        self.sock.send(
            _HDR.pack(_HDR.size + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, self.seq, 0)
            + req
        )
        out: list[SockEntry] = []
        kind = "tcp6" if family == socket.AF_INET6 else "tcp4"
        while True:
            data = self.sock.recv(65536)
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, _flags, seq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    raise DiagUnavailable("bad netlink message")
                body = off + _HDR.size
                if seq != self.seq:  # a stale answer to an earlier, abandoned request
                    off += (length + 3) & ~3
                    continue
                if mtype == _NLMSG_DONE:
                    return out
                if mtype == _NLMSG_ERROR:
                    code = struct.unpack_from("=i", data, body)[0]
                    raise DiagUnavailable(f"sock_diag error {code}")
                if length >= _HDR.size + _MSG_LEN:
                    out.append(_decode(data, body, off + length, kind))
                off += (length + 3) & ~3


def _decode(data: bytes, body: int, end: int, kind: str) -> SockEntry:
    lport = struct.unpack_from("!H", data, body + 4)[0]
    fam = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    raw = data[body + 8 : body + 24] if fam == socket.AF_INET6 else data[body + 8 : body + 12]
    inode = struct.unpack_from("=I", data, body + 68)[0]
    v6only = None
    a = body + _MSG_LEN
    while a + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, a)
        if alen < 4:
            break
        if atype & 0x3FFF == _INET_DIAG_SKV6ONLY and alen >= 5:
            v6only = bool(data[a + 4])
        a += (alen + 3) & ~3
    zero = "::" if fam == socket.AF_INET6 else "0.0.0.0"
    return SockEntry(
        inode=inode,
        kind=kind,
        state="LISTEN",
        local=(socket.inet_ntop(fam, raw), lport),
        remote=(zero, 0),
        v6only=v6only,
    )


def _diag_dump(
    family: int,
    states: int,
    *,
    protocol: int = socket.IPPROTO_TCP,
    extensions: int = 0,
    sport: int = 0,
    dport: int = 0,
    netns_pid: int | None = None,
) -> list[Any]:
    """One inet_diag dump through pyroute2's DiagSocket, in netns_pid's namespace."""
    from pyroute2 import DiagSocket

    def query() -> list[Any]:
        with DiagSocket() as ds:
            ds.bind()
            return list(
                ds.get_sock_stats(
                    family=family,
                    states=states,
                    protocol=protocol,
                    extensions=extensions,
                    sport=sport,
                    dport=dport,
                )
            )

    return run_in_netns(netns_pid, query)


def _diag_families(kind: str) -> list[tuple[int, str]]:
    table: dict[str, list[tuple[int, str]]] = {
        "tcp4": [(socket.AF_INET, "tcp4")],
        "tcp6": [(socket.AF_INET6, "tcp6")],
        "tcp": [(socket.AF_INET, "tcp4"), (socket.AF_INET6, "tcp6")],
    }
    if kind not in table:
        raise ValueError(f"kind must be tcp4, tcp6 or tcp, not {kind!r}")
    return table[kind]


def listen_diag(port: int, kind: str = "tcp4", *, netns_pid: int | None = None) -> list[ListenDiag]:
    """The LISTEN sockets on ``port`` as sock_diag sees them.

    For a listener the kernel reports idiag_wqueue = sk_max_ack_backlog (the backlog
    as applied: listen()'s argument capped by net.core.somaxconn) and idiag_rqueue =
    the accept-queue length.  ``kind``: "tcp4", "tcp6" or "tcp" (both)."""
    out = []
    for family, k in _diag_families(kind):
        for m in _diag_dump(family, 1 << TCP_LISTEN, sport=port, netns_pid=netns_pid):
            if m["idiag_sport"] != port:
                continue
            flag = m.get_attr("INET_DIAG_SKV6ONLY") if family == socket.AF_INET6 else None
            out.append(
                ListenDiag(
                    backlog=m["idiag_wqueue"],
                    queued=m["idiag_rqueue"],
                    local=(m["idiag_src"], m["idiag_sport"]),
                    inode=m["idiag_inode"],
                    kind=k,
                    v6only=None if flag is None else bool(flag),
                )
            )
    return out


def unix_listen_diag(path: str, *, netns_pid: int | None = None) -> list[UnixListenDiag]:
    """The AF_UNIX listeners bound to ``path`` (unix_diag: backlog and queue length)."""
    from pyroute2 import DiagSocket
    from pyroute2.netlink.diag import UDIAG_SHOW_NAME, UDIAG_SHOW_RQLEN

    def query() -> list[Any]:
        with DiagSocket() as ds:
            ds.bind()
            return list(
                ds.get_sock_stats(
                    family=socket.AF_UNIX,
                    states=1 << TCP_LISTEN,
                    show=UDIAG_SHOW_NAME | UDIAG_SHOW_RQLEN,
                )
            )

    out = []
    for m in run_in_netns(netns_pid, query):
        name = m.get_attr("UNIX_DIAG_NAME")
        rq = m.get_attr("UNIX_DIAG_RQLEN")
        if name is None or rq is None:
            continue
        name = "@" + name[1:] if name.startswith("\0") else name
        if name == path:
            out.append(
                UnixListenDiag(
                    backlog=rq["udiag_wqueue"],
                    queued=rq["udiag_rqueue"],
                    path=name,
                    inode=m["udiag_ino"],
                )
            )
    return out


def _skmem(hexstr: str | None) -> dict[str, int] | None:
    if not hexstr:
        return None
    raw = bytes.fromhex(hexstr.replace(":", ""))
    vals = [int.from_bytes(raw[i : i + 4], sys.byteorder) for i in range(0, len(raw) - 3, 4)]
    return dict(zip(SK_MEMINFO_FIELDS, vals, strict=False))


def _tcp_info(info: Any) -> dict[str, Any] | None:
    if info is None:
        return None
    out = {k: v for k, v in info.items() if k.startswith("tcpi_")}
    # pyroute2 0.9 decodes the bit fields of byte 6/7 wrongly: re-read them raw.
    # (__u8 tcpi_snd_wscale:4, tcpi_rcv_wscale:4; __u8 delivery_rate_app_limited:1, ...)
    try:
        base = info.offset + 4  # past the nla header
        wscale, flags = info.data[base + 6], info.data[base + 7]
    except (AttributeError, IndexError, TypeError):
        return out
    out["tcpi_snd_wscale"] = wscale & 0x0F
    out["tcpi_rcv_wscale"] = wscale >> 4
    out["tcpi_delivery_rate_app_limited"] = flags & 0x01
    return out


def tcp_diag(
    port: int, kind: str = "tcp4", *, netns_pid: int | None = None, local_only: bool = False
) -> list[dict[str, Any]]:
    """Every TCP socket on ``port`` (local or, unless local_only, remote), any state.

    Each dict: kind, state, local, remote, inode (0 for TIME_WAIT / orphans), uid,
    cookie, timer ("off", "retransmit", "keepalive", "time_wait", "probe"), timer_code,
    expires_ms, retransmits, rqueue, wqueue (for LISTEN: accept queue / backlog),
    v6only (IPv6 LISTEN/CLOSE only), skmem (SK_MEMINFO: rmem_alloc, rcvbuf,
    wmem_alloc, sndbuf, fwd_alloc, wmem_queued, optmem, backlog, drops) and tcp_info
    (struct tcp_info as a dict: tcpi_rto, tcpi_snd_wscale, tcpi_rcv_wscale, ...)."""
    ext = (1 << (2 - 1)) | (1 << (7 - 1))  # INET_DIAG_INFO | INET_DIAG_SKMEMINFO
    all_states = (1 << 12) - 1
    out: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for family, k in _diag_families(kind):
        msgs = _diag_dump(family, all_states, extensions=ext, sport=port, netns_pid=netns_pid)
        if not local_only:
            msgs += _diag_dump(family, all_states, extensions=ext, dport=port, netns_pid=netns_pid)
        for m in msgs:
            local = (m["idiag_src"], m["idiag_sport"])
            remote = (m["idiag_dst"], m["idiag_dport"])
            if local[1] != port and (local_only or remote[1] != port):
                continue
            key = (k, local, remote, m["idiag_state"], m["idiag_inode"])
            if key in seen:
                continue
            seen.add(key)
            info = m.get_attr("INET_DIAG_INFO")
            flag = m.get_attr("INET_DIAG_SKV6ONLY")
            out.append(
                {
                    "kind": k,
                    "state": TCP_STATES.get(m["idiag_state"], str(m["idiag_state"])),
                    "local": local,
                    "remote": remote,
                    "inode": m["idiag_inode"],
                    "uid": m["idiag_uid"],
                    "cookie": m["idiag_cookie"],
                    "timer": DIAG_TIMERS.get(m["idiag_timer"], str(m["idiag_timer"])),
                    "timer_code": m["idiag_timer"],
                    "expires_ms": m["idiag_expires"],
                    "retransmits": m["idiag_retrans"],
                    "rqueue": m["idiag_rqueue"],
                    "wqueue": m["idiag_wqueue"],
                    "v6only": None if flag is None else bool(flag),
                    "skmem": _skmem(m.get_attr("INET_DIAG_SKMEMINFO")),
                    "tcp_info": _tcp_info(info),
                }
            )
    return out


# ----------------------------------------------------------------------------- pidfd_getfd


def _getfd(pid: int, fd: int) -> int:
    """A duplicate of ``fd`` of ``pid`` (close-on-exec set by the kernel)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise SocketNotFound(f"process {pid} is gone") from None
    except AttributeError:
        raise PidfdUnavailable("pidfd_open is not available in this Python") from None
    except OSError as e:
        if e.errno == errno.ENOSYS:
            raise PidfdUnavailable("ENOSYS: pidfd_open needs Linux >= 5.3") from None
        if e.errno in (errno.EPERM, errno.EACCES):
            raise PidfdUnavailable(
                f"{errno.errorcode[e.errno]}: pidfd_open({pid}) not permitted"
            ) from None
        raise
    try:
        dup = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        err = ctypes.get_errno()
    finally:
        os.close(pidfd)
    if dup >= 0:
        return int(dup)
    if err == errno.ENOSYS:
        raise PidfdUnavailable(
            "ENOSYS: pidfd_getfd needs Linux >= 5.6 (or a seccomp filter blocks it)"
        )
    if err in (errno.EPERM, errno.EACCES):
        raise PidfdUnavailable(
            f"{errno.errorcode[err]}: no ptrace permission over pid {pid} "
            "(PTRACE_MODE_ATTACH: same uid and yama ptrace_scope, "
            "or CAP_SYS_PTRACE)"
        )
    if err == errno.ESRCH:
        raise SocketNotFound(f"process {pid} is gone")
    if err == errno.EBADF:
        raise SocketNotFound(f"process {pid} has no fd {fd}")
    raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")


def getsockopt_of(pid: int, fd: int, level: int, optname: int, buflen: int = 0) -> int | bytes:
    """getsockopt on the target's own descriptor, through a pidfd_getfd duplicate.

    The duplicate is closed before this returns, whatever happens: while it is open
    the target's close() of the socket would not end the connection (no FIN).  No
    Python socket object is built on it either (that could change O_NONBLOCK, which
    the duplicate shares with the target).  Like socket.getsockopt: ``buflen=0``
    returns an int, otherwise up to ``buflen`` raw bytes.

    Raises PidfdUnavailable (EPERM: ptrace permission; ENOSYS: kernel too old or
    seccomp), SocketNotFound (process or fd gone), OSError (e.g. ENOTSOCK,
    ENOPROTOOPT) from getsockopt itself."""
    dup = _getfd(pid, fd)
    try:
        size = buflen if buflen > 0 else ctypes.sizeof(ctypes.c_int)
        buf = ctypes.create_string_buffer(size)
        length = ctypes.c_uint32(size)
        rc = _libc.getsockopt(dup, level, optname, buf, ctypes.byref(length))
        err = ctypes.get_errno()
    finally:
        os.close(dup)
    if rc != 0:
        raise OSError(err, f"getsockopt(pid {pid} fd {fd}, {level}, {optname}): {os.strerror(err)}")
    if buflen > 0:
        return buf.raw[: length.value]
    return int.from_bytes(buf.raw[:4], sys.byteorder, signed=True)


def sockopt_of_listener(
    pid: int, port: int, level: int, optname: int, buflen: int = 0
) -> int | bytes:
    """getsockopt_of on the tree's LISTEN socket on ``port`` (IPv4 first, then IPv6)."""
    cands = [e for e in listening(pid) if e.port == port and e.pid is not None]
    if not cands:
        raise SocketNotFound(f"no LISTEN socket on port {port} in the process tree of {pid}")
    cands.sort(key=lambda e: e.kind != "tcp4")
    e = cands[0]
    assert e.pid is not None and e.fd is not None
    return getsockopt_of(e.pid, e.fd, level, optname, buflen)
