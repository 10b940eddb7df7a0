/* The everyday faults, chosen by argv[1]:
 *   sigbus  - touch a file mapping past the end of the (truncated) file
 *   trap    - __builtin_trap() (ud2): SIGILL
 *   divzero - integer division by zero: SIGFPE FPE_INTDIV
 *   overflow - INT_MIN / -1: the same SIGFPE FPE_INTDIV, divisor not zero
 *   rodata  - write into a string literal (.rodata, read-only): SIGSEGV SEGV_ACCERR
 *   wildfree - free() a pointer malloc never returned: SIGSEGV inside free
 */
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

__attribute__((noinline)) static int divide(int a, int b) { return a / b; }
__attribute__((noinline)) static void shout(char *s) { s[0] = 'H'; }

static int sigbus(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, 8192)) return 2;
    volatile char *map = mmap(0, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) return 3;
    map[0] = 1;
    if (ftruncate(fd, 100)) return 4;  /* someone truncated the file under us */
    return map[4096 + 16];
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "";
    if (!strcmp(what, "sigbus")) return sigbus(argc > 2 ? argv[2] : "/tmp/everyday.map");
    if (!strcmp(what, "trap")) __builtin_trap();
    if (!strcmp(what, "divzero")) return divide(argc, argc - 2);
    if (!strcmp(what, "overflow")) return divide(INT_MIN + argc - 2, 1 - argc);
    if (!strcmp(what, "rodata")) { shout((char *)"hello"); return 0; }
    if (!strcmp(what, "wildfree")) { free((void *)(uintptr_t)0xdead0010u); return 0; }
    return 1;
}
