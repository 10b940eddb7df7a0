"""Fixtures of the pipeline tests."""

from __future__ import annotations

import pytest

from tests.pipeline.test_drain import Store


@pytest.fixture()
def store_of(tmp_path):
    """``store_of(count)``: a Store of ``count`` queued crashes (test_drain.py), whose
    jobs are waited for at the end."""
    stores = []

    def make(count: int, **kwargs) -> Store:
        stores.append(Store(tmp_path, count, **kwargs))
        return stores[-1]
    yield make
    for store in stores:
        store.close()
