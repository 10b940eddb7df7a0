/* Fails an assertion: abort() with glibc's assertion message in __abort_msg.
 * Run as `unshare -fp --mount-proc ./aborter` it is PID 1 of a namespace and
 * abort() ends in hlt (incidents/abort-hlt-pid1-container.txt). */
#include <assert.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

static void on_usr1(int signo) { (void)signo; }

/* With argv[1] == "wait": first wait for SIGUSR1, so that a driver can find
 * the process (pid1.sh) before it dies. */
static void wait_for_go(void) {
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &old);
    signal(SIGUSR1, on_usr1);
    sigsuspend(&old);
}

static int reset_stdio(int fstat_result) {
    assert(fstat_result == 0 && "stdout must be fstat()able");
    return fstat_result;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "wait") == 0)
        wait_for_go();
    return reset_stdio(argc > 5 ? 0 : -116 /* -ESTALE */);
}
