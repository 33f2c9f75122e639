"""The target's own descriptors, read through pidfd_getfd duplicates.

``pidfd_getfd`` duplicates one of the target's descriptors so that we can
``getsockopt`` it; the duplicate is closed at once (a lingering duplicate keeps the
connection open, and the target's close() would then send no FIN).  Errors a
caller must tell apart: PidfdUnavailable (the kernel or the permissions do not
allow the duplicate: a "not-testable" verdict) and SocketNotFound (the process or
descriptor is not there).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

__all__ = ["PidfdUnavailable", "SocketNotFound", "getsockopt_of"]

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
