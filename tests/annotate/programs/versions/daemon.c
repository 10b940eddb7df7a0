/* Maps libfoo.so.1 at start; on SIGHUP dlopen()s argv[1] with RTLD_NOW, and
 * aborts with the loader's message when that fails (as httpd did on its
 * graceful reload).  Writes its pid to argv[2] once ready. */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

extern int foo(void);
static volatile sig_atomic_t reload;
static void on_hup(int signo) { (void)signo; reload = 1; }

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old);
    signal(SIGHUP, on_hup);
    FILE *ready = fopen(argv[2], "w");
    if (!ready || foo() != 1) return 3;
    fprintf(ready, "%d\n", getpid());
    fclose(ready);
    while (!reload) sigsuspend(&old);
    void *plugin = dlopen(argv[1], RTLD_NOW);
    if (!plugin) {
        fprintf(stderr, "reload failed: %s\n", dlerror());
        abort();
    }
    return 0;
}
