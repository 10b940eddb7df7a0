"""The process image: mappings, modules and the :class:`AddressSpace` protocol.

The contract between the address space (:mod:`coredumpd.image.space`), the
unwinder, the symbolizer and the rules: plain data only.  Addresses are ints;
``end`` is exclusive everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from coredumpd.arch import Arch
from coredumpd.values import Frozen, Value


class Mapping(Frozen):
    """One VMA of the crashed process.

    From /proc/PID/maps when recorded at dump time, otherwise from the core's
    PT_LOAD headers and NT_FILE (``perms`` then comes from p_flags).
    """

    start: int
    end: int
    perms: str  # "r-xp" as in /proc/PID/maps
    file_offset: int = 0
    path: str | None = None  # as the process saw it (inside its root); None: anonymous
    inode: int = 0
    device: str = ""
    deleted: bool = False  # maps said "(deleted)"

    @property
    def executable(self) -> bool:
        return "x" in self.perms

    @property
    def writable(self) -> bool:
        return "w" in self.perms

    def __contains__(self, address: int) -> bool:
        return self.start <= address < self.end


class Module(Value):
    """One mapped ELF object (executable, library, vDSO).

    ``build_id`` comes from the ELF header page dumped in the core;
    ``file_build_id`` from the file found on disk at ``host_path``.
    ``host_path`` is set only when that file may be used to fill in memory
    the core lacks (build-ids match, or neither has one and size/inode match).
    """

    path: str  # as the process saw it; "[vdso]" for the vDSO
    start: int  # lowest mapped address
    end: int  # highest mapped address (exclusive)
    load_bias: int  # runtime address minus link-time address
    build_id: bytes | None = None
    file_build_id: bytes | None = None
    host_path: str | None = None  # readable copy on this machine, if trusted
    debug_path: str | None = None  # separate debug file (build-id or debuglink)
    eh_frame_hdr: int | None = None  # runtime address of .eh_frame_hdr (PT_GNU_EH_FRAME)
    is_vdso: bool = False
    is_main: bool = False
    deleted: bool = False  # "(deleted)" in maps
    replaced: bool = False  # the path on disk now is another file (inode/build-id)
    modified_in_place: bool = False  # same inode, changed after the process started
    state: str | None = None  # same|deleted|replaced|modified|other-namespace (CONTRACT.md)
    kept: str | None = None  # the store's copy of the mapped file (store/binaries.py)
    # why the core's relocated pages say the file changed after loading (image/relocated.py)
    relocation_evidence: list[str] = []  # noqa: RUF012 - one per instance (values.py)
    symbols_from: str | None = None  # file | kept copy | debug file | debuginfod | core
    problems: list[str] = []  # noqa: RUF012 - one per instance (values.py)

    def __contains__(self, address: int) -> bool:
        return self.start <= address < self.end

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class AddressSpace(Protocol):
    """The crashed process's memory: core segments first, then trusted files."""

    @property
    def arch(self) -> Arch:
        """The machine the process ran on (registers, instructions, frame layouts)."""
        ...

    @property
    def modules(self) -> Sequence[Module]: ...

    @property
    def mappings(self) -> Sequence[Mapping]: ...

    def read(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes or :class:`~coredumpd.errors.MemoryReadError`."""
        ...

    def mapping_at(self, address: int) -> Mapping | None: ...

    def module_at(self, address: int) -> Module | None: ...
