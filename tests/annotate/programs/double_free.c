/* Frees the same block twice: malloc's tcache check aborts with
 * "free(): double free detected in tcache 2". */
#include <stdlib.h>
#include <string.h>
static void release(char *p) { free(p); }
int main(void) {
    char *p = malloc(32);
    strcpy(p, "x");
    release(p);
    release(p);
    return 0;
}
