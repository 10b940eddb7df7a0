"""The ``coredumpd`` console script: ``install``, ``uninstall``, ``serve``, ``publish``,
or the handler.

When the kernel runs it (any first argument other than a subcommand), it goes
straight to :func:`coredumpd.pipeline.handler.handle` with as few imports as
possible — no argparse — since the crashed process is held until the handler
has read the core.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

if TYPE_CHECKING:
    import argparse

SUBCOMMANDS = ("install", "uninstall", "serve", "publish", "-h", "--help")


def build_parser() -> argparse.ArgumentParser:
    """argparse for install/uninstall (the handler's arguments are positional specifiers)."""
    import argparse
    parser = argparse.ArgumentParser(
        prog="coredumpd", description="kernel.core_pattern handler (see coredumpd(8))")
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="register the handler in kernel.core_pattern")
    install.add_argument("--config", metavar="FILE",
                         help="the handler started by the kernel uses FILE")
    mode = install.add_mutually_exclusive_group()
    mode.add_argument("--socket", dest="mode", action="store_const", const="socket",
                      help="the kernel's coredump socket, served by coredumpd serve --supervise")
    mode.add_argument("--pipe", dest="mode", action="store_const", const="pipe",
                      help="the pipe handler")
    commands.add_parser("uninstall", help="restore the previous kernel.core_pattern")
    publish = commands.add_parser("publish", help="send the fleet outbox to the database now")
    publish.add_argument("--config", metavar="FILE", help="configuration file")
    _serve_parser(commands.add_parser("serve", help="the capture server on the coredump socket"))
    return parser


def _publish(config_path: str | None) -> int:
    """``coredumpd publish``: one drain of the outbox, what it did on stdout."""
    from coredumpd.config import load_config
    from coredumpd.fleet.publisher import drain
    result = drain(load_config(config_path))
    print(f"published {result.sent} records ({result.sent - result.stored} were already "
          f"in the database); {result.waiting} waiting, {result.rejected} rejected")
    if result.error is not None:
        print(f"coredumpd: error: {result.error}", file=sys.stderr)
        return 1
    return 0


def _serve_parser(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--config", metavar="FILE", help="the configuration file")
    serve.add_argument("--supervise", action="store_true",
                       help="run under a supervisor that keeps the pipe handler registered "
                            "whenever the server does not accept")
    serve.add_argument("--socket", metavar="PATH", default=None,
                       help="where to listen (default /run/coredumpd/coredump.socket)")
    serve.add_argument("--workers", metavar="N", type=int, default=None,
                       help="crashes served at once")
    serve.add_argument("--handler", metavar="PATH",
                       help="with --supervise: the pipe handler to register when the server "
                            "does not accept (default: the launcher install writes)")
    serve.add_argument("--restart-sec", metavar="SECONDS", type=float, default=1.0,
                       help="with --supervise: wait before restarting a server that ended")
    serve.add_argument("--analyze-socket", metavar="PATH", default=None,
                       help="where the analysis worker for corectl analyze listens (default "
                            "/run/coredumpd/analyze.socket with the default --socket, else "
                            "none; empty: none)")
    serve.add_argument("--listen-fd", metavar="FD", type=int,
                       help="serve on this inherited listening socket (the supervisor's)")
    serve.add_argument("--ready-fd", metavar="FD", type=int,
                       help="write one byte to this fd once accepting, then close it")
    serve.add_argument("--fallback", metavar="PATTERN",
                       help="the core_pattern to put back if the supervisor dies first")


def _serve(options: argparse.Namespace) -> int:
    import os

    from coredumpd.paths import DEFAULT_ANALYZE_SOCKET, DEFAULT_SOCKET_PATH
    from coredumpd.pipeline import serve, supervise
    workers = options.workers or serve.DEFAULT_WORKERS
    socket_path = options.socket or supervise.DEFAULT_SOCKET
    analyze = options.analyze_socket
    if options.supervise:
        return supervise.supervise(socket_path, options.config, options.handler, workers,
                                   options.restart_sec, analyze)
    if analyze is None and os.path.abspath(socket_path) == DEFAULT_SOCKET_PATH:
        analyze = DEFAULT_ANALYZE_SOCKET
    if options.listen_fd is not None:
        return serve.serve(options.socket, options.config, workers, options.listen_fd,
                           options.ready_fd, options.fallback, analyze or None)
    return serve.serve(socket_path, options.config, workers, ready_fd=options.ready_fd,
                       analyze_socket=analyze or None)


def _admin(argv: list[str]) -> int:
    from coredumpd.errors import CoredumpdError
    from coredumpd.pipeline import install
    options = build_parser().parse_args(argv)
    try:
        if options.command == "publish":
            return _publish(options.config)
        if options.command == "serve":
            return _serve(options)
        if options.command == "install":
            pattern = install.install_mode(options.config, options.mode)
            print(f"kernel.core_pattern = {pattern}")
            print(f"kernel.core_pipe_limit = {install.PIPE_LIMIT}")
        else:
            saved = install.uninstall()
            if "not_restored" in saved:
                print(f"coredumpd: the saved kernel.core_pattern {saved['not_restored']!r} "
                      f"would lose every crash ({saved['reason']}): the kernel's default "
                      "instead", file=sys.stderr)
            print(f"kernel.core_pattern = {saved.get('core_pattern')}")
            print(f"kernel.core_pipe_limit = {saved.get('core_pipe_limit')}")
    except CoredumpdError as err:
        print(f"coredumpd: error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return _admin(argv)
    from coredumpd.pipeline import slots  # wait for a slot before the handler's imports
    slots.protect_standard_fds()
    slots.hold_slot("handler", slots.handler_slots())
    from coredumpd.pipeline.handler import handle
    return handle(argv)


if __name__ == "__main__":
    sys.exit(main())
