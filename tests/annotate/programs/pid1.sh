#!/bin/sh
# pid1.sh PIDFILE PROGRAM [ARGS...]: run PROGRAM as PID 1 of a new PID
# namespace (`unshare -fp --mount-proc`, incidents/abort-hlt-pid1-container.txt),
# write its pid on the host to PIDFILE, then send it SIGUSR1 until it dies (PROGRAM waits for
# it: aborter's "wait" argument).  unshare re-raises the child's signal.
pidfile=$1; shift
/usr/bin/unshare -fp --mount-proc "$@" &
outer=$!
child=
while [ -z "$child" ]; do
    child=$(cat /proc/$outer/task/$outer/children 2>/dev/null)
    [ -n "$child" ] || sleep 0.01
done
echo "$child" > "$pidfile"
# Until PROGRAM has its handler, SIGUSR1 is dropped (PID 1 of a namespace): repeat.
while kill -USR1 "$child" 2>/dev/null; do sleep 0.05; done
wait
