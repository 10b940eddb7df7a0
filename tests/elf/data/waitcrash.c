/* Crashes (SIGSEGV at address 0x20) once its stdin reaches EOF, so that a test can
 * delete or replace the executable while it runs (tests/unwind/test_space_changes.py). */
#include <unistd.h>

int main(void)
{
    char buffer[64];
    while (read(0, buffer, sizeof buffer) > 0)
        ;
    *(volatile int *)0x20 = VARIANT;
    return 0;
}
