/* Calls through a NULL function pointer (argv[1] == "null") or through a
 * pointer into the heap (non-executable memory). */
#include <stdlib.h>
#include <string.h>
typedef void (*handler_fn)(int);
struct plugin { const char *name; handler_fn on_event; };
__attribute__((noinline)) static void dispatch(struct plugin *p) { p->on_event(1); }
int main(int argc, char **argv) {
    struct plugin p = {"demo", 0};
    if (argc > 1 && strcmp(argv[1], "heap") == 0)
        p.on_event = (handler_fn)malloc(64);
    dispatch(&p);
    return 0;
}
