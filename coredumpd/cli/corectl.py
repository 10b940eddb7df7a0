"""corectl: browse, dump, debug and analyse the crashes stored by coredumpd.

``main(argv, env)`` is the console script and is callable in-process (tests).
The command line comes from :data:`coredumpd.cli.corectl_spec.CORECTL`, which
also generates man/corectl.1.  One handler at the top turns our errors into
``corectl: error: …`` and an exit status (:class:`ExitStatus`); a traceback
only with ``--debug``.  A closed pipe (``corectl list | head``) ends quietly,
as the Python documentation recommends for SIGPIPE ("Note on SIGPIPE" in the
signal module docs).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence

from coredumpd.cli import commands, cores
from coredumpd.cli.commands import Context, NoMatch
from coredumpd.cli.corectl_spec import CORECTL
from coredumpd.cli.exitcodes import ExitStatus
from coredumpd.cli.spec import build_parser
from coredumpd.config import ConfigFileError, load_config
from coredumpd.errors import CoredumpdError

__all__ = ["ExitStatus", "main", "parser"]

def _fleet(ctx: Context) -> int:
    from coredumpd.cli import fleet  # only `corectl fleet` needs it: start-up of the others

    return fleet.cmd_fleet(ctx)


COMMANDS: dict[str, Callable[[Context], int]] = {
    "list": commands.cmd_list, "show": commands.cmd_show, "dump": cores.cmd_dump,
    "debug": cores.cmd_debug, "analyze": cores.cmd_analyze, "delete": commands.cmd_delete,
    "vacuum": commands.cmd_vacuum, "fleet": _fleet,
    "reanalyze": commands.cmd_reanalyze,
}


@functools.cache
def parser() -> argparse.ArgumentParser:
    """corectl's parser, built once: the analysis worker (coredumpd.cli.worker) builds it
    before it forks, so that no request pays the ~5 ms of building it again."""
    return build_parser(CORECTL)


def _parse(argv: Sequence[str]) -> argparse.Namespace | int:
    try:
        return parser().parse_args(list(argv))
    except SystemExit as exit_:  # --help (0) or a usage error (2, message printed)
        return int(exit_.code) if isinstance(exit_.code, int) else ExitStatus.USAGE


def _run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    config = load_config(args.config or env.get("COREDUMPD_CONFIG") or None)
    context = Context(config=config, env=env, args=args)
    for warning in config.warnings:
        context.warn(warning)
    return COMMANDS[args.command](context)


def _error(message: str) -> None:
    sys.stderr.write(f"corectl: error: {message}\n")


def _quiet_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a real file (tests capture it)
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run corectl with ``argv`` (without the program name); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    args = _parse(argv)
    if isinstance(args, int):
        return args
    try:
        return _run(args, env)
    except NoMatch as err:
        sys.stderr.write(f"{err}\n")
        return ExitStatus.NO_MATCH
    except cores.NoCore as err:
        _error(str(err))
        return ExitStatus.NO_CORE
    except BrokenPipeError:
        _quiet_stdout()
        return ExitStatus.OK
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return ExitStatus.INTERRUPTED
    except ConfigFileError as err:  # the user's to fix, like a bad command line
        _report(args, f"config error: {err}")
        return ExitStatus.USAGE
    except CoredumpdError as err:
        _report(args, str(err))
        return ExitStatus.ERROR
    except OSError as err:
        _report(args, f"{err.filename + ': ' if err.filename else ''}{err.strerror or err}")
        return ExitStatus.ERROR
    except Exception as err:  # noqa: BLE001  (a bug: say so; traceback with --debug)
        _report(args, f"internal error: {type(err).__name__}: {err}")
        return ExitStatus.ERROR


def _report(args: argparse.Namespace, message: str) -> None:
    if args.debug:
        traceback.print_exc()
    else:
        message += " (run with --debug for details)" if "internal error" in message else ""
    _error(message)


if __name__ == "__main__":
    sys.exit(main())
