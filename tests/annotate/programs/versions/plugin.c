/* A plugin linked against libfoo v2: needs bar@FOO_PRIVATE. */
extern int bar(void);
int plugin_init(void) { return bar(); }
