#!/bin/sh
# run.sh DIR: start the worker; once it runs, copy the same library over libzk.so.2 with
# "cp -p" (the same inode, truncated and rewritten; the timestamps of the copy are the
# old ones, so nothing but the core's relocated pages shows it), then at once SIGUSR1
# it: it dlopens libm.so.6 and dies in the loader (the incident, in milliseconds).
cd "$1" || exit 2
rm -f worker.pid
./worker worker.pid libm.so.6 &
while [ ! -s worker.pid ]; do sleep 0.02; done
cp -p zk-copy.so libzk.so.2
kill -USR1 "$(cat worker.pid)"
wait
