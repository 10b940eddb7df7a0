"""CFI per module, and the cache that keeps it across the threads of a process."""

from __future__ import annotations

from collections.abc import Callable

from coredumpd.elf.elffile import ElfFile
from coredumpd.errors import CoredumpdError, FormatError, MemoryReadError
from coredumpd.image.types import Module
from coredumpd.unwind import cfa_program, cfi
from coredumpd.unwind.cfa_program import RuleRow

MAX_CFI_SECTION = 64 << 20  # an .eh_frame/.debug_frame indexed whole is at most this big

ElfOpener = Callable[[Module], ElfFile | None]


class ModuleCfi:
    """The CFI state of one module, kept across threads: table, CIEs, FDEs, rows.

    ``.eh_frame_hdr`` first; then, opened once and only when needed, a sorted
    index of the whole ``.eh_frame`` when there is no hdr (static
    executables), and of ``.debug_frame`` from the debug file or the module.
    """

    def __init__(self, module: Module, stack_pointer: int, open_elf: ElfOpener | None = None) \
            -> None:
        self.module = module
        self.stack_pointer = stack_pointer  # the CFA register before a CIE defines one
        self.open_elf = open_elf
        self.hdr: cfi.EhFrameHdr | None = None
        self.broken: str | None = None
        self.cies: dict[int, cfi.Cie] = {}
        self.fdes: dict[int, cfi.Fde] = {}
        self.initial_rows: dict[cfi.Cie, RuleRow] = {}
        self.rows: dict[int, tuple[cfi.Fde, RuleRow] | None] = {}
        self.sections: list[cfi.SectionIndex] | None = None
        self.problems: list[str] = []

    def row_for(self, read: Callable[[int, int], bytes], pc: int) -> \
            tuple[cfi.Fde, RuleRow] | None:
        """The FDE covering ``pc`` and its rule row, or None when the module has none."""
        if pc in self.rows:
            return self.rows[pc]
        fde = self._fde_for(read, pc)
        if fde is None:
            fde = self._fde_from_sections(pc)
        result = None
        if fde is not None:
            initial = self.initial_rows.get(fde.cie)
            if initial is None:
                initial = self.initial_rows[fde.cie] = cfa_program.initial_row(
                    fde.cie, self.stack_pointer)
            result = (fde, cfa_program.rules_at(fde, pc, initial))
        self.rows[pc] = result
        return result

    def _fde_for(self, read: Callable[[int, int], bytes], pc: int) -> cfi.Fde | None:
        if self.broken or self.module.eh_frame_hdr is None:
            return None
        if self.hdr is None:
            try:
                self.hdr = cfi.EhFrameHdr(read, self.module.eh_frame_hdr)
            except (FormatError, MemoryReadError) as err:
                self.broken = f".eh_frame_hdr of {self.module.path}: {err}"
                return None
        address = self.hdr.lookup(pc)
        if address is None:
            return None
        fde = self.fdes.get(address)
        if fde is None:
            fde = self.fdes[address] = cfi.parse_fde(read, address, self.cies)
        return fde if pc in fde else None  # a table that lies, or a gap between FDEs

    def _fde_from_sections(self, pc: int) -> cfi.Fde | None:
        if self.sections is None:
            self.sections = self._load_sections()
        for index in self.sections:
            fde = index.find(pc)
            if fde is not None:
                return fde
        return None

    def _load_sections(self) -> list[cfi.SectionIndex]:
        found: list[cfi.SectionIndex] = []
        image = self.open_elf(self.module) if self.open_elf else None
        if image is not None and self.module.eh_frame_hdr is None:
            self._add_section(found, image, ".eh_frame", True)
        debug = _open_debug_file(self.module.debug_path)
        for elf in (debug, image):
            if elf is not None and self._add_section(found, elf, ".debug_frame", False):
                break
        if debug is not None:
            debug.close()
        return found

    def _add_section(self, found: list[cfi.SectionIndex], elf: ElfFile, name: str,
                     eh_frame: bool) -> bool:
        try:
            section = elf.section(name)
            if section is None or section.sh_size > MAX_CFI_SECTION:
                return False
            data = elf.section_data(section)
            base = self.module.load_bias + section.sh_addr if eh_frame else 0
            found.append(cfi.SectionIndex(data, base, eh_frame,
                                          0 if eh_frame else self.module.load_bias))
            return True
        except CoredumpdError as err:
            self.problems.append(f"{name} of {self.module.path}: {err}")
            return False


def _open_debug_file(path: str | None) -> ElfFile | None:
    if path is None:
        return None
    try:
        return ElfFile.open(path)
    except CoredumpdError:
        return None


class CfiCache:
    """The :class:`ModuleCfi` of each module, shared by every thread unwound with it.

    An :class:`~coredumpd.unwind.unwinder.Unwinder` makes one for its address
    space unless it is given one; whoever made the cache decides how long it
    lives.  Keyed by module identity: a cache that outlives one process (the
    same library in many crashes, keyed by build-id) can offer the same
    :meth:`for_module`.
    """

    def __init__(self, stack_pointer: int) -> None:
        self.stack_pointer = stack_pointer  # Arch.sp_column of the processes it serves
        self._modules: dict[int, ModuleCfi] = {}

    def for_module(self, module: Module, open_elf: ElfOpener | None) -> ModuleCfi:
        """The CFI state of ``module``, made on first use."""
        state = self._modules.get(id(module))
        if state is None or state.module is not module:
            state = self._modules[id(module)] = ModuleCfi(module, self.stack_pointer, open_elf)
        return state

    def clear(self) -> None:
        """Drop every module's state (each holds its space's file opener)."""
        self._modules.clear()

    def __len__(self) -> int:
        return len(self._modules)
