/* strcpy past a fixed buffer; with -O2 -D_FORTIFY_SOURCE=2 it becomes
 * __strcpy_chk, which aborts with "*** buffer overflow detected ***: terminated". */
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    char small[8];
    strcpy(small, argc > 0 ? "this string is much longer than eight bytes" : "");
    puts(small);
    (void)argv;
    return 0;
}
