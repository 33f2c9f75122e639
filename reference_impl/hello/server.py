"""Reference hello server: ``sockconf-hello-server PORT [options]``.

A thin socket driver around ``protocol.HelloServerConnection``; the system calls
follow the classic lifecycle one step at a time (LIFE-0):

    socket -> setsockopt(SO_REUSEADDR) -> setsockopt(options...) -> bind(wildcard)
    -> listen(backlog) -> accept -> [setsockopt(per-connection options)]
    -> send(greeting) -> shutdown(SHUT_WR) -> recv* (drain, until EOF)
    -> close(connection) -> close(listener) -> exit 0

Every failing call is reported by ``error_handling`` (``socket() error``, ...) after
closing what is open.  Python retries calls interrupted by a signal itself (PEP 475,
ERR-8).  SIGPIPE stays ignored (Python ignores it at start-up, and sends use
MSG_NOSIGNAL as well: ERR-6).  SIGTERM keeps its default action (LIFE-6), except
with ``--unix`` where a handler removes the socket file and then re-raises it.

Only the standard library; imports are kept small so start-up stays fast.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
from time import monotonic
from typing import NoReturn

from reference_impl.common.args import ArgError, parse_port, scan
from reference_impl.common.errors import error_handling, usage
from reference_impl.common.options import (
    SERVER_OPTION_TABLE,
    ServerOptions,
    apply_connection_options,
    apply_listener_options,
)
from reference_impl.common.unixpath import UnixPath
from reference_impl.hello.protocol import Action, HelloServerConnection

PROG = "sockconf-hello-server"
# After the greeting the server drains what the client sends until the client's
# EOF, but never longer than this: a silent client must not pin a one-shot server.
DRAIN_TIMEOUT = 10.0
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def _install_sigterm_cleanup(unix_path: UnixPath) -> object:
    """With --unix: on SIGTERM remove the socket file, then die by SIGTERM as usual.

    Returns the previous handler (for ``_restore_sigterm``), or None if unchanged.
    """

    def on_sigterm(signum: int, frame: object) -> None:
        unix_path.remove()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        return signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (in-process use): keep the default
        return None


def _restore_sigterm(previous: object) -> None:
    """Put back the SIGTERM handler (matters only when main() runs in-process)."""
    if previous is None:
        return
    try:
        signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        pass


def parse_command_line(argv: list[str]) -> tuple[ServerOptions, int]:
    """(options, port) from argv, or exit: usage on stdout / bad value on stderr."""
    argv0 = argv[0] if argv else PROG
    try:
        positionals, scanned = scan(argv[1:], SERVER_OPTION_TABLE)
    except ArgError as exc:
        error_handling(f"{argv0}: {exc}")
    opts = ServerOptions.from_scanned(scanned)
    if len(positionals) != (0 if opts.unix is not None else 1):
        usage(argv0, "<port>")
    if opts.unix is not None:
        if opts.ipv6:
            error_handling(f"{argv0}: --unix and --ipv6 exclude each other")
        return opts, 0
    try:
        port = parse_port(positionals[0])
    except ArgError as exc:
        error_handling(f"{argv0}: {exc}")
    return opts, port


def serve(opts: ServerOptions, port: int) -> int:
    """Run the one-shot server; returns 0 or exits through error_handling."""
    unix_path = UnixPath(opts.unix) if opts.unix is not None else None
    address: str | tuple[str, int]
    if unix_path is not None:
        unix_path.remove_stale()
        address = unix_path.path
    else:
        address = ("::" if opts.ipv6 else "0.0.0.0", port)

    listener: socket.socket | None = None
    conn: socket.socket | None = None
    previous_sigterm: object = None

    def fail(msg: str) -> NoReturn:
        _close(conn)
        _close(listener)
        if unix_path is not None:
            unix_path.remove()
            _restore_sigterm(previous_sigterm)
        error_handling(msg)

    try:
        listener = socket.socket(opts.family, socket.SOCK_STREAM)
    except OSError:
        fail("socket() error")
    assert listener is not None
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
        previous_sigterm = _install_sigterm_cleanup(unix_path)
    try:
        listener.listen(opts.backlog)
    except OSError:
        fail("listen() error")
    try:
        conn, _peer = listener.accept()
    except OSError:
        fail("accept() error")
    assert conn is not None
    try:
        apply_connection_options(conn, opts)
    except OSError:
        fail("setsockopt() error")

    state = HelloServerConnection()
    deadline = 0.0
    poller: select.poll | None = None
    while True:
        action = state.next_action()
        if action is Action.SEND:
            try:
                state.sent(conn.send(state.pending_output(), _MSG_NOSIGNAL))
            except OSError:
                state.send_failed()
        elif action is Action.SHUTDOWN_WR:
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                state.shutdown_failed()
            else:
                state.shutdown_done()
            deadline = monotonic() + DRAIN_TIMEOUT
            poller = select.poll()
            poller.register(conn.fileno(), select.POLLIN)
        elif action is Action.DRAIN:
            assert poller is not None
            remaining = deadline - monotonic()
            if remaining <= 0:
                state.drain_timeout()
                continue
            try:
                ready = poller.poll(remaining * 1000.0)
            except OSError:
                state.receive_failed()
                continue
            if not ready:
                state.drain_timeout()
                continue
            try:
                data = conn.recv(65536)
            except OSError:
                state.receive_failed()
                continue
            state.received(data)
        elif action is Action.CLOSE:
            if state.write_failed:
                fail("write() error")
            conn.close()
            state.closed()
        else:  # Action.DONE
            break

    listener.close()
    if unix_path is not None:
        unix_path.remove()
        _restore_sigterm(previous_sigterm)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``PROG <port> [options]``; argv[0] is the program name used in messages."""
    if argv is None:
        argv = sys.argv
    opts, port = parse_command_line(list(argv))
    return serve(opts, port)


if __name__ == "__main__":
    sys.exit(main())
