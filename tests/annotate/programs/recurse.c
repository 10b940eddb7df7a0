/* Unbounded recursion: overflows the main thread's stack, or a thread's
 * (argv[1] == "thread") which faults in the pthread guard page. */
#include <pthread.h>
#include <string.h>
__attribute__((noinline)) static int descend(volatile int depth) {
    volatile char frame[200];
    frame[0] = (char)depth;
    return descend(depth + 1) + frame[0];
}
static void *run(void *arg) { (void)arg; descend(0); return 0; }
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "thread") == 0) {
        pthread_t thread;
        pthread_create(&thread, 0, run, 0);
        pthread_join(thread, 0);
        return 0;
    }
    return descend(0);
}
