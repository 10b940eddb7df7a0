"""The ``corectl`` console script: ``analyze`` through ``coredumpd serve``'s analysis worker.

A Python process pays its start and its imports before it analyses anything
(argparse, the configuration, the analysis: most of a small core's time).  The
capture server keeps a process with all of that imported
(:mod:`coredumpd.cli.worker`, on :data:`DEFAULT_SOCKET`), as dmypy and nailgun
do for their tools: for ``corectl analyze`` this script connects there, hands
over its standard streams and working directory (``SCM_RIGHTS``), its argv,
environment and umask, and the worker forks a child that becomes this user
(credentials from the connection, ``SO_PEERCRED``/``SO_PEERGROUPS``, never from
what we send) and runs :func:`coredumpd.cli.corectl.main` on our streams.  The
exit status comes back; on a terminal the text comes back too, and the pager
runs here, in the terminal's foreground process group (the worker's child has
no controlling terminal).

So this module imports nothing heavy: ``_socket`` (not ``socket``, whose enums
cost ~6 ms), ``marshal`` for the frames (built in; both ends run the same
interpreter and the same code, :func:`identity`).  Every other command,
``--help``, anything but the exact spellings of the options of
:data:`coredumpd.cli.corectl_spec.CORECTL`, no server, a refused request or an
error before the worker started the command: the in-process ``corectl``, with
its own behaviour.  ``COREDUMPD_ANALYZE_SOCKET`` names another worker's socket;
empty, it turns the worker off.

Frames, both ways: a 4-byte little-endian length, then a marshal'd tuple whose
first item is its kind.  The request (``REQUEST``, with fds 0, 1, 2 and the
working directory) is the only frame we send; the worker answers ``REFUSED``
(then we run in-process), or ``STARTED``, any ``PAGE`` and last ``EXIT`` or
``KILLED`` (the command died by a signal: we die by it too).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

DEFAULT_SOCKET = "/run/coredumpd/analyze.socket"
SOCKET_ENV = "COREDUMPD_ANALYZE_SOCKET"
PROTOCOL = 1
REQUEST, REFUSED, STARTED, PAGE, EXIT, KILLED = (
    "request", "refused", "started", "page", "exit", "killed")
FRAME_MAX = 256 << 20
ERROR_STATUS = 3  # ExitStatus.ERROR (coredumpd.cli.exitcodes), without its enum import
INTERRUPTED_STATUS = 130  # ExitStatus.INTERRUPTED

# corectl_spec's shared options (tests/cli/test_analysis_worker.py keeps them equal):
# spelled exactly so, argparse reads them as we do; any other spelling goes in-process.
FLAG_OPTIONS = frozenset(("--json", "--no-pager", "--no-legend", "--debug"))
VALUE_OPTIONS = frozenset(("--config",))
ANALYZE_VALUE_OPTIONS = frozenset(("--exe",))
COMMAND = "analyze"


def _value_option(arg: str, names: frozenset[str]) -> str | None:
    """``--name`` when ``arg`` is one of ``names``, or ``--name=VALUE`` (then "=")."""
    if arg in names:
        return arg
    name, equals, _value = arg.partition("=")
    return "=" if equals and name in names else None


def _skip_options(argv: Sequence[str], start: int, values: frozenset[str]) -> int | None:
    """Index of the first argument from ``start`` that is not an option argparse reads
    as we do: len(argv) at the end, None when something needs argparse's judgement."""
    index = start
    while index < len(argv):
        arg = argv[index]
        if arg in FLAG_OPTIONS:
            index += 1
            continue
        kind = _value_option(arg, values)
        if kind == "=":
            index += 1
        elif kind is not None:
            if index + 1 >= len(argv) or argv[index + 1].startswith("-"):
                return None  # argparse's error message, or its reading of a dash value
            index += 2
        elif arg.startswith("-"):
            return None  # --help, an abbreviation, an unknown option, "--", "-"
        else:
            return index
    return index


def is_analyze(argv: Sequence[str]) -> bool:
    """``argv`` is an ``analyze`` command line spelled only with exact options."""
    command = _skip_options(argv, 0, VALUE_OPTIONS)
    if command is None or command >= len(argv) or argv[command] != COMMAND:
        return False
    index = command + 1
    while index < len(argv):
        found = _skip_options(argv, index, VALUE_OPTIONS | ANALYZE_VALUE_OPTIONS)
        if found is None:
            return False
        index = found + 1  # a positional (CORE); argparse judges how many there are
    return True


