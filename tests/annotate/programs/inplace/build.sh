#!/bin/sh
# build.sh OUT: libcodec.so (build A, mapped by the worker), libcodec_b.so (build B), worker.
set -e
src=$(dirname "$0"); out=$1
mkdir -p "$out"
gcc -shared -fPIC -g -O0 -o "$out/libcodec.so" "$src/codec.c"
gcc -shared -fPIC -g -O0 -DPADDED -o "$out/libcodec_b.so" "$src/codec.c"
gcc -g -O0 -o "$out/worker" "$src/worker.c" -L"$out" -lcodec -Wl,-rpath,'$ORIGIN'
