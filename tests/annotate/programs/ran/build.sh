#!/bin/sh
# build.sh OUT: prog (the build that runs, functions ran_*), prog_b (another build,
# functions other_*), both with build-ids.
set -e
src=$(dirname "$0"); out=$1
mkdir -p "$out"
gcc -g -O0 -fno-omit-frame-pointer -Wl,--build-id -DNAME=ran -o "$out/prog" "$src/prog.c"
gcc -g -O0 -fno-omit-frame-pointer -Wl,--build-id -DNAME=other -o "$out/prog_b" "$src/prog.c"
