"""A private, anonymous network namespace per test process.

Two entry points:

* :func:`enter_user_namespace` -- for a NON-root pytest controller, called while it is
  still single-threaded (before xdist spawns workers). It moves the controller into a
  new user namespace (mapping the caller to uid/gid 0) plus a new network namespace.
  Children it executes afterwards are uid 0 in that user namespace and therefore hold
  CAP_SYS_ADMIN / CAP_NET_RAW there, which is what :func:`isolate` needs.
* :func:`isolate` -- called once per worker process, from the main thread. It
  ``unshare(CLONE_NEWNET)``\\ s the calling thread into a fresh network namespace and
  brings ``lo`` up (127.0.0.1 and ::1 appear automatically), so every target, capture
  and sock_diag query of this worker sees only its own sockets.

Namespaces are anonymous: they vanish with their last process, nothing is left behind.

Linux semantics to keep in mind (they are why the call must come first, from the main
thread):

* ``unshare(CLONE_NEWNET)`` moves only the *calling thread*. Threads that already exist
  stay where they were; threads and subprocesses created afterwards (by the moved
  thread) inherit the new namespace.
* ``/proc/self/net`` is ``/proc/<tgid>/net``: it shows the namespace of the thread-group
  leader (the main thread). ``/proc/thread-self/net`` shows the calling thread's.
* Sockets belong to the namespace of the thread that created them, for their lifetime.
* ``unshare(CLONE_NEWUSER)`` fails with EINVAL in a multithreaded process, which is why
  :func:`enter_user_namespace` must run in the controller before any thread exists.

Only the standard library is used (this module is also copied stand-alone into a
world-readable directory by the non-root tests).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Isolation",
    "NO_CAP_NET_RAW",
    "current",
    "enter_user_namespace",
    "in_user_namespace",
    "isolate",
]

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

NO_CAP_NET_RAW = "no CAP_NET_RAW: run as root or where user namespaces are allowed"

Kind = Literal["netns", "userns", "host"]


@dataclass(frozen=True)
class Isolation:
    """How this process is isolated, and whether raw capture is possible in it."""

    kind: Kind  # "netns": own netns (root) / "userns": user+net namespace / "host": none
    wire: bool  # an AF_PACKET socket can be opened (CAP_NET_RAW in this netns)
    reason: str | None  # why not isolated / why no wire capture; None when all is well


_lock = threading.Lock()
_current: Isolation | None = None


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    libc = _libc()
    if libc.unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _write_proc(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def bring_up(ifname: str = "lo") -> None:
    """Set IFF_UP on ``ifname`` in the calling thread's netns (ioctl; no ``ip`` binary)."""
    name = ifname.encode()
    if len(name) >= 16:
        raise ValueError(f"interface name too long: {ifname!r}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", name, 0)
        res = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req)
        (flags,) = struct.unpack_from("H", res, 16)
        if not flags & _IFF_UP:
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", name, flags | _IFF_UP))


def in_user_namespace() -> bool:
    """True when this process is in a user namespace other than the initial one."""
    try:
        with open("/proc/self/uid_map") as f:
            lines = f.read().split()
    except OSError:
        return False
    # The initial user namespace maps the full range identically: "0 0 4294967295".
    return lines != ["0", "0", "4294967295"]


def packet_socket_reason(ifname: str = "lo") -> str | None:
    """None if an AF_PACKET socket can be opened and bound to ``ifname``, else why not."""
    af_packet = getattr(socket, "AF_PACKET", None)
    if af_packet is None:
        return "AF_PACKET sockets are not supported on this platform"
    try:
        s = socket.socket(af_packet, socket.SOCK_RAW, 0)
    except PermissionError:
        return NO_CAP_NET_RAW
    except OSError as e:
        return f"cannot open an AF_PACKET socket: {e}"
    try:
        s.bind((ifname, 0))
    except OSError as e:
        return f"cannot bind an AF_PACKET socket to {ifname!r}: {e}"
    finally:
        s.close()
    return None


def enter_user_namespace() -> bool:
    """Move this NON-root process into a new user + network namespace, as uid/gid 0.

    Call it in the pytest controller while it is still single-threaded. Returns True on
    success; False (never raises for "not allowed") when the caller is root (no-op), the
    process is multithreaded, or the kernel forbids unprivileged user namespaces.
    """
    if os.geteuid() == 0:
        return False
    uid, gid = os.geteuid(), os.getegid()
    try:
        _unshare(CLONE_NEWUSER | CLONE_NEWNET)
    except OSError:
        # EINVAL: multithreaded; EPERM/ENOSPC/EUSERS: forbidden by sysctl/limits.
        return False
    # From here we are in the new namespaces; there is no way back. The maps below are
    # always permitted for the namespace's creator, so a failure is a real error.
    try:
        _write_proc("/proc/self/setgroups", "deny")
    except FileNotFoundError:  # kernels < 3.19 have no setgroups file
        pass
    _write_proc("/proc/self/uid_map", f"0 {uid} 1")
    _write_proc("/proc/self/gid_map", f"0 {gid} 1")
    bring_up("lo")
    return True


def isolate(mode: str = "auto") -> Isolation:
    """Give this process (its main thread) a private network namespace; report what we have.

    ``mode="auto"``: unshare(CLONE_NEWNET) if permitted (root, or uid 0 inside a user
    namespace), bring ``lo`` up. ``mode="none"``: stay in the current namespace, only
    report capabilities. Idempotent: later calls return the first result.
    Must be called from the main thread (it moves only the calling thread).
    """
    global _current
    if mode not in ("auto", "none"):
        raise ValueError(f"isolation mode must be 'auto' or 'none', not {mode!r}")
    with _lock:
        if _current is not None:
            return _current
        unshare_error: str | None = None
        kind: Kind = "host"
        if mode == "auto":
            if threading.current_thread() is not threading.main_thread():
                raise RuntimeError(
                    "isolate() must be called from the main thread: unshare(CLONE_NEWNET) "
                    "moves only the calling thread, and /proc/self/net follows the main thread"
                )
            try:
                _unshare(CLONE_NEWNET)
            except OSError as e:
                if e.errno == errno.EPERM:
                    unshare_error = (
                        "no CAP_SYS_ADMIN for unshare(CLONE_NEWNET): run as root, or let the "
                        "controller enter a user namespace first"
                    )
                else:
                    unshare_error = f"unshare(CLONE_NEWNET) failed: {e}"
            else:
                bring_up("lo")
                kind = "userns" if in_user_namespace() else "netns"
        wire_reason = packet_socket_reason("lo")
        if wire_reason is not None:
            reason: str | None = wire_reason
        else:
            reason = unshare_error
        _current = Isolation(kind=kind, wire=wire_reason is None, reason=reason)
        return _current


def current() -> Isolation | None:
    """The result of the first :func:`isolate` call in this process, or None."""
    return _current
