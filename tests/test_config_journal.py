"""JournalNamespace=: systemd's rules for namespace names (log_namespace_name_valid())."""

from __future__ import annotations

import pathlib

import pytest

from coredumpd.config import load_config
from coredumpd.errors import ConfigError


def _load(tmp_path: pathlib.Path, value: str):
    path = tmp_path / "c.conf"
    path.write_text(f"[Coredump]\nDirectory=/srv/cores\nJournalNamespace={value}\n")
    return load_config(str(path))


@pytest.mark.parametrize("name", ["crashes", "coredumpd-test-12-0", "a.b_c:d@e", "x" * 222])
def test_valid_namespaces(tmp_path: pathlib.Path, name: str) -> None:
    assert _load(tmp_path, name).journal_namespace == name


@pytest.mark.parametrize("name", ["..", ".", "a/b", "a b", "a*", "a?", "a[b]", "é", "a\\b",
                                  "a'b", "x" * 223])
def test_invalid_namespaces(tmp_path: pathlib.Path, name: str) -> None:
    with pytest.raises(ConfigError, match="journal namespace"):
        _load(tmp_path, name)


def test_empty_is_the_default_journal(tmp_path: pathlib.Path) -> None:
    assert _load(tmp_path, "").journal_namespace is None
