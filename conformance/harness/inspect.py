"""Socket inspection from outside the target process.

Everything here looks at a running program without touching its traffic:

* ``/proc/PID/fd`` links map the process tree's descriptors to socket inodes;
* ``/proc/PID/net/{tcp,tcp6,udp,udp6,unix}`` (the *target's* network namespace, which
  may not be ours) give each inode its state and addresses;
* sock_diag (:mod:`conformance.harness.sockdiag`, run inside the target's namespace)
  gives what /proc does not: a listener's backlog and accept-queue length, v6only,
  timers, retransmits, struct tcp_info and socket memory; it is also how TCP
  listeners are found (a LISTEN-only dump is far cheaper than /proc/PID/net/tcp);
* ``pidfd_getfd`` duplicates one of the target's descriptors so that we can
  ``getsockopt`` it (:mod:`conformance.harness.sockfd`, re-exported here).

Processes may exit at any moment: every reader tolerates that and returns what it
has (an empty list at worst) instead of raising FileNotFoundError or
ProcessLookupError.  Errors that a caller must tell apart are PidfdUnavailable (the
kernel or the permissions do not allow the duplicate: a "not-testable" verdict) and
SocketNotFound (the process, descriptor or listener is not there).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import psutil

from conformance.harness.sockdiag import (
    ALL_STATES,
    EXT_INFO_AND_MEMINFO,
    LISTEN_ONLY,
    TCP_STATES,
    DiagMessage,
    DiagUnavailable,
    SockDiag,
    UnixListenDiag,
    as_dict,
)

# The target's own descriptors (pidfd_getfd): names kept here for the callers.
from conformance.harness.sockfd import PidfdUnavailable, SocketNotFound, getsockopt_of

__all__ = [
    "KINDS",
    "SockEntry",
    "ListenDiag",
    "PidfdUnavailable",
    "SocketNotFound",
    "process_tree",
    "socket_fds",
    "sockets_of",
    "listening",
    "sockets_on_port",
    "listen_diag",
    "unix_listen_diag",
    "tcp_diag",
    "getsockopt_of",
]

KINDS = ("tcp4", "tcp6", "udp4", "udp6", "unix")
# kind -> file name under /proc/PID/net
NET_FILES = {"tcp4": "tcp", "tcp6": "tcp6", "udp4": "udp", "udp6": "udp6", "unix": "unix"}

# UDP sockets reuse the TCP state numbers: 07 (TCP_CLOSE) is an unconnected socket.
UDP_STATES = {0x01: "ESTABLISHED", 0x07: "UNCONN"}
UNIX_STATES = {0x01: "UNCONN", 0x02: "CONNECTING", 0x03: "ESTABLISHED", 0x04: "DISCONNECTING"}
_UNIX_ACCEPTCON = 0x10000  # __SO_ACCEPTCON in the Flags column: a listening socket

_LITTLE = sys.byteorder == "little"
_CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
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
    return owners_of(process_tree(pid) if tree else [pid])


def owners_of(pids: Iterable[int]) -> dict[int, tuple[int, int]]:
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


def group_by_netns(pids: Iterable[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for p in pids:
        ns = netns_id(p)
        if ns is not None:
            groups.setdefault(ns, []).append(p)
    return groups


def read_any(pids: list[int], kind: str) -> bytes | None:
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
    return entries_for(owners, kinds)


def entries_for(owners: dict[int, tuple[int, int]], kinds: Iterable[str]) -> list[SockEntry]:
    if not owners:
        return []
    kinds = tuple(kinds)
    out: list[SockEntry] = []
    owner_pids = list(dict.fromkeys(p for p, _ in owners.values()))
    for ns_pids in group_by_netns(owner_pids).values():
        found: list[SockEntry] = []
        for kind in kinds:
            data = read_any(ns_pids, kind)
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
    for ns_pids in group_by_netns(owner_pids).values():
        found = tcp_listeners(ns_pids, owners)
        data = read_any(ns_pids, "unix")
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
    diag: SockDiag | None = None,
) -> list[SockEntry]:
    """TCP LISTEN sockets of the namespace of ``ns_pids`` (restricted to the inodes
    ``owners`` if given, to ``port`` if not 0), by sock_diag or else /proc.
    ``diag``: a SockDiag of that namespace to reuse (a poller keeps one)."""
    want = None if owners is None else set(owners)
    out: list[SockEntry] = []
    own = diag is None
    if own:
        diag = open_diag(ns_pids[0])
    try:
        for kind in kinds:
            family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
            found: list[SockEntry] | None = None
            if diag is not None and not diag.broken:
                try:
                    found = [_listen_entry(m) for m in diag.tcp(family, LISTEN_ONLY)
                             if not port or m.local[1] == port]
                except (OSError, DiagUnavailable):
                    diag.broken = True
            if found is None:
                data = read_any(ns_pids, kind)
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
        if own and diag is not None:
            diag.close()
    return out


def open_diag(netns_pid: int) -> SockDiag | None:
    """A SockDiag in the namespace of `netns_pid`; None where sock_diag cannot be
    used (callers then read /proc)."""
    try:
        return run_in_netns(netns_pid, SockDiag)
    except (OSError, SocketNotFound):
        return None


def _listen_entry(m: DiagMessage) -> SockEntry:
    zero = "::" if m.family == socket.AF_INET6 else "0.0.0.0"
    return SockEntry(inode=m.inode, kind=m.kind, state="LISTEN", local=m.local,
                     remote=(zero, 0), v6only=m.v6only)


def sockets_on_port(
    port: int,
    *,
    netns_pid: int | None = None,
    local_only: bool = False,
    kinds: Iterable[str] = ("tcp4", "tcp6", "udp4", "udp6"),
) -> list[SockEntry]:
    """Every inet socket on ``port``, any owner, TIME_WAIT included.

    Read from /proc/<netns_pid>/net, or without it from the calling thread's own
    namespace (/proc/thread-self/net).  By default a socket is "on the port"
    when its local *or* remote port is ``port`` (so the client side of a connection
    to the port, and its TIME_WAIT, are included); ``local_only=True`` keeps only
    local ones.  Owners are not filled in (pid/fd None)."""
    base: int | str = "thread-self" if netns_pid is None else netns_pid
    out: list[SockEntry] = []
    for kind in kinds:
        if kind == "unix":
            continue
        data = read_net(base, kind)
        if data is not None:
            out += parse_inet(data, kind, port=port, local_only=local_only)
    return out


# ----------------------------------------------------------------------------- sock_diag


def _families(kind: str) -> list[int]:
    table: dict[str, list[int]] = {"tcp4": [socket.AF_INET], "tcp6": [socket.AF_INET6],
             "tcp": [socket.AF_INET, socket.AF_INET6]}
    if kind not in table:
        raise ValueError(f"kind must be tcp4, tcp6 or tcp, not {kind!r}")
    return table[kind]


def _diag(kind: str, states: int, ext: int, netns_pid: int | None) -> list[DiagMessage]:
    """One sock_diag dump per family of `kind`, in netns_pid's namespace."""
    def query() -> list[DiagMessage]:
        with SockDiag() as diag:
            return [m for family in _families(kind) for m in diag.tcp(family, states, ext)]

    return run_in_netns(netns_pid, query)


