"""The ``coredumpd`` console script: ``install``, ``uninstall``, ``publish``, or the handler.

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

SUBCOMMANDS = ("install", "uninstall", "publish", "-h", "--help")


def build_parser() -> argparse.ArgumentParser:
    """argparse for install/uninstall (the handler's arguments are positional specifiers)."""
    import argparse
    parser = argparse.ArgumentParser(
        prog="coredumpd", description="kernel.core_pattern handler (see coredumpd(8))")
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="register the handler in kernel.core_pattern")
    install.add_argument("--config", metavar="FILE",
                         help="the handler started by the kernel uses FILE")
    commands.add_parser("uninstall", help="restore the previous kernel.core_pattern")
    publish = commands.add_parser("publish", help="send the fleet outbox to the database now")
    publish.add_argument("--config", metavar="FILE", help="configuration file")
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


def _admin(argv: list[str]) -> int:
    from coredumpd.errors import CoredumpdError
    from coredumpd.pipeline import install
    options = build_parser().parse_args(argv)
    try:
        if options.command == "publish":
            return _publish(options.config)
        if options.command == "install":
            pattern = install.install(options.config)
            print(f"kernel.core_pattern = {pattern}")
            print(f"kernel.core_pipe_limit = {install.PIPE_LIMIT}")
        else:
            saved = install.uninstall()
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
