/* A multi-threaded program that crashes in a non-main thread (tests/elf, tests/unwind).
 * argv[1]: number of idle threads (default 3).  The crasher writes to address 0x10. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static pthread_barrier_t barrier;

static void *idle(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&barrier);
    for (;;)
        pause();
    return NULL;
}

__attribute__((noinline)) static void crash_here(volatile int *pointer)
{
    *pointer = 42;
}

static void *crasher(void *arg)
{
    pthread_setname_np(pthread_self(), "crasher");
    pthread_barrier_wait(&barrier);
    usleep(20000); /* let the other threads reach pause() */
    crash_here((volatile int *)arg);
    return NULL;
}

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 3;
    pthread_attr_t attr;
    pthread_t thread;

    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 128 * 1024);
    pthread_barrier_init(&barrier, NULL, count + 2);
    for (int i = 0; i < count; i++)
        pthread_create(&thread, &attr, idle, NULL);
    pthread_create(&thread, &attr, crasher, (void *)0x10);
    pthread_barrier_wait(&barrier);
    for (;;)
        pause();
}
