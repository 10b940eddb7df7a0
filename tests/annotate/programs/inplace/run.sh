#!/bin/sh
# run.sh DIR [mv]: start the worker, put build B over libcodec.so with cp (same
# inode: the incident) or, with "mv", by rename (a new inode: the safe way),
# then SIGUSR1 the worker so it calls into libcodec.  Its pid is in DIR/worker.pid.
cd "$1" || exit 2
rm -f worker.pid
./worker worker.pid &
while [ ! -s worker.pid ]; do sleep 0.02; done
sleep 0.05
if [ "$2" = mv ]; then
    cp libcodec_b.so libcodec.so.new && mv libcodec.so.new libcodec.so
else
    cp libcodec_b.so libcodec.so
fi
kill -USR1 "$(cat worker.pid)"
wait
