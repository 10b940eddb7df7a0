/* Overruns a stack buffer; built with -fstack-protector-all, the canary check
 * aborts with "*** stack smashing detected ***: terminated". */
#include <string.h>
__attribute__((noinline)) static void fill(char *dst, size_t n) { memset(dst, 'A', n); }
__attribute__((noinline)) static int smash(size_t n) {
    char buffer[16];
    fill(buffer, n);
    return buffer[0];
}
int main(int argc, char **argv) { (void)argv; return smash(64 + (size_t)argc); }
