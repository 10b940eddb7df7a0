#!/bin/sh
# build.sh OUT [private]: libfoo v1 (mapped by the daemon) and v2, the plugin, the daemon.
# With "private", v1 already has version FOO_PRIVATE (without bar), as glibc's
# GLIBC_PRIVATE existed before the upgrade: the loader then says "symbol bar
# version FOO_PRIVATE not defined in file libfoo.so.1 with link time reference".
set -e
src=$(dirname "$0"); out=$1; v1map=$src/v1.map
[ "$2" = private ] && v1map=$src/v1_private.map
mkdir -p "$out/v2"
gcc -shared -fPIC -g -Wl,-soname,libfoo.so.1 -Wl,--version-script,"$v1map" -o "$out/libfoo.so.1" "$src/libfoo.c"
gcc -shared -fPIC -g -DV2 -Wl,-soname,libfoo.so.1 -Wl,--version-script,"$src/v2.map" -o "$out/v2/libfoo.so.1" "$src/libfoo.c"
ln -sf libfoo.so.1 "$out/libfoo.so"; ln -sf libfoo.so.1 "$out/v2/libfoo.so"
gcc -shared -fPIC -g -o "$out/plugin.so" "$src/plugin.c" -L"$out/v2" -lfoo -Wl,-rpath,'$ORIGIN'
gcc -g -O0 -o "$out/daemon" "$src/daemon.c" -L"$out" -lfoo -Wl,-rpath,'$ORIGIN' -ldl
