"""A real PostgreSQL server for the fleet tests: one per module, a fresh database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresServer


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def fleet_dsn(postgres_server: PostgresServer) -> str:
    """The URI of a new, empty database on the module's server."""
    return postgres_server.dsn(postgres_server.create_database())
