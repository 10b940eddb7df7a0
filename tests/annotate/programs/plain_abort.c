/* abort() with no message: SIGABRT, __abort_msg stays NULL. */
#include <stdlib.h>
int main(void) { abort(); }