def listen_diag(port: int, kind: str = "tcp4", *, netns_pid: int | None = None) -> list[ListenDiag]:
    """The LISTEN sockets on ``port`` as sock_diag sees them.

    For a listener the kernel reports idiag_wqueue = sk_max_ack_backlog (the backlog
    as applied: listen()'s argument capped by net.core.somaxconn) and idiag_rqueue =
    the accept-queue length.  ``kind``: "tcp4", "tcp6" or "tcp" (both)."""
    return [ListenDiag(backlog=m.wqueue, queued=m.rqueue, local=m.local, inode=m.inode,
                       kind=m.kind, v6only=m.v6only)
            for m in _diag(kind, LISTEN_ONLY, 0, netns_pid) if m.local[1] == port]


def unix_listen_diag(path: str, *, netns_pid: int | None = None) -> list[UnixListenDiag]:
    """The AF_UNIX listeners bound to ``path`` (unix_diag: backlog and queue length)."""
    def query() -> list[UnixListenDiag]:
        with SockDiag() as diag:
            return [u for u in diag.unix_listeners() if u.path == path]

    return run_in_netns(netns_pid, query)


def tcp_diag(
    port: int, kind: str = "tcp4", *, netns_pid: int | None = None, local_only: bool = False
) -> list[dict[str, Any]]:
    """Every TCP socket on ``port`` (local or, unless local_only, remote), any state.

    Each dict: kind, state, local, remote, inode (0 for TIME_WAIT / orphans), uid,
    cookie, timer ("off", "retransmit", "keepalive", "time_wait", "probe"), timer_code,
    expires_ms, retransmits, rqueue, wqueue (for LISTEN: accept queue / backlog),
    v6only (IPv6 sockets only), skmem (SK_MEMINFO: rmem_alloc, rcvbuf, wmem_alloc,
    sndbuf, fwd_alloc, wmem_queued, optmem, backlog, drops) and tcp_info (struct
    tcp_info as a dict: tcpi_rto, tcpi_snd_wscale, tcpi_rcv_wscale, ...)."""
    return [as_dict(m) for m in _diag(kind, ALL_STATES, EXT_INFO_AND_MEMINFO, netns_pid)
            if m.local[1] == port or (not local_only and m.remote[1] == port)]
