"""Fleet: crash records of many machines, grouped in one PostgreSQL database.

After a crash's analysis the analysis job puts a small record of it
(:mod:`coredumpd.fleet.record`) into a local outbox in the store
(:mod:`coredumpd.fleet.outbox`); a publisher (:mod:`coredumpd.fleet.publisher`)
sends the outbox in batches to the database named by ``[Fleet] Database=``,
whose schema :mod:`coredumpd.fleet.schema` creates and migrates;
:mod:`coredumpd.fleet.queries` reads it for ``corectl fleet``.  Cores stay on
the host that caught them.  Only this package imports psycopg.  See docs/FLEET.md.
"""

from __future__ import annotations

from coredumpd.errors import CoredumpdError


class FleetError(CoredumpdError):
    """The fleet database cannot be reached or used, or a fleet record is invalid."""
