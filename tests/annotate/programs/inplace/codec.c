/* libcodec.so, two builds.  -DPADDED puts 16 KiB of 0xff bytes (an invalid
 * opcode) in front of codec_decode, so the old build's address of
 * codec_decode lands in them once the new build is copied over the old one
 * in place (incidents/library-overwritten-in-place.txt). */
#ifdef PADDED
__attribute__((used)) static void padding(void) { __asm__ volatile(".fill 16384, 1, 0xff"); }
#endif
int codec_decode(int value) { return value * 3 + 1; }
