"""The struct layouts of ELF64 and of Linux core notes, with no other import.

Split from :mod:`coredumpd.elf.layouts` (which re-exports all of it, with the
enums) because the handler parses the core's head while the kernel holds the
crashed process, and importing ``enum`` alone cost ~9 ms there (``python -X
importtime``, under ``-I -S``).  The few type numbers the handler needs before
the release are plain ints here; layouts.py builds its enums from them.
"""

from __future__ import annotations

import struct

ELFMAG = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
PN_XNUM = 0xFFFF  # e_phnum overflow: the real count is in section header 0's sh_info
SHN_UNDEF = 0

# Elf64_Ehdr: e_ident[16] e_type e_machine e_version e_entry e_phoff e_shoff
# e_flags e_ehsize e_phentsize e_phnum e_shentsize e_shnum e_shstrndx
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
assert EHDR.size == 64
# Elf64_Phdr: p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
PHDR = struct.Struct("<IIQQQQQQ")
assert PHDR.size == 56
# Elf64_Shdr: sh_name sh_type sh_flags sh_addr sh_offset sh_size sh_link
# sh_info sh_addralign sh_entsize
SHDR = struct.Struct("<IIQQQQIIQQ")
assert SHDR.size == 64
# Elf64_Nhdr: n_namesz n_descsz n_type (name and desc padded to 4 bytes)
NHDR = struct.Struct("<III")
assert NHDR.size == 12
# Elf64_Sym: st_name st_info st_other st_shndx st_value st_size
SYM = struct.Struct("<IBBHQQ")
assert SYM.size == 24
# Elf64_Dyn: d_tag d_val
DYN = struct.Struct("<qQ")
assert DYN.size == 16
# Elf64_auxv_t: a_type a_val
AUXV_ENTRY = struct.Struct("<QQ")
assert AUXV_ENTRY.size == 16
# Elf64_Verdef: vd_version vd_flags vd_ndx vd_cnt vd_hash vd_aux vd_next
VERDEF = struct.Struct("<HHHHIII")
assert VERDEF.size == 20
# Elf64_Verdaux: vda_name vda_next
VERDAUX = struct.Struct("<II")
assert VERDAUX.size == 8
# Elf64_Verneed: vn_version vn_cnt vn_file vn_aux vn_next
VERNEED = struct.Struct("<HHIII")
assert VERNEED.size == 16
# Elf64_Vernaux: vna_hash vna_flags vna_other vna_name vna_next
VERNAUX = struct.Struct("<IHHII")
assert VERNAUX.size == 16

# struct elf_prstatus depends on the machine (pr_reg): coredumpd.arch.

# struct elf_prpsinfo (x86-64): pr_state pr_sname pr_zomb pr_nice, pad, pr_flag,
# pr_uid pr_gid (unsigned int), pr_pid pr_ppid pr_pgrp pr_sid, pr_fname[16],
# pr_psargs[80].
PRPSINFO = struct.Struct("<bcbb4xQII4i16s80s")
assert PRPSINFO.size == 136

# siginfo_t is 128 bytes: si_signo si_errno si_code, then a union aligned to 8.
SIGINFO_HEAD = struct.Struct("<iii4x")
assert SIGINFO_HEAD.size == 16
SIGINFO_SIZE = 128
SIGINFO_KILL = struct.Struct("<iI")  # _kill / _rt / _sigchld: si_pid si_uid (at 16)
SIGINFO_FAULT = struct.Struct("<Q")  # _sigfault: si_addr (at 16)
SIGINFO_SYS = struct.Struct("<QiI")  # _sigsys: _call_addr _syscall _arch (at 16)

# NT_FILE: count, page_size, then count x (start, end, file_ofs in pages),
# then count NUL-terminated names (fs/binfmt_elf.c: fill_files_note()).
NT_FILE_HEAD = struct.Struct("<QQ")
NT_FILE_ENTRY = struct.Struct("<QQQ")
assert NT_FILE_ENTRY.size == 24

# Type numbers the handler's streaming parser needs (<elf.h>, include/uapi/linux/elf.h).
ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
NT_PRSTATUS = 1
NT_PRPSINFO = 3
NT_AUXV = 6
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494C45
