"""The fleet database's schema, created and migrated by coredumpd (versioned).

Everything lives in the PostgreSQL schema ``coredumpd``.  ``schema_version``
holds one row, the version the tables have; :data:`MIGRATIONS` ``[n]`` takes
version n to n+1.  :func:`ensure_schema` runs the missing steps under an
advisory lock (two publishers starting at once migrate once), each step and
its version bump in one transaction.  A database user without the rights to
migrate (a publisher with INSERT only, a reader with SELECT only) gets a
clear error when the schema is older than this coredumpd, and works as is
when it is current (docs/FLEET.md "Access").

The columns beside ``record`` (the whole fleet record, jsonb) are what the
queries filter and group on; the database computes them from the record at
insert (:data:`INSERT_SQL`), so a publisher sends nothing else.  One batch is
one statement and one transaction: measured against COPY into a staging table
(with the columns from the client or computed in SQL), multi-row VALUES and
unnest() of column arrays, this was the fastest; the server's time goes to
parsing, compressing and indexing the records, not to the statement.

Since version 2 a crash may be sent again with a newer analysis
(``analyzed_at``): a statement trigger deletes the older rows of the crashes
each insert brought, so the table holds one row per crash, the newest.
"""

from __future__ import annotations

from typing import Any

from coredumpd.fleet import FleetError

SCHEMA = "coredumpd"
ADVISORY_LOCK = 0x636F7265  # "core": serializes migrations across publishers

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the crashes table, keyed by (machine_id, crash_id): publishing is idempotent
    f"""
    CREATE TABLE {SCHEMA}.crashes (
        machine_id text NOT NULL,
        crash_id text NOT NULL,
        host text NOT NULL,
        container_id text,
        crashed_at timestamptz NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        pid integer,
        uid bigint,
        signal integer,
        signal_name text,
        comm text,
        exe text,
        unit text,
        core_state text,
        root_cause text,
        signature text NOT NULL,  -- '' when the crash has none
        frames text,
        product_version text,
        record jsonb NOT NULL,
        PRIMARY KEY (machine_id, crash_id)
    );
    -- fleet groups --since: an index-only scan of the time range
    CREATE INDEX crashes_crashed_at ON {SCHEMA}.crashes (crashed_at)
        INCLUDE (signature, host, product_version);
    CREATE INDEX crashes_signature ON {SCHEMA}.crashes (signature, crashed_at);
    -- lz4 (PostgreSQL 14+ built with it, as Debian's is) compresses the records about
    -- as well as the default pglz and took ingest from 5,900 to 9,000 records/s here
    DO $$ BEGIN
        EXECUTE 'ALTER TABLE {SCHEMA}.crashes ALTER COLUMN record SET COMPRESSION lz4';
    EXCEPTION WHEN feature_not_supported OR syntax_error OR invalid_parameter_value THEN
        NULL;  -- the default compression then
    END $$;
    """,
    # 1 -> 2: a reanalysis replaces the crash's record.  Each analysis is a row keyed by
    # (machine_id, crash_id, analyzed_at): the same analysis sent twice is stored once
    # (ON CONFLICT DO NOTHING, as before); a newer one is inserted, and the trigger
    # deletes the older rows of its crash.  The trigger runs as the schema's owner
    # (SECURITY DEFINER), so a publisher still needs INSERT alone.  Rows of version 1
    # (and records of older publishers, the column's default) are older than any analysis.
    f"""
    ALTER TABLE {SCHEMA}.crashes
        ADD COLUMN analyzed_at timestamptz NOT NULL DEFAULT '-infinity';
    ALTER TABLE {SCHEMA}.crashes DROP CONSTRAINT crashes_pkey;
    ALTER TABLE {SCHEMA}.crashes ADD PRIMARY KEY (machine_id, crash_id, analyzed_at);
    CREATE FUNCTION {SCHEMA}.keep_newest_analysis() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
    BEGIN
        -- Two transactions publishing analyses of the same crash wait for each other
        -- here (one lock per host, taken in order), so the second's DELETE, which takes
        -- a new snapshot (READ COMMITTED), sees the first's row.
        PERFORM pg_advisory_xact_lock({ADVISORY_LOCK}, hashtext(machine_id))
            FROM (SELECT DISTINCT machine_id FROM new_rows ORDER BY 1) AS hosts;
        DELETE FROM {SCHEMA}.crashes AS older
            USING (SELECT DISTINCT machine_id, crash_id FROM new_rows) AS n
            WHERE older.machine_id = n.machine_id AND older.crash_id = n.crash_id
              AND EXISTS (SELECT 1 FROM {SCHEMA}.crashes AS newer
                          WHERE newer.machine_id = older.machine_id
                            AND newer.crash_id = older.crash_id
                            AND newer.analyzed_at > older.analyzed_at);
        RETURN NULL;
    END $body$;
    REVOKE ALL ON FUNCTION {SCHEMA}.keep_newest_analysis() FROM PUBLIC;
    CREATE TRIGGER crashes_keep_newest_analysis AFTER INSERT ON {SCHEMA}.crashes
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION {SCHEMA}.keep_newest_analysis();
    """,
)
VERSION = len(MIGRATIONS)