def identity() -> tuple[str, str]:
    """Which interpreter and which code: the worker serves only clients of its own."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.realpath(sys.prefix), os.path.realpath(package)


def encode(frame: tuple[Any, ...]) -> bytes:
    import marshal

    data = marshal.dumps(frame)
    return len(data).to_bytes(4, "little") + data


def read_exactly(sock: Any, size: int) -> bytes | None:
    """``size`` bytes, or None at EOF before the first; EOFError when cut short."""
    chunks, got = [], 0
    while got < size:
        data = sock.recv(min(size - got, 1 << 20))
        if not data:
            if got:
                raise EOFError("frame cut short")
            return None
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def read_frame(sock: Any) -> tuple[Any, ...] | None:
    """The next frame, None at EOF between frames."""
    import marshal

    header = read_exactly(sock, 4)
    if header is None:
        return None
    size = int.from_bytes(header, "little")
    if size > FRAME_MAX:
        raise ValueError(f"frame of {size} bytes")
    data = read_exactly(sock, size)
    frame = marshal.loads(data or b"")
    if not isinstance(frame, tuple) or not frame:
        raise ValueError("not a frame")
    return frame


def _stream_spec(stream: Any) -> tuple[str, str, bool, bool]:
    return (stream.encoding, stream.errors, stream.line_buffering, stream.write_through)


def _request(argv: Sequence[str]) -> tuple[Any, ...]:
    umask = os.umask(0o022)
    os.umask(umask)
    streams = tuple(_stream_spec(stream) for stream in (sys.stdin, sys.stdout, sys.stderr))
    return (REQUEST, PROTOCOL, identity(), list(argv), dict(os.environ), umask, streams)


def _connect(path: str) -> Any:
    """A connection to the worker at ``path``, whose peer is root or ourselves; OSError
    when there is none now (no file, nobody accepting, a full queue: never waits)."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        sock.connect(path)
        sock.setblocking(True)
        credentials = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        uid = int.from_bytes(credentials[4:8], sys.byteorder)
        if uid not in (0, os.geteuid()):  # another user's server must not get our fds
            raise OSError(f"the analysis socket belongs to uid {uid}")
    except BaseException:
        sock.close()
        raise
    return sock


def _send_request(sock: Any, argv: Sequence[str]) -> None:
    import _socket

    for stream in (sys.stdin, sys.stdout, sys.stderr):
        if stream is None:
            raise OSError("a standard stream is closed")
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, cwd))  # int[4]
        data = encode(_request(argv))
        sent = sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        if sent < len(data):
            sock.sendall(data[sent:])
    finally:
        os.close(cwd)


PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def _die_by(signo: int) -> int:
    """The command died by ``signo`` in the worker's child: so do we, as it would have here
    — but without a core: ours would show a kill(2) of ourselves, a crash that never
    happened here, and go to our own handler (the child, not dumpable, left none)."""
    import ctypes
    import signal

    sys.stdout.flush()
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    signal.signal(signo, signal.SIG_DFL)
    os.kill(os.getpid(), signo)
    return 128 + signo  # a signal that does not kill (ignored by our parent: not reset)


def _follow(sock: Any) -> int | None:
    """Frames until the command's end: its exit status; None when the worker refused."""
    started = False
    while True:
        try:
            frame = read_frame(sock)
        except (OSError, ValueError, EOFError, TypeError):
            if not started:
                return None
            frame = None
        if frame is None:
            if not started:
                return None
            sys.stderr.write("corectl: error: the analysis worker of coredumpd serve "
                             "ended before the command\n")
            return ERROR_STATUS
        kind = frame[0]
        if kind == REFUSED and not started:
            return None
        if kind == STARTED:
            started = True
        elif kind == PAGE and started:
            from coredumpd.cli.output import page

            page(list(frame[1]), str(frame[2]), os.environ, sys.stdout)
        elif kind == EXIT and started:
            return int(frame[1])
        elif kind == KILLED and started:
            return _die_by(int(frame[1]))


def run_on_worker(argv: Sequence[str], path: str) -> int | None:
    """``argv`` run by the worker at ``path``: its exit status, or None when it could not
    be (no worker, refused, failed before it started the command)."""
    try:
        sock = _connect(path)
    except OSError:
        return None
    try:
        _send_request(sock, argv)
        return _follow(sock)
    except OSError:
        return None
    except KeyboardInterrupt:  # our close makes the worker kill its child
        sys.stderr.write("\n")
        return INTERRUPTED_STATUS
    finally:
        sock.close()


def main() -> int:
    """The console script: the worker for ``analyze`` when there is one, else in-process."""
    argv = sys.argv[1:]
    path = os.environ.get(SOCKET_ENV, DEFAULT_SOCKET)
    if path and is_analyze(argv):
        status = run_on_worker(argv, path)
        if status is not None:
            return status
    from coredumpd.cli.corectl import main as corectl_main

    return corectl_main(argv)


if __name__ == "__main__":
    sys.exit(main())
