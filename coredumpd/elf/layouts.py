"""Binary layouts of ELF64 (little-endian, x86-64) and of Linux core notes.

The struct layouts are declared once in :mod:`coredumpd.elf.structs` (re-exported
here), sizes asserted at import; the enums of type numbers live here.  Names
follow ``<elf.h>`` and ``include/uapi/linux/elfcore.h`` verbatim so the code
reads beside them; what depends on the machine (``pr_reg``, DWARF registers)
is in :mod:`coredumpd.arch`.
"""

from __future__ import annotations

import enum

from coredumpd.elf.structs import (  # noqa: F401 - re-exported (pyproject: implicit_reexport)
    AUXV_ENTRY,
    DYN,
    EHDR,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    EM_X86_64,
    ET_CORE,
    NHDR,
    NT_AUXV,
    NT_FILE,
    NT_FILE_ENTRY,
    NT_FILE_HEAD,
    NT_PRPSINFO,
    NT_PRSTATUS,
    NT_SIGINFO,
    PHDR,
    PN_XNUM,
    PRPSINFO,
    PT_LOAD,
    PT_NOTE,
    SHDR,
    SHN_UNDEF,
    SIGINFO_FAULT,
    SIGINFO_HEAD,
    SIGINFO_KILL,
    SIGINFO_SIZE,
    SIGINFO_SYS,
    SYM,
    VERDAUX,
    VERDEF,
    VERNAUX,
    VERNEED,
)


class ET(enum.IntEnum):
    NONE = 0
    REL = 1
    EXEC = 2
    DYN = 3
    CORE = ET_CORE


class PT(enum.IntEnum):
    NULL = 0
    LOAD = PT_LOAD
    DYNAMIC = 2
    INTERP = 3
    NOTE = PT_NOTE
    PHDR = 6
    TLS = 7
    GNU_EH_FRAME = 0x6474E550
    GNU_STACK = 0x6474E551
    GNU_RELRO = 0x6474E552
    GNU_PROPERTY = 0x6474E553


class PF(enum.IntFlag):
    X = 1
    W = 2
    R = 4


class SHT(enum.IntEnum):
    NULL = 0
    PROGBITS = 1
    SYMTAB = 2
    STRTAB = 3
    RELA = 4
    HASH = 5
    DYNAMIC = 6
    NOTE = 7
    NOBITS = 8
    DYNSYM = 11
    GNU_HASH = 0x6FFFFFF6
    GNU_VERDEF = 0x6FFFFFFD
    GNU_VERNEED = 0x6FFFFFFE
    GNU_VERSYM = 0x6FFFFFFF


class NT(enum.IntEnum):
    """Core note types in the "CORE"/"LINUX" namespaces (include/uapi/linux/elf.h)."""

    PRSTATUS = NT_PRSTATUS
    PRFPREG = 2
    PRPSINFO = NT_PRPSINFO
    TASKSTRUCT = 4
    AUXV = NT_AUXV
    X86_XSTATE = 0x202
    SIGINFO = NT_SIGINFO
    FILE = NT_FILE


class NT_GNU(enum.IntEnum):
    """Note types in the "GNU" namespace."""

    ABI_TAG = 1
    HWCAP = 2
    BUILD_ID = 3
    GOLD_VERSION = 4
    PROPERTY_TYPE_0 = 5


class AT(enum.IntEnum):
    """Auxiliary vector types (include/uapi/linux/auxvec.h)."""

    NULL = 0
    IGNORE = 1
    EXECFD = 2
    PHDR = 3
    PHENT = 4
    PHNUM = 5
    PAGESZ = 6
    BASE = 7
    FLAGS = 8
    ENTRY = 9
    NOTELF = 10
    UID = 11
    EUID = 12
    GID = 13
    EGID = 14
    PLATFORM = 15
    HWCAP = 16
    CLKTCK = 17
    SECURE = 23
    BASE_PLATFORM = 24
    RANDOM = 25
    HWCAP2 = 26
    EXECFN = 31
    SYSINFO_EHDR = 33
    MINSIGSTKSZ = 51


