#!/usr/bin/env bash
# Runs coredumpd's test suite (installing what it needs first when missing).
# Tests that use the real kernel pipe need root; they swap kernel.core_pattern
# under a lock and always restore it.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import coredumpd, pytest' 2>/dev/null; then
    ./setup.sh --deps-only
fi
if [ "$(id -u)" -eq 0 ]; then
    # A journal socket file may outlive its journald: start one unless one listens.
    .venv/bin/python -m tests.support.journald || true
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
