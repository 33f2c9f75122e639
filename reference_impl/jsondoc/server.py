"""Reference JSONDOC server: ``sockconf-jsondoc-server [options] <port>``.

    sockconf-jsondoc-server [--data PATH] [--max-clients N] [--backlog N]
        [--rcvbuf BYTES] [--sndbuf BYTES] [--linger SECONDS]
        [--keepalive IDLE INTERVAL COUNT] [--no-reuseaddr] [--debug]
        [--ipv6 | --unix PATH] <port>

Without ``--data`` the documents live in memory; with it, in the SQLite file PATH
(created if missing; a restart on the same PATH finds every acknowledged write).

The main thread follows the classic lifecycle one step at a time (LIFE-0):

    socket -> setsockopt(SO_REUSEADDR) -> setsockopt(options...) -> bind(wildcard)
    -> listen(backlog) -> loop: [wait for a free client slot] -> accept
       -> setsockopt(per-connection options) -> start the connection's thread

and each connection runs in its own daemon thread (LIFE-7), a thin driver around
``protocol.ServerConnection``:

    recv* -> responses sendall'd in request order
    EOF        -> every complete line answered -> shutdown(SHUT_WR) -> close   (FIN)
    too large  -> too_large response -> shutdown(SHUT_WR) -> drain input for up to
                  1 s or until EOF -> close  (so the response is not lost to a RST)
    any socket error ends that connection only (LIFE-8)

At most ``--max-clients`` connections (default 128) are served at once; when all
slots are taken the accept loop waits, so further clients wait in the backlog.
accept() failing with ECONNABORTED is retried (EINTR is retried by Python itself,
PEP 475); any other failure is ``accept() error`` and exit 1 (ERR-4, ERR-7).
SIGPIPE is ignored (Python does that at start-up) and sends use MSG_NOSIGNAL
(ERR-6).  SIGTERM wakes every connection, closes the listener (removing the
``--unix`` socket file) and the store, then ends the process by SIGTERM (LIFE-6).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from time import monotonic
from typing import NoReturn

from reference_impl.common.args import ArgError, int_in_range, parse_port, scan
from reference_impl.common.errors import error_handling, usage, warn
from reference_impl.common.options import (
    SERVER_OPTION_TABLE,
    ServerOptions,
    apply_connection_options,
    apply_listener_options,
)
from reference_impl.common.unixpath import UnixPath
from reference_impl.jsondoc.protocol import ConnState, ServerConnection
from reference_impl.jsondoc.store import MemoryStore, SqliteStore, Store, StoreError

PROG = "sockconf-jsondoc-server"
DEFAULT_MAX_CLIENTS = 128
# A concurrent server accepts at once, but a burst of clients connecting together
# must not overflow the accept queue (dropped SYNs cost the client a 1 s retry).
DEFAULT_BACKLOG = 128
DRAIN_TIMEOUT = 1.0  # after too_large: how long input is drained before close()
EXIT_GRACE = 0.3  # on SIGTERM: how long woken connections get to close themselves
RECV_SIZE = 65536
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def _parse_data_path(text: str) -> str:
    if not text or "\0" in text:
        raise ArgError(f"invalid data path {text!r}")
    return text


# The common server options, without those that make no sense for a JSON stream
# server (urgent data, UDP broadcast), plus the store and the client limit.
OPTION_TABLE = {
    **{
        name: spec
        for name, spec in SERVER_OPTION_TABLE.items()
        if name not in ("--oobinline", "--broadcast")
    },
    "--data": (("PATH", _parse_data_path),),
    "--max-clients": (("N", int_in_range(1, 100_000, "max clients")),),
}


class Config:
    """The parsed command line."""

    __slots__ = ("opts", "port", "data", "max_clients")

    def __init__(self, opts: ServerOptions, port: int, data: str | None, max_clients: int) -> None:
        self.opts = opts
        self.port = port
        self.data = data
        self.max_clients = max_clients


def parse_command_line(argv: list[str]) -> Config:
    """The configuration from argv, or exit: usage on stdout / bad value on stderr."""
    argv0 = argv[0] if argv else PROG
    try:
        positionals, scanned = scan(argv[1:], OPTION_TABLE)
    except ArgError as exc:
        error_handling(f"{argv0}: {exc}")
    data = scanned.pop("--data", (None,))[0]
    max_clients = scanned.pop("--max-clients", (DEFAULT_MAX_CLIENTS,))[0]
    assert data is None or isinstance(data, str)
    assert isinstance(max_clients, int)
    opts = ServerOptions.from_scanned(scanned)
    if "--backlog" not in scanned:
        opts.backlog = DEFAULT_BACKLOG
    if len(positionals) != (0 if opts.unix is not None else 1):
        usage(argv0, "<port>")
    if opts.unix is not None:
        if opts.ipv6:
            error_handling(f"{argv0}: --unix and --ipv6 exclude each other")
        return Config(opts, 0, data, max_clients)
    try:
        port = parse_port(positionals[0])
    except ArgError as exc:
        error_handling(f"{argv0}: {exc}")
    return Config(opts, port, data, max_clients)


# --------------------------------------------------------------------------- connections


class Connections:
    """The client slots and the live connection sockets.

    ``slots`` bounds how many connections exist at once.  Sockets are registered
    so that shutdown can wake their threads; ``close`` unregisters, closes and
    frees the slot under one lock, so a socket is never shut down after its fd
    was closed (and maybe reused).
    """

    def __init__(self, max_clients: int) -> None:
        self.slots = threading.BoundedSemaphore(max_clients)
        self._idle = threading.Condition(threading.Lock())
        self._socks: set[socket.socket] = set()

    def add(self, conn: socket.socket) -> None:
        with self._idle:
            self._socks.add(conn)

    def close(self, conn: socket.socket) -> None:
        with self._idle:
            self._socks.discard(conn)
            try:
                conn.close()
            except OSError:
                pass
            self._idle.notify_all()
        self.slots.release()

    def wake_all(self) -> None:
        """shutdown(SHUT_RDWR) every live connection: blocked recv/send return."""
        with self._idle:
            for conn in self._socks:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._socks, timeout)


def _drain(conn: socket.socket, timeout: float) -> None:
    """Read and discard until EOF, an error, or ``timeout`` seconds."""
    deadline = monotonic() + timeout
    while True:
        left = deadline - monotonic()
        if left <= 0:
            return
        try:
            conn.settimeout(left)
            if not conn.recv(RECV_SIZE):
                return
        except OSError:  # TimeoutError included
            return


def serve_connection(conn: socket.socket, store: Store, conns: Connections) -> None:
    """One client, from accept() to close() (runs in the connection's thread)."""
    state = ServerConnection(store)
    try:
        while state.state is ConnState.OPEN:
            try:
                data = conn.recv(RECV_SIZE)
            except OSError:
                return  # reset, or woken at exit: this connection ends
            out = state.receive_data(data)
            if out:
                try:
                    conn.sendall(out, _MSG_NOSIGNAL)
                except OSError:
                    return
        if state.state is ConnState.FAILED:
            warn(f"{PROG}: store error, connection closed: {state.failure}")
            return
        try:
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if state.state is ConnState.TOO_LARGE:
            _drain(conn, DRAIN_TIMEOUT)
    except Exception as exc:  # a bug must end this connection, not the server
        warn(f"{PROG}: internal error, connection closed: {exc!r}")
    finally:
        conns.close(conn)


# --------------------------------------------------------------------------- server


class _Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler (not an Exception: nothing
    on the way catches it by accident)."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
    raise _Terminated


def _install_sigterm() -> object:
    """Returns the previous handler, or None when not in the main thread."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # in-process use from another thread: keep the default
        return None


# Signals whose Python handlers must run in the main thread.  The kernel delivers a
# process signal to any thread that does not block it; had a connection thread
# taken SIGTERM, the main thread would sleep on in accept() and the handler (which
# Python runs only in the main thread) would wait for the next client.
_MAIN_THREAD_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _start_masked(thread: threading.Thread, *, mask: bool) -> None:
    """Start `thread` with SIGTERM/SIGINT blocked (a new thread inherits the mask of
    the one that starts it); `mask` False (in-process use, no handler) starts it as is."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _MAIN_THREAD_SIGNALS) if mask else None
    try:
        thread.start()
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def open_store(data: str | None) -> Store:
    """MemoryStore, or SqliteStore(data); raises StoreError."""
    if data is None:
        return MemoryStore()
    return SqliteStore(data)


def serve(config: Config, argv0: str = PROG) -> int:
    """Run the server until SIGTERM (then die by it) or a fatal error (exit 1)."""
    opts = config.opts
    try:
        store = open_store(config.data)
    except StoreError as exc:
        error_handling(f"{argv0}: {exc}")
    unix_path = UnixPath(opts.unix) if opts.unix is not None else None
    address: str | tuple[str, int]
    if unix_path is not None:
        unix_path.remove_stale()
        address = unix_path.path
    else:
        address = ("::" if opts.ipv6 else "0.0.0.0", config.port)
    tcp = opts.unix is None
    conns = Connections(config.max_clients)
    listener: socket.socket | None = None
    previous_sigterm: object = None
    terminated = False

    def fail(msg: str) -> NoReturn:
        nonlocal listener
        _close(listener)  # no listening socket is left behind (ERR-7)
        listener = None
        error_handling(msg)

    try:
        previous_sigterm = _install_sigterm()
        try:
            listener = socket.socket(opts.family, socket.SOCK_STREAM)
        except OSError:
            fail("socket() error")
        try:
            apply_listener_options(listener, opts)
        except OSError:
            fail("setsockopt() error")
        try:
            listener.bind(address)
        except OSError:
            fail("bind() error")
        if unix_path is not None:
            unix_path.bound()
        try:
            listener.listen(opts.backlog)
        except OSError:
            fail("listen() error")

        while True:
            conns.slots.acquire()  # all slots taken: further clients wait in the backlog
            try:
                conn, _peer = listener.accept()
            except ConnectionAbortedError:
                conns.slots.release()
                continue
            except OSError:
                conns.slots.release()
                fail("accept() error")
            conns.add(conn)
            try:
                apply_connection_options(conn, opts)
                if tcp:  # one send per batch of responses: do not wait for ACKs
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                _start_masked(threading.Thread(
                    target=serve_connection,
                    args=(conn, store, conns),
                    name="jsondoc-connection",
                    daemon=True,
                ), mask=previous_sigterm is not None)
            except (OSError, RuntimeError):  # setsockopt failed / no thread: this one only
                conns.close(conn)
    except _Terminated:
        terminated = True
    finally:
        conns.wake_all()
        conns.wait_idle(EXIT_GRACE)
        _close(listener)
        if unix_path is not None:
            unix_path.remove()
        store.close()
        if previous_sigterm is not None:
            try:
                signal.signal(signal.SIGTERM, previous_sigterm)  # type: ignore[arg-type]
            except (ValueError, TypeError):
                pass
    if terminated:
        # End as the signal's default action would have: killed by SIGTERM.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``PROG [options] <port>``; argv[0] is the program name used in messages."""
    if argv is None:
        argv = sys.argv
    argv = list(argv)
    config = parse_command_line(argv)
    return serve(config, argv[0] if argv else PROG)


if __name__ == "__main__":
    sys.exit(main())
