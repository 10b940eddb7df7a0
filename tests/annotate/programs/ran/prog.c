/* The program of the "binaries that ran" scenarios (tests/annotate/test_binaries_that_ran.py).
 * Writes its pid to argv[1], waits for SIGUSR1 (meanwhile the scenario deletes, replaces
 * or hides its file), then crashes two named calls deep.  NAME is the prefix of the
 * function names, so that two builds name their frames differently. */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#define CAT(a, b) a##b
#define FN(prefix, name) CAT(prefix, name)

static volatile sig_atomic_t go;
static void on_usr1(int signo) { (void)signo; go = 1; }

__attribute__((noinline)) void FN(NAME, _crash)(volatile int *where) { *where = 1; }
__attribute__((noinline)) void FN(NAME, _middle)(volatile int *where) {
    FN(NAME, _crash)(where);
    __asm__ volatile("" ::: "memory");  /* not a tail call */
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &old);
    signal(SIGUSR1, on_usr1);
    FILE *ready = fopen(argv[1], "w");
    if (!ready) return 4;
    fprintf(ready, "%d\n", getpid());
    fclose(ready);
    while (!go) sigsuspend(&old);
    FN(NAME, _middle)((volatile int *)0);
    return 0;
}
