/* Uses libzk.so.2, writes its pid to argv[1], waits for SIGUSR1 (meanwhile the
 * scenario rewrites libzk.so.2 in place), then loads another library as a
 * resolver would load libnss_dns.so.2: the loader compares the new name with the
 * DT_SONAME of every loaded object, read through their relocated .dynamic. */
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

extern int zk_init(int);
static volatile sig_atomic_t go;
static void on_usr1(int signo) { (void)signo; go = 1; }

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &old);
    signal(SIGUSR1, on_usr1);
    if (zk_init(1) != 2) return 3;
    FILE *ready = fopen(argv[1], "w");
    if (!ready) return 4;
    fprintf(ready, "%d\n", getpid());
    fclose(ready);
    while (!go) sigsuspend(&old);
    return dlopen(argv[2], RTLD_NOW) != NULL ? 0 : 5;
}
