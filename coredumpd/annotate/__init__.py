"""Root-cause rules: one module per rule, each reading a clean analysis context.

:func:`coredumpd.annotate.engine.run_rules` runs every module of
:mod:`coredumpd.annotate.rules` (most specific first, see
``engine.SPECIFICITY``); :func:`coredumpd.annotate.signature.crash_signature`
groups repeats.  The ids (stable, CONTRACT.md) and when each fires:

=========================== ===================================================
``abort-hlt``               SIGSEGV SI_KERNEL addr 0 at a ``hlt`` in ``abort()``
``symbol-version-miss``     a loader version error in memory, the mapped copy
                            lacks what the copy on disk has
``library-modified-in-place`` a mapped ELF file rewritten in place (same inode,
                            mtime clearly after the process start)
``signal-sent``             si_code <= 0 from another pid, or from the process
                            itself with no abort() on the stack (kill, raise)
``seccomp-violation``       SIGSYS SYS_SECCOMP
``pid1-signal-semantics``   PID 1 of a (non-initial) PID namespace
``init-crash``              the global PID 1
``uncaught-exception``      abort() from libstdc++'s terminate path with a C++
                            exception header in reach (:mod:`.cxxabi`)
``rust-panic``              abort() under std/core panicking frames
                            (:mod:`.rustpanic`)
``abort-message``           glibc's ``__abort_msg`` is set: assertion, heap
                            corruption, stack smashing, fortify, other
``crash-in-allocator``      a fault inside malloc/free/realloc (glibc)
``stack-overflow``          fault in a stack guard gap/page near rsp, or rsp
                            just below the stack
``bad-jump``                pc not in an executable mapping (fetch fault)
``general-protection``      SI_KERNEL addr 0 other than hlt: non-canonical
                            operand or branch target, misaligned SSE
``null-deref``              data access in the first 64 KiB (read/write)
``write-to-read-only``      SEGV_ACCERR write into a mapping without ``w``
``file-mapping-past-eof``   SIGBUS BUS_ADRERR in a file mapping beyond EOF
``trap-instruction``        SIGILL on ``ud2``/``ud1``/``ud0``
``divide-by-zero``          SIGFPE FPE_INTDIV with a zero divisor
``division-overflow``       SIGFPE FPE_INTDIV with a non-zero divisor
``library-replaced``        a mapped ELF object deleted or replaced on disk
=========================== ===================================================
"""
