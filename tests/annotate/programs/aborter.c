/* Fails an assertion: abort() with glibc's assertion message in __abort_msg.
 * Run as `unshare -fp --mount-proc ./aborter` it is PID 1 of a namespace and
 * abort() ends in hlt (incidents/abort-hlt-pid1-container.txt). */
#include <assert.h>
#include <stdlib.h>

static int reset_stdio(int fstat_result) {
    assert(fstat_result == 0 && "stdout must be fstat()able");
    return fstat_result;
}

int main(int argc, char **argv) {
    (void)argv;
    return reset_stdio(argc > 5 ? 0 : -116 /* -ESTALE */);
}
