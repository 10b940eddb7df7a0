/* The crashing program of bench/reap_latency.py.
 *
 *   reap_crasher MIB TIMESTAMP_FILE [unlink]
 *
 * Allocates MIB MiB whose pages are 25% zero (touched, so they are dumped),
 * 25% random (incompressible) and 50% text (compressible), writes its
 * CLOCK_MONOTONIC time to TIMESTAMP_FILE just before dying, then crashes with
 * SIGSEGV.  The parent takes its own CLOCK_MONOTONIC time after waitpid(): the
 * difference is the crash -> reap latency that the core handler causes.
 * With "unlink" it removes its own executable first, so that the handler keeps a
 * copy of it (coredumpd/store/binaries.py).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096

static const char TEXT[] =
    "The kernel writes the core to the pipe page by page; the handler reads it, "
    "compresses it and stores it, and only then lets the crashed process go. ";

static unsigned long long xorshift(unsigned long long *s)
{
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s MIB TIMESTAMP_FILE [unlink]\n", argv[0]);
        return 2;
    }
    if (argc == 4 && strcmp(argv[3], "unlink") == 0 && unlink(argv[0]) != 0) return 3;
    size_t pages = (size_t)strtoul(argv[1], NULL, 10) * (1024 * 1024 / PAGE);
    unsigned char *memory = pages ? malloc(pages * PAGE) : NULL;
    unsigned long long seed = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < pages; i++) {
        unsigned char *page = memory + i * PAGE;
        switch (i % 4) {
        case 0:  /* zero, but touched so that it is really allocated */
            memset(page, 0, PAGE);
            break;
        case 1:  /* random */
            for (size_t j = 0; j < PAGE; j += 8) {
                unsigned long long r = xorshift(&seed);
                memcpy(page + j, &r, 8);
            }
            break;
        default:  /* text, shifted per page so pages differ */
            for (size_t j = 0; j < PAGE; j++)
                page[j] = (unsigned char)TEXT[(j + i * 7) % (sizeof TEXT - 1)];
        }
    }
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dprintf(fd, "%lld.%09ld\n", (long long)now.tv_sec, now.tv_nsec);
    close(fd);
    *(volatile int *)0 = memory ? memory[0] : 1;  /* SIGSEGV */
    return 0;
}
