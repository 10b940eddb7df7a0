#!/bin/sh
# run.sh DIR [keep]: start the daemon, replace libfoo.so.1 by v2 with a rename (as a
# package manager does), then SIGHUP the daemon: its reload dlopen()s the
# plugin and dies.  The daemon's pid is in DIR/daemon.pid.
cd "$1" || exit 2
rm -f daemon.pid
./daemon ./plugin.so daemon.pid 2>daemon.err &
while [ ! -s daemon.pid ]; do sleep 0.02; done
# "keep": leave v1 in place (the plugin was simply built against another libfoo)
[ "$2" = keep ] || { cp v2/libfoo.so.1 libfoo.so.1.new && mv libfoo.so.1.new libfoo.so.1; }
kill -HUP "$(cat daemon.pid)"
wait
