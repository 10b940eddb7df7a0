#!/bin/sh
# run.sh DIR: start the worker, copy build B over libcodec.so with cp (the same
# inode: the incident), then SIGUSR1 the worker so it calls into libcodec
# again.  The worker's pid is in DIR/worker.pid.
cd "$1" || exit 2
rm -f worker.pid
./worker worker.pid &
while [ ! -s worker.pid ]; do sleep 0.02; done
sleep 0.05
cp libcodec_b.so libcodec.so
kill -USR1 "$(cat worker.pid)"
wait
