"""The AF_UNIX socket file of a reference server (shared by hello, echo and
jsondoc): a stale file left by a dead server is removed before bind(), and the
file this server created — only that one — is removed when it ends."""

from __future__ import annotations

import os
import stat


class UnixPath:
    """The AF_UNIX socket file: stale-file removal before bind, removal at exit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.inode: tuple[int, int] | None = None

    def remove_stale(self) -> None:
        """Unlink ``path`` if it is a socket file nobody listens on.

        Anything else (a regular file, a live listener) is left alone, so bind()
        fails with EADDRINUSE and the server reports ``bind() error``.
        """
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if not stat.S_ISSOCK(st.st_mode) or _unix_path_listening(self.path):
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def bound(self) -> None:
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        self.inode = (st.st_dev, st.st_ino)

    def remove(self) -> None:
        """Unlink the socket file we created (and only that one)."""
        if self.inode is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.inode:
                os.unlink(self.path)
        except OSError:
            pass
        self.inode = None


def _unix_path_listening(path: str) -> bool:
    """Whether /proc/net/unix shows a listening socket bound to ``path``.

    Reading /proc avoids a probe connect() (which would be an extra socket in the
    lifecycle trace).  Paths are compared as given and as absolute paths; a socket
    bound elsewhere under a relative name is not recognised.
    """
    wanted = {path, os.path.abspath(path)}
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="surrogateescape") as f:
            next(f, None)
            for line in f:
                fields = line.rstrip("\n").split(None, 7)
                # Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 = listening
                if len(fields) == 8 and fields[7] in wanted and int(fields[3], 16) & 0x10000:
                    return True
    except (OSError, ValueError):
        return False
    return False