# One statement per batch: the records as one jsonb array, the columns computed here.
INSERT_SQL = f"""
INSERT INTO {SCHEMA}.crashes (machine_id, crash_id, analyzed_at, host, container_id,
    crashed_at, pid, uid, signal, signal_name, comm, exe, unit, core_state, root_cause,
    signature, frames, product_version, record)
SELECT r->>'machine_id', r->>'crash_id',
    coalesce(timestamptz 'epoch' + (r->>'analyzed_us')::bigint * interval '1 microsecond',
             '-infinity'),
    r->>'host', r->>'container_id', to_timestamp((r->>'timestamp_us')::bigint / 1e6),
    (r->'row'->>'pid')::integer, (r->'row'->>'uid')::bigint, (r->'row'->>'signal')::integer,
    r->>'signal_name', r->'row'->>'comm', r->'row'->>'exe', r->'row'->>'unit',
    r->'row'->>'core_state', r->>'root_cause', coalesce(r->>'signature', ''),
    (SELECT string_agg(CASE WHEN position('!' in f) > 0
                            THEN substr(f, position('!' in f) + 1) ELSE f END, ' | ' ORDER BY n)
       FROM jsonb_array_elements_text(r->'signature_frames') WITH ORDINALITY AS s(f, n)),
    r->>'product_version', r
FROM jsonb_array_elements(%s::jsonb) AS r
ON CONFLICT DO NOTHING  -- no conflict target: a target would need SELECT on its columns
"""


def current_version(conn: Any) -> int:
    """The schema's version in the database (0: not created yet)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.schema_version",))
        row = cur.fetchone()
        if row is None or row[0] is None:
            return 0
        cur.execute(f"SELECT version FROM {SCHEMA}.schema_version")
        row = cur.fetchone()
    return int(row[0]) if row is not None else 0


def ensure_schema(conn: Any) -> int:
    """Create or migrate the schema to :data:`VERSION`; returns the version found."""
    import psycopg

    found = current_version(conn)
    conn.commit()
    if found == VERSION:
        return found
    if found > VERSION:
        raise FleetError(f"the fleet database has schema version {found}, newer than this "
                         f"coredumpd knows ({VERSION}): update coredumpd")
    try:
        _migrate(conn)
    except psycopg.errors.InsufficientPrivilege as err:
        conn.rollback()
        raise FleetError(f"the fleet database has schema version {found}, this coredumpd "
                         f"needs {VERSION}, and this user may not migrate it: run "
                         f"`coredumpd publish` once as the schema's owner ({err})") from err
    return found


def _migrate(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version (version integer "
                    "NOT NULL)")
        cur.execute(f"SELECT version FROM {SCHEMA}.schema_version FOR UPDATE")
        row = cur.fetchone()
        if row is None:
            cur.execute(f"INSERT INTO {SCHEMA}.schema_version VALUES (0)")
        version = int(row[0]) if row is not None else 0
        for step in range(version, VERSION):  # version re-read under the lock
            cur.execute(MIGRATIONS[step])
            cur.execute(f"UPDATE {SCHEMA}.schema_version SET version = %s", (step + 1,))
    conn.commit()
