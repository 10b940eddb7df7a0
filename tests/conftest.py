"""Shared pytest set-up: markers and the skip rule for kernel tests."""

from __future__ import annotations

import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.kernel import can_swap_core_pattern


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if can_swap_core_pattern():
        return
    skip = pytest.mark.skip(reason="needs root and a writable kernel.core_pattern")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(skip)
