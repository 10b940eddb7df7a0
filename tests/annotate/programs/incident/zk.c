/* libzk.so.2: a library with a DT_SONAME, as libzookeeper_mt.so.2 in
 * incidents/library-overwritten-in-place.txt. */
int zk_init(int value) { return value + 1; }
