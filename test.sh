#!/usr/bin/env bash
# Runs coredumpd's test suite (installing what it needs first when missing).
# Tests that use the real kernel pipe need root; they swap kernel.core_pattern
# under a lock and always restore it.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
# The fleet tests run a real PostgreSQL server (initdb/pg_ctl) through psycopg:
# a venv made before they existed still needs both (and isal, the DWARF readers' inflate).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import coredumpd, pytest, psycopg, isal' 2>/dev/null \
        || ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    ./setup.sh --deps-only
fi
# No host journald is started: tests that need one run their own, private
# (tests/support/journald.py), and the run fails if it changed the host's
# journal, core_pattern or /var/lib/coredumpd (tests/support/hostcheck.py).
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
