/* Dereferences a pointer overwritten with ASCII data: a non-canonical address
 * raises #GP, i.e. SIGSEGV SI_KERNEL with address 0. */
#include <string.h>
struct node { struct node *next; long value; };
__attribute__((noinline)) static long walk(struct node *n) { return n->next->value; }
int main(void) {
    struct node a;
    memset(&a, 'A', sizeof a);   /* a.next = 0x4141414141414141 */
    return (int)walk(&a);
}
