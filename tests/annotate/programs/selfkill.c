/* Sends itself a signal in three ways, from shoot_self(): raise(SIGSEGV), a raw
 * tgkill(SIGBUS) through syscall(2), or kill(getpid(), SIGQUIT) (the default). */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
__attribute__((noinline)) void shoot_self(const char *how) {
    if (strcmp(how, "raise") == 0) raise(SIGSEGV);
    else if (strcmp(how, "tgkill") == 0) syscall(SYS_tgkill, getpid(), gettid(), SIGBUS);
    else kill(getpid(), SIGQUIT);
}
int main(int argc, char **argv) { shoot_self(argc > 1 ? argv[1] : "kill"); return 0; }