class DT(enum.IntEnum):
    NULL = 0
    NEEDED = 1
    PLTGOT = 3
    HASH = 4
    STRTAB = 5
    SYMTAB = 6
    RELA = 7
    STRSZ = 10
    SONAME = 14
    REL = 17
    DEBUG = 21
    JMPREL = 23
    GNU_HASH = 0x6FFFFEF5
    VERSYM = 0x6FFFFFF0
    VERDEF = 0x6FFFFFFC
    VERDEFNUM = 0x6FFFFFFD
    VERNEED = 0x6FFFFFFE
    VERNEEDNUM = 0x6FFFFFFF


class SI(enum.IntEnum):
    """si_code values (include/uapi/asm-generic/siginfo.h).  <= 0: sent by a process."""

    USER = 0
    KERNEL = 0x80
    QUEUE = -1
    TIMER = -2
    MESGQ = -3
    ASYNCIO = -4
    SIGIO = -5
    TKILL = -6
    DETHREAD = -7
    ASYNCNL = -60


# Per-signal si_code meanings for the fault signals (value -> name).
SEGV_CODES = {1: "SEGV_MAPERR", 2: "SEGV_ACCERR", 3: "SEGV_BNDERR", 4: "SEGV_PKUERR",
              5: "SEGV_ACCADI", 6: "SEGV_ADIDERR", 7: "SEGV_ADIPERR", 8: "SEGV_MTEAERR",
              9: "SEGV_MTESERR", 10: "SEGV_CPERR"}
BUS_CODES = {1: "BUS_ADRALN", 2: "BUS_ADRERR", 3: "BUS_OBJERR", 4: "BUS_MCEERR_AR",
             5: "BUS_MCEERR_AO"}
ILL_CODES = {1: "ILL_ILLOPC", 2: "ILL_ILLOPN", 3: "ILL_ILLADR", 4: "ILL_ILLTRP",
             5: "ILL_PRVOPC", 6: "ILL_PRVREG", 7: "ILL_COPROC", 8: "ILL_BADSTK",
             9: "ILL_BADIADDR"}
FPE_CODES = {1: "FPE_INTDIV", 2: "FPE_INTOVF", 3: "FPE_FLTDIV", 4: "FPE_FLTOVF",
             5: "FPE_FLTUND", 6: "FPE_FLTRES", 7: "FPE_FLTINV", 8: "FPE_FLTSUB",
             9: "FPE_FLTUNK", 10: "FPE_CONDTRAP"}
TRAP_CODES = {1: "TRAP_BRKPT", 2: "TRAP_TRACE", 3: "TRAP_BRANCH", 4: "TRAP_HWBKPT",
              5: "TRAP_UNK", 6: "TRAP_PERF"}

SIGNAL_NAMES = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT",
    7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2",
    13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD",
    18: "SIGCONT", 19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG",
    24: "SIGXCPU", 25: "SIGXFSZ", 26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH",
    29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS",
}


def signal_name(number: int) -> str:
    """``SIGSEGV`` for 11; ``SIGRTMIN+3`` for real-time signals; ``SIG<n>`` otherwise."""
    if number in SIGNAL_NAMES:
        return SIGNAL_NAMES[number]
    if 34 <= number <= 64:
        return f"SIGRTMIN+{number - 34}"
    return f"SIG{number}"


def si_code_name(signo: int, code: int) -> str:
    """Name of ``si_code`` for signal ``signo`` (``SI_KERNEL``, ``SEGV_MAPERR``...)."""
    if code <= 0 or code == SI.KERNEL:
        try:
            return "SI_" + SI(code).name
        except ValueError:
            return str(code)
    table = {11: SEGV_CODES, 7: BUS_CODES, 4: ILL_CODES, 8: FPE_CODES, 5: TRAP_CODES}.get(signo, {})
    return table.get(code, str(code))
