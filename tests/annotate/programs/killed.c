/* The child sends SIGSEGV to the parent and stays alive for a while, so the
 * handler can record the sender.  With argv[1] == "self" the process raises
 * SIGSEGV itself instead (not "signal-sent"). */
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "self") == 0)
        raise(SIGSEGV);
    pid_t parent = getpid();
    if (fork() == 0) {
        prctl(PR_SET_NAME, "watchdog");
        kill(parent, SIGSEGV);
        sleep(5);
        _exit(0);
    }
    for (;;) pause();
}
