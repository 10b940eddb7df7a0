#!/usr/bin/env bash
# Runs coredumpd's test suite (installing what it needs first when missing).
# Tests that use the real kernel pipe need root; they swap kernel.core_pattern
# under a lock and always restore it.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import coredumpd, pytest' 2>/dev/null; then
    ./setup.sh --deps-only
fi
if [ "$(id -u)" -eq 0 ] && [ ! -S /run/systemd/journal/socket ]; then
    setsid /lib/systemd/systemd-journald </dev/null >/dev/null 2>&1 &
    for _ in $(seq 50); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
