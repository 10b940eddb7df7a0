/* Uses a pointer overwritten with ASCII data: a non-canonical address raises
 * #GP, i.e. SIGSEGV SI_KERNEL with address 0.  argv[1] == "call" calls through
 * such a function pointer instead of dereferencing a data pointer. */
#include <string.h>
struct node { struct node *next; long value; long (*visit)(struct node *); };
__attribute__((noinline)) static long walk(struct node *n) { return n->next->value; }
__attribute__((noinline)) static long visit(struct node *n) { return n->visit(n); }
int main(int argc, char **argv) {
    struct node a;
    memset(&a, 'A', sizeof a);   /* a.next = a.visit = 0x4141414141414141 */
    if (argc > 1 && strcmp(argv[1], "call") == 0)
        return (int)visit(&a);
    return (int)walk(&a);
}
