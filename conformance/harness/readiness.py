"""Passive readiness: wait until a target listens, without ever connecting to it.

A connect probe would consume a one-shot server's only accept(), so readiness is
read from the kernel instead: the process tree's descriptors (/proc/PID/fd) are
matched against the listening sockets of the owner's network namespace.

Per poll the work is kept small:

* the process tree: /proc/sys/kernel/ns_last_pid tells whether any process was
  created since the last poll; only new pids are looked at (their parent is read
  once and remembered), so a wrapped target (strace, a shell) is followed without
  rescanning every process each time (psutil's children() reads every /proc/N/stat:
  ~1 ms a call here);
* the tree's socket inodes: readlink of each ``/proc/PID/fd`` entry;
* only if the tree holds any socket: the namespace's listeners - for TCP a sock_diag
  dump of LISTEN sockets only (the kernel walks the listening hash, not the
  established one: ~20 us, where reading /proc/PID/net/tcp walks the whole
  established hash and costs milliseconds on a large-memory machine); for UDP and
  AF_UNIX the one relevant /proc/PID/net file.  If sock_diag is unavailable, TCP
  falls back to /proc/PID/net/tcp{,6}.

Polling starts at 0.5 ms intervals and backs off with the time already waited
(interval = elapsed / 10, between 0.5 ms and 10 ms), so a fast server is seen within
about a millisecond and a slow one costs at most ~100 polls a second.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from conformance.harness.inspect import (
    KINDS,
    SockEntry,
    entries_for,
    group_by_netns,
    open_diag,
    owners_of,
    parse_inet,
    parse_unix,
    read_any,
    tcp_listeners,
)
from conformance.harness.sockdiag import SockDiag

__all__ = ["NotReady", "Listener", "wait_listening", "TRANSPORTS"]

TRANSPORTS = ("tcp4", "tcp6", "udp4", "udp6", "unix")
MIN_INTERVAL = 0.0005
MAX_INTERVAL = 0.010


class NotReady(Exception):
    """The target did not become ready.  ``reason``: one line for the report;
    ``detail``: the evidence (exit status, stderr tail, sockets seen)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}\n{self.detail}" if self.detail else self.reason


@dataclass(frozen=True)
class Listener:
    """The socket that made the target ready: its entry, owner and when it was seen."""

    entry: SockEntry
    pid: int
    fd: int
    elapsed_s: float  # from the call of wait_listening to detection


