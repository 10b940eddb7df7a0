/* libfoo.so.1, two builds: -DV2 adds bar() at version FOO_PRIVATE.
 * The symbol-version-miss scenario (incidents/glibc-upgrade-symbol-version.txt):
 * the daemon maps v1; v2 replaces it on disk by rename; a plugin linked
 * against v2 needs bar@FOO_PRIVATE, which the mapped v1 lacks. */
int foo(void) { return 1; }
int baz(void) { return 3; }
#ifdef V2
int bar(void) { return 2; }
#endif
