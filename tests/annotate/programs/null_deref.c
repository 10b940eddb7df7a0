/* Reads (argv[1] == "read") or writes (otherwise) a struct member through NULL. */
#include <string.h>
struct config { long pad[2]; int level; };
__attribute__((noinline)) static int read_level(struct config *c) { return c->level; }
__attribute__((noinline)) static void set_level(struct config *c) { c->level = 3; }
int main(int argc, char **argv) {
    struct config *volatile c = 0;
    if (argc > 1 && strcmp(argv[1], "read") == 0)
        return read_level(c);
    set_level(c);
    return 0;
}
