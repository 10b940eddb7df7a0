#!/bin/sh
# build.sh OUT: libzk.so.2 (mapped by the worker), zk-copy.so (the same bytes), worker.
set -e
src=$(dirname "$0"); out=$1
mkdir -p "$out"
gcc -shared -fPIC -g -O0 -Wl,-soname,libzk.so.2 -o "$out/libzk.so.2" "$src/zk.c"
cp -p "$out/libzk.so.2" "$out/zk-copy.so"
gcc -g -O0 -fno-omit-frame-pointer -o "$out/worker" "$src/worker.c" -L"$out" -l:libzk.so.2 \
    -Wl,-rpath,'$ORIGIN' -ldl