def wait_listening(
    pid: int,
    *,
    transport: str,
    port: int | None = None,
    path: str | None = None,
    timeout: float,
    exited: Callable[[], int | None],
    stderr_tail: Callable[[], str] = lambda: "",
) -> Listener:
    """Wait until a process of ``pid``'s tree listens for ``transport``.

    tcp4: a TCP listener on ``port`` reachable over IPv4 (an IPv4 socket, a dual-stack
    [::] socket or one bound to a v4-mapped address); tcp6: an IPv6 TCP listener on
    ``port``; udp4/udp6: a UDP socket bound to ``port``; unix: a listening AF_UNIX
    socket bound to ``path``.  Any local address counts (LIFE-1 judges the address).

    ``exited()`` returns the target's exit status (negative: killed by that signal)
    once it has ended, else None - e.g. ``Popen.poll``.  Raises NotReady at once when
    it ends, or at ``timeout`` (naming where it listens instead, if anywhere)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if transport == "unix":
        if not path:
            raise ValueError("transport 'unix' needs path")
    elif port is None:
        raise ValueError(f"transport {transport!r} needs port")
    start = time.monotonic()
    deadline = start + timeout
    tree = _Tree(pid)
    probe = _Probe(transport, port, path)
    try:
        while True:
            status = exited()
            if status is not None:
                raise NotReady(f"{_ended(status)} before listening", _detail(status, stderr_tail()))
            hit = probe.poll(tree.pids())
            now = time.monotonic()
            if hit is not None:
                assert hit.pid is not None and hit.fd is not None
                return Listener(entry=hit, pid=hit.pid, fd=hit.fd, elapsed_s=now - start)
            if now >= deadline:
                break
            time.sleep(min(max(MIN_INTERVAL, (now - start) / 10), MAX_INTERVAL, deadline - now))
        status = exited()
        if status is not None:
            raise NotReady(f"{_ended(status)} before listening", _detail(status, stderr_tail()))
        late = _last_look(tree, probe, start)
        if isinstance(late, Listener):
            return late
        raise _timed_out(late, probe, timeout, stderr_tail())
    finally:
        probe.close()


# ----------------------------------------------------------------------------- messages


def _ended(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name}"
    return f"exited with status {status}"


def _detail(status: int | None, tail: str) -> str:
    lines = []
    if status is not None:
        lines.append(f"exit status: {status}")
    tail = tail.rstrip()
    lines.append("stderr (tail):\n" + tail if tail else "stderr: (empty)")
    return "\n".join(lines)


def _last_look(tree: _Tree, probe: _Probe, start: float) -> Listener | list[SockEntry]:
    """At the deadline: every socket of the tree (for the message), or the Listener if
    the target started listening in the last moment (within a poll interval)."""
    seen = entries_for(owners_of(tree.pids()), KINDS)
    hit = probe.match_any(seen)
    if hit is not None and hit.pid is not None and hit.fd is not None:
        return Listener(entry=hit, pid=hit.pid, fd=hit.fd, elapsed_s=time.monotonic() - start)
    return seen


def _timed_out(seen: list[SockEntry], probe: _Probe, timeout: float, tail: str) -> NotReady:
    udp = probe.transport.startswith("udp")
    others = [
        e
        for e in seen
        if e.state == "LISTEN" or (udp and e.kind.startswith("udp") and e.state == "UNCONN")
    ]
    want = probe.wanted()
    detail = _detail(None, tail)
    if seen:
        detail += "\nsockets of the process tree:\n" + "\n".join(
            f"  {e.kind} {e.state} {e.where} (pid {e.pid} fd {e.fd})" for e in seen
        )
    if others:
        where = ", ".join(_describe(e) for e in others)
        if probe.port is not None and any(e.port == probe.port for e in others):
            want = f"{'IPv6' if probe.transport.endswith('6') else 'IPv4'} {want}"
        verb = "listens on" if any(e.state == "LISTEN" for e in others) else "is bound to"
        return NotReady(f"{verb} {where}, not on {want}", detail)
    return NotReady(f"not listening on {want} after {timeout:.1f} s", detail)


def _describe(e: SockEntry) -> str:
    if e.kind == "unix":
        return f"unix:{e.where}"
    extra = " (IPv6 only)" if e.v6only else ""
    proto = "" if e.kind.startswith("tcp") else "udp "
    return f"{proto}{e.where}{extra}"


# ----------------------------------------------------------------------------- process tree


class _Tree:
    """The descendants of one process, cheaply refreshed.

    A process's parent is read once, when it is first seen.  New processes are found
    through /proc/sys/kernel/ns_last_pid (the last pid handed out): while it does not
    move, nothing new exists and the tree is not rescanned at all; when it moves, only
    the new pids are looked at (on the first call: those from the root's pid on).
    /proc is listed in full only after a pid wrap-around, when too many pids went by,
    or where ns_last_pid cannot be read.  Lineage is remembered,
    so a process whose parent exited (a daemonizing server) stays in the tree."""

    RESCAN_LIMIT = 256  # more new pids than this since the last poll: list /proc instead

    def __init__(self, root: int) -> None:
        self.root = root
        self.parent: dict[int, int] = {}
        # ns_last_pid when last looked; descendants are younger than the root, so
        # the first look starts at the root's own pid (a wrap-around since then is
        # noticed as last < root and answered with a full scan).
        self.last: int | None = root - 1
        self.tree: list[int] = [root]

    def pids(self) -> list[int]:
        last = _last_pid()
        if (
            last is None
            or self.last is None
            or last < self.last
            or last - self.last > self.RESCAN_LIMIT
        ):
            self._full_scan()
        elif last != self.last:
            for p in range(self.last + 1, last + 1):
                self._learn(p)
        else:
            return self.tree
        self.last = last
        self.tree = self._walk()
        if last is None:
            self.last = None  # no ns_last_pid here: a full scan on every call
        return self.tree

    def _full_scan(self) -> None:
        try:
            names = os.listdir("/proc")
        except OSError:
            return
        for name in names:
            if name.isdigit() and int(name) not in self.parent:
                self._learn(int(name))

    def _learn(self, pid: int) -> None:
        info = _stat(pid)
        if info is not None and info[1] == pid:  # a process, not another one's thread
            self.parent[pid] = info[0]

    def _walk(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for p, pp in self.parent.items():
            children.setdefault(pp, []).append(p)
        out, todo, seen = [], [self.root], {self.root}
        while todo:
            p = todo.pop(0)
            out.append(p)
            for c in sorted(children.get(p, ())):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
        return out


def _last_pid() -> int | None:
    try:
        with open("/proc/sys/kernel/ns_last_pid", "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, tgid) of a pid or tid; None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    ppid = tgid = -1
    for line in data.splitlines():
        if line.startswith(b"Tgid:"):
            tgid = int(line.split()[1])
        elif line.startswith(b"PPid:"):
            ppid = int(line.split()[1])
            break
    return (ppid, tgid) if ppid >= 0 and tgid >= 0 else None


# ----------------------------------------------------------------------------- probing


class _Probe:
    def __init__(self, transport: str, port: int | None, path: str | None) -> None:
        self.transport = transport
        self.port = port
        self.path = path
        self.want_path = (
            os.path.normpath(os.path.abspath(path)) if path and not path.startswith("@") else path
        )
        self.diags: dict[int, SockDiag | None] = {}  # netns inode -> sock_diag (None: use /proc)

    def close(self) -> None:
        for d in self.diags.values():
            if d is not None:
                d.close()
        self.diags.clear()

    def wanted(self) -> str:
        if self.transport == "unix":
            return str(self.path)
        return f"{'UDP ' if self.transport.startswith('udp') else ''}port {self.port}"

    # -- matching --

    def matches(self, e: SockEntry) -> bool:
        t = self.transport
        if t == "unix":
            return e.kind == "unix" and e.state == "LISTEN" and self._path_matches(e)
        if e.port != self.port:
            return False
        if t.startswith("tcp"):
            if not e.kind.startswith("tcp") or e.state != "LISTEN":
                return False
        elif not e.kind.startswith("udp") or e.state != "UNCONN":
            return False
        return e.reachable_over_ipv4() if t.endswith("4") else e.reachable_over_ipv6()

    def match_any(self, entries: list[SockEntry]) -> SockEntry | None:
        return next((e for e in entries if self.matches(e)), None)

    def _path_matches(self, e: SockEntry) -> bool:
        name = str(e.local)
        if name == self.path:
            return True
        if not name or name.startswith("@") or self.want_path is None:
            return False
        if not os.path.isabs(name) and e.pid is not None:
            try:
                name = os.path.join(os.readlink(f"/proc/{e.pid}/cwd"), name)
            except OSError:
                return False
        return os.path.normpath(name) == self.want_path

    # -- one poll --

    def poll(self, pids: list[int]) -> SockEntry | None:
        owners = owners_of(pids)
        if not owners:
            return None
        owner_pids = list(dict.fromkeys(p for p, _ in owners.values()))
        for ns, ns_pids in group_by_netns(owner_pids).items():
            for e in self._candidates(ns, ns_pids, owners):
                if e.inode in owners:
                    p, fd = owners[e.inode]
                    e = replace(e, pid=p, fd=fd)
                    if self.matches(e):
                        return e
        return None

    def _candidates(
        self, ns: int, ns_pids: list[int], owners: dict[int, tuple[int, int]]
    ) -> list[SockEntry]:
        t = self.transport
        out: list[SockEntry] = []
        if t == "unix":
            data = read_any(ns_pids, "unix")
            return [] if data is None else parse_unix(data, owners)
        if t.startswith("udp"):
            for kind in ("udp4", "udp6") if t == "udp4" else ("udp6",):
                data = read_any(ns_pids, kind)
                if data is not None:
                    out += parse_inet(data, kind, owners)
            return out
        kinds = ("tcp4", "tcp6") if t == "tcp4" else ("tcp6",)
        if ns not in self.diags:
            self.diags[ns] = open_diag(ns_pids[0])
        for kind in kinds:
            found = tcp_listeners(ns_pids, owners, (kind,), self.port or 0,
                                  diag=self.diags[ns])
            out += found
            if kind == "tcp4" and found:
                break  # an IPv4 listener of the tree on the port: no need to ask for IPv6
        return out
