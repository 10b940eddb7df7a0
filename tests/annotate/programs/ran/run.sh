#!/bin/sh
# run.sh DIR HOW [CGROUP]: start DIR/prog, wait for its pid in DIR/prog.pid, then
#   deleted   rm the executable;
#   replaced  rename another build over it (a package upgrade: a new inode);
#   container run it as /usr/bin/true in its own mount namespace (a bind mount), so the
#             host's /usr/bin/true is another file (in cgroup directory CGROUP when
#             given, e.g. one shaped like docker's);
#   plain     nothing;
# then SIGUSR1 it: it crashes.
cd "$1" || exit 2
rm -f prog.pid
if [ "$2" = container ]; then
    unshare -m --propagation private sh -c \
        "${3:+echo \$\$ > '$3/cgroup.procs' && }mount --bind '$1/prog' /usr/bin/true &&
         exec /usr/bin/true '$1/prog.pid'" &
else
    ./prog prog.pid &
fi
while [ ! -s prog.pid ]; do sleep 0.02; done
case "$2" in
    deleted) rm prog ;;
    replaced) cp prog_b prog.new && mv prog.new prog ;;
esac
kill -USR1 "$(cat prog.pid)"
wait
