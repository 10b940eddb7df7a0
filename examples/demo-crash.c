/* The demo crash of setup.sh: a write through a NULL pointer two calls deep.
 * coredumpd should store it, unwind it (main -> parse_config -> store_value)
 * and name it null-deref (a write near address 0). */
#include <stdio.h>
#include <stdlib.h>

struct setting { const char *name; long value; long pad; };

/* The lookup "fails" at run time, so the compiler cannot prove the pointer
 * NULL and drop the store as undefined behaviour. */
__attribute__((noinline)) struct setting *find_setting(const char *name)
{
    return (struct setting *)getenv(name);
}

__attribute__((noinline)) void store_value(struct setting *slot, long value)
{
    slot->value = value;          /* slot is NULL: writes to address 0x8 */
}

__attribute__((noinline)) int parse_config(const char *text)
{
    store_value(find_setting("COREDUMPD_DEMO_NO_SUCH_SETTING"), (long)text[0]);
    return 0;
}

int main(void)
{
    puts("coredumpd demo: crashing on purpose");
    fflush(stdout);
    return parse_config("answer=42");
}
