/* Calls into libcodec once, writes its pid to argv[1], waits for SIGUSR1,
 * then calls into libcodec again through the already-resolved GOT slot. */
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

extern int codec_decode(int);
static volatile sig_atomic_t go;
static void on_usr1(int signo) { (void)signo; go = 1; }

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &old);
    signal(SIGUSR1, on_usr1);
    if (codec_decode(1) != 4) return 3;
    FILE *ready = fopen(argv[1], "w");
    if (!ready) return 4;
    fprintf(ready, "%d\n", getpid());
    fclose(ready);
    while (!go) sigsuspend(&old);
    return codec_decode(2);
}
