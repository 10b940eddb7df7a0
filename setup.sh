#!/usr/bin/env bash
# Installs everything coredumpd needs on a Debian machine (system packages, a
# virtualenv, man pages), registers the handler in kernel.core_pattern, crashes
# a demo program and shows what coredumpd made of it.
#
#   ./setup.sh              everything, then the demo (re-run with sudo when not root)
#   ./setup.sh --deps-only  packages, virtualenv and man pages only
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
REPO=$PWD
MODE=${1:-full}

if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup.sh: run it as root (no sudo here)" >&2; exit 1; }
    exec sudo -- "$0" "$@"
fi

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

APT_PACKAGES=(gcc g++ make gdb elfutils debuginfod lz4 xz-utils libc6-dbg util-linux acl
              systemd man-db groff-base groff python3 python3-venv python3-dev
              postgresql)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's own interpreter (installed above), not a pyenv one or its shim: the
# kernel starts the handler with an empty environment (a shim costs ~100 ms per
# start), and Debian builds Python with PGO and LTO and a static libpython —
# measured here against pyenv's --enable-shared build: start-up 11.4 vs 14.5 ms,
# a pure-Python loop 259 vs 353 ms.  A venv made by another interpreter is
# replaced.
PYTHON=/usr/bin/python3
if [ -x .venv/bin/python ] && ! grep -qx "home = /usr/bin" .venv/pyvenv.cfg; then
    log "replacing the virtualenv made by another interpreter"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    log "creating the virtualenv with $PYTHON"
    "$PYTHON" -m venv .venv
fi
log "installing coredumpd and its Python dependencies"
# editable_mode=compat: a plain .pth path entry; setuptools' default import-hook
# finder costs every interpreter start ~16 ms (it imports pathlib, re, urllib...).
.venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]' \
    --config-settings editable_mode=compat
# The console script pip writes for corectl imports re (to strip a Windows ".exe" from
# argv[0]): ~6 ms of CPU at every corectl start, a third of the analysis client's
# (coredumpd.cli.client imports only _socket and marshal).  The same script without it:
shebang=$(head -n 1 .venv/bin/corectl)
printf '%s\n' "$shebang" 'import sys' 'from coredumpd.cli.client import main' \
    "if __name__ == '__main__':" '    sys.exit(main())' > .venv/bin/corectl.new
chmod 0755 .venv/bin/corectl.new
mv .venv/bin/corectl.new .venv/bin/corectl

log "installing the man pages"
for page in man/*.[0-9]; do
    [ -e "$page" ] || continue
    section=${page##*.}
    install -D -m 0644 "$page" "/usr/local/share/man/man$section/$(basename "$page")"
done
mandb -q 2>/dev/null || true

[ "$MODE" = "--deps-only" ] && exit 0

# A journal socket file may outlive its journald (/run is not always a tmpfs):
# start a standalone journald unless one listens on the socket.
log "checking that systemd-journald listens"
.venv/bin/python -m tests.support.journald || log "no journald: crashes are stored and indexed, not journaled"

# Where the kernel has the coredump socket (Linux 6.16+), `coredumpd install`
# registers the pipe handler, then starts `coredumpd serve --supervise`, which
# switches core_pattern to the socket once the server accepts (and back to the
# pipe whenever it does not); elsewhere the pipe handler stays.
log "registering coredumpd in kernel.core_pattern"
.venv/bin/coredumpd install || {
    log "the socket server did not start accepting: registering the pipe handler"
    .venv/bin/coredumpd install --pipe
}
pattern=$(cat /proc/sys/kernel/core_pattern)
case "$pattern" in
    @@*) log "mode: socket (coredumpd serve --supervise on ${pattern#@@}; the pipe handler whenever it does not accept)" ;;
    *) log "mode: pipe handler" ;;
esac
echo "kernel.core_pattern = $pattern"

log "crashing the demo program"
demo_dir=$(mktemp -d)
trap 'rm -rf "$demo_dir"' EXIT
gcc -g -O1 -fno-omit-frame-pointer -o "$demo_dir/coredumpd-demo" examples/demo-crash.c
(ulimit -c unlimited; exec "$demo_dir/coredumpd-demo") &
demo_pid=$!
wait "$demo_pid" || true
# The kernel reaps the crash before the handler writes the index row, and the
# analysis runs detached after that: wait for this PID's analysis (an older
# demo crash may be in the store) before showing the report.
for _ in $(seq 150); do
    state=$(.venv/bin/corectl --json show "$demo_pid" 2>/dev/null \
            | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["analysis"]["state"])' \
            2>/dev/null || true)
    [ "$state" = done ] || [ "$state" = failed ] && break
    sleep 0.2
done
log "corectl list"
.venv/bin/corectl --no-pager list
log "corectl show $demo_pid"
.venv/bin/corectl --no-pager show "$demo_pid"
