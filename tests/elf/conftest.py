"""Fixtures of tests/elf: one real multi-threaded core, made once per session."""

from __future__ import annotations

import pathlib

import pytest

from tests.elf.realcore import RealCore, compile_c, crash


@pytest.fixture(scope="session")
def mt_core(tmp_path_factory: pytest.TempPathFactory) -> RealCore:
    directory: pathlib.Path = tmp_path_factory.mktemp("mtcore")
    exe = compile_c("crashmt.c", directory / "crashmt", "-O0")
    return crash(exe, directory, "3")
