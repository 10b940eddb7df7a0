"""A real PostgreSQL server for tests and benches (Debian's ``postgresql`` package).

``PostgresServer()`` runs ``initdb`` into a fresh directory under /tmp and
``pg_ctl`` to start and stop it, listening only on a Unix socket in that
directory (no TCP port to collide with).  PostgreSQL refuses to run as root,
so as root the server runs as the ``postgres`` user, which owns the directory.
``dsn(dbname, user)`` gives a libpq URI; ``create_database()`` a fresh database.
``stop()``/``start()`` simulate an outage; ``close()`` stops it and removes
everything.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from typing import Any, Self

PORT = 5432  # only names the socket file (.s.PGSQL.5432) in the server's own directory


def pg_bin(tool: str) -> str:
    """The newest installed /usr/lib/postgresql/N/bin/TOOL."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not found:
        raise FileNotFoundError(f"no PostgreSQL {tool}: install the postgresql package "
                                "(setup.sh does)")
    return found[-1]


class PostgresServer:
    """One throw-away PostgreSQL cluster: see the module docstring."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.base = tempfile.mkdtemp(prefix="cdpg-", dir="/tmp")
        self.data = os.path.join(self.base, "data")
        self.log = os.path.join(self.base, "server.log")
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.settings = {"listen_addresses": "''", "unix_socket_directories": self.base,
                         "port": str(PORT), "fsync": "off", **(settings or {})}
        if os.geteuid() == 0:
            os.chmod(self.base, 0o755)
            shutil.chown(self.base, self.user, self.user)
        self._as_server([pg_bin("initdb"), "-D", self.data, "-U", "postgres", "-A", "trust",
                         "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        self.start()

    def _as_server(self, argv: list[str]) -> None:
        kwargs: dict[str, Any] = {"user": self.user} if os.geteuid() == 0 else {}
        subprocess.run(argv, check=True, capture_output=True, text=True, cwd="/", **kwargs)

    def start(self) -> None:
        options = " ".join(f"-c {key}={value}" for key, value in self.settings.items())
        self._as_server([pg_bin("pg_ctl"), "-D", self.data, "-l", self.log, "-w",
                         "-o", options, "start"])

    def stop(self) -> None:
        self._as_server([pg_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop"])

    def dsn(self, dbname: str = "postgres", user: str = "postgres",
            password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@/{dbname}?host={self.base}&port={PORT}"

    def connect(self, dbname: str = "postgres", user: str = "postgres") -> Any:
        import psycopg
        return psycopg.connect(self.dsn(dbname, user), autocommit=True)

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; returns its name."""
        name = name or "t_" + uuid.uuid4().hex[:12]
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def close(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
