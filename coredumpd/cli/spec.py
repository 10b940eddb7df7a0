"""Argument specs as data: one description drives argparse, --help and man pages.

httpie keeps its arguments in one declarative table and generates both the
parser and the man page from it; we do the same.  A :class:`Program` holds
global options, commands and the prose sections of a man page;
:func:`build_parser` turns it into an :class:`argparse.ArgumentParser` and
:mod:`coredumpd.cli.manpages` into roff (man-pages(7), groff_man(7)).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from coredumpd.values import Frozen


class Option(Frozen):
    """One argparse argument: ``flags`` are ``("-o", "--output")`` or ``("match",)``."""

    flags: tuple[str, ...]
    help: str
    metavar: str | None = None
    action: str | None = None
    nargs: str | int | None = None
    type: Callable[[str], Any] | None = None
    default: Any = None
    dest: str | None = None
    required: bool = False

    @property
    def positional(self) -> bool:
        return not self.flags[0].startswith("-")

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``ArgumentParser.add_argument``."""
        names = ("metavar", "action", "nargs", "type", "dest")
        out: dict[str, Any] = {k: getattr(self, k) for k in names if getattr(self, k) is not None}
        out["help"] = self.help
        if self.default is not None:
            out["default"] = self.default
        if self.required and not self.positional:
            out["required"] = True
        if self.positional:
            out.pop("dest", None)
        return out


class Command(Frozen):
    """A subcommand (``corectl list``), its aliases and its own options."""

    name: str
    summary: str
    description: str
    options: tuple[Option, ...] = ()
    aliases: tuple[str, ...] = ()


class Section(Frozen):
    """A prose man-page section: paragraphs, or tagged items (``term``, text)."""

    title: str
    paragraphs: tuple[str, ...] = ()
    items: tuple[tuple[str, str], ...] = ()


class Program(Frozen):
    """Everything about one command-line program or file format page."""

    name: str
    section: int
    summary: str
    synopsis: tuple[str, ...]
    description: tuple[str, ...]
    options: tuple[Option, ...] = ()
    commands: tuple[Command, ...] = ()
    # Options accepted both before and after the command name.
    shared_options: tuple[Option, ...] = ()
    extra_sections: tuple[Section, ...] = ()
    see_also: tuple[str, ...] = ()
    epilog: str = ""

    def command(self, name: str) -> Command:
        for command in self.commands:
            if name == command.name or name in command.aliases:
                return command
        raise KeyError(name)


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def _add(parser: argparse.ArgumentParser, option: Option, suppress_default: bool) -> None:
    kwargs = option.kwargs()
    if suppress_default:
        # Given after the command, the value overrides the one before it;
        # not given, the value from before the command stands.
        kwargs["default"] = argparse.SUPPRESS
    parser.add_argument(*option.flags, **kwargs)


def build_parser(program: Program) -> argparse.ArgumentParser:
    """An argparse parser for ``program``: options, then one subparser per command."""
    parser = argparse.ArgumentParser(
        prog=program.name, description=program.summary, epilog=program.epilog,
        formatter_class=_Formatter,
    )
    for option in program.options + program.shared_options:
        _add(parser, option, suppress_default=False)
    if not program.commands:
        return parser
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in program.commands:
        sub = subparsers.add_parser(
            command.name, aliases=list(command.aliases), help=command.summary,
            description=command.description, formatter_class=_Formatter,
        )
        sub.set_defaults(command=command.name)
        for option in command.options:
            _add(sub, option, suppress_default=False)
        for option in program.shared_options:
            _add(sub, option, suppress_default=True)
    return parser
