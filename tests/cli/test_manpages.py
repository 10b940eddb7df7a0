"""The man pages: generated from the argument specs, committed, rendering cleanly."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest

from coredumpd.cli import manpages
from coredumpd.cli.corectl import parser
from coredumpd.cli.corectl_spec import CORECTL
from coredumpd.cli.coredumpd_spec import CONFIG_KEYS, COREDUMPD
from coredumpd.config import config_keys

MAN_DIR = pathlib.Path(__file__).resolve().parents[2] / "man"
PAGES = ["corectl.1", "coredumpd.8", "coredumpd.conf.5"]


def test_committed_pages_match_the_specs() -> None:
    drifted = manpages.drifted_pages(str(MAN_DIR))
    assert drifted == [], "run: python -m coredumpd.cli.manpages --write man/"


def test_check_mode_detects_drift(tmp_path: pathlib.Path) -> None:
    manpages.write_pages(str(tmp_path))
    assert manpages.main(["--check", str(tmp_path)]) == 0
    page = tmp_path / "corectl.1"
    page.write_text(page.read_text().replace("newest first", "oldest first"))
    assert manpages.main(["--check", str(tmp_path)]) == 1


@pytest.mark.parametrize("page", PAGES)
def test_groff_renders_without_warnings(page: str) -> None:
    result = subprocess.run(["groff", "-ww", "-man", "-Tutf8", "-P-cbou", str(MAN_DIR / page)],
                            capture_output=True, text=True, check=True)
    assert result.stderr == ""
    assert "NAME" in result.stdout and "SEE ALSO" in result.stdout


@pytest.mark.parametrize("page", PAGES)
def test_man_l_renders(page: str) -> None:
    env = {**os.environ, "MANPAGER": "cat", "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    result = subprocess.run(["man", "-l", str(MAN_DIR / page)], capture_output=True,
                            text=True, env=env, check=True)
    assert result.stderr == ""
    assert page.split(".")[0].upper() in result.stdout


def _parser_flags(argparser: object) -> set[str]:
    flags: set[str] = set()
    for action in argparser._actions:  # type: ignore[attr-defined]
        flags.update(action.option_strings)
        for sub in getattr(action, "choices", None) or {}:
            if hasattr(action.choices[sub], "_actions"):
                flags.update(_parser_flags(action.choices[sub]))
    return flags


def test_every_corectl_option_is_in_its_page() -> None:
    page = (MAN_DIR / "corectl.1").read_text()
    for flag in _parser_flags(parser()) - {"-h", "--help"}:
        assert "\\fB" + flag.replace("-", "\\-") + "\\fR" in page, flag
    for command in CORECTL.commands:
        assert f"\\fB{command.name}\\fR" in page


def test_corectl_help_comes_from_the_same_spec() -> None:
    text = parser().format_help()
    for command in CORECTL.commands:
        assert command.name in text and command.summary in text


def test_conf_page_covers_exactly_the_config_keys() -> None:
    documented = [key.rstrip("=") for key, _text in CONFIG_KEYS]
    assert sorted(documented) == sorted(config_keys())
    page = (MAN_DIR / "coredumpd.conf.5").read_text()
    for key in config_keys():
        assert f"{key}=" in page


def test_coredumpd_page_lists_the_handler_specifiers() -> None:
    args = pytest.importorskip("coredumpd.ingest.args")
    page = (MAN_DIR / "coredumpd.8").read_text()
    for _field, specifier, _kind in args.SPECIFIERS:
        assert f"\\fB{specifier}\\fR" in page, specifier
    documented_order = [term for term, _ in COREDUMPD.extra_sections[0].items][:-1]
    assert documented_order == [spec for _f, spec, _k in args.SPECIFIERS]


def test_coredumpd_page_documents_its_parser() -> None:
    main = pytest.importorskip("coredumpd.pipeline.main")
    page = (MAN_DIR / "coredumpd.8").read_text()
    flags = _parser_flags(main.build_parser()) - {"-h", "--help"}
    for flag in flags:
        assert "\\fB" + flag.replace("-", "\\-") + "\\fR" in page, flag
    documented = {command.name for command in COREDUMPD.commands}
    for action in main.build_parser()._actions:
        if getattr(action, "choices", None) and isinstance(action.choices, dict):
            assert set(action.choices) == documented
