"""The records of an analysis result (docs/ARCHITECTURE.md "Analysis result").

Pure functions from the unwinder's data (frames, symbols, modules, siginfo) to
the records of :mod:`coredumpd.model`; nothing here reads memory or files.

``offset`` of a frame is ``pc`` minus the start of the module's lowest
mapping — what systemd-coredump prints as ``(libc.so.6 + 0x2724a)``: in
systemd's src/shared/elf-util.c ``frame_callback()``, ``module_offset = pc -
start`` with the *unadjusted* pc (the module and symbol are looked up at
``pc - 1`` for return addresses, the offset is not) and ``start`` from
elfutils' ``dwfl_module_info``.  It is not a link-time address.
"""

from __future__ import annotations

from coredumpd import model
from coredumpd.elf import layouts as L
from coredumpd.elf.notes import SigInfo
from coredumpd.image.modules import module_state
from coredumpd.image.types import Module
from coredumpd.symbolize.disasm import Instruction
from coredumpd.symbolize.types import Symbol
from coredumpd.unwind.types import Frame


def hex_id(build_id: bytes | None) -> str | None:
    return build_id.hex() if build_id else None


def frame_record(frame: Frame, module: Module | None, symbol: Symbol) -> model.Frame:
    return model.Frame(
        index=frame.index,
        pc=frame.pc,
        module=module.path if module else None,
        build_id=hex_id(module.build_id) if module else None,
        offset=frame.pc - module.start if module else None,
        symbol=symbol.name,
        symbol_offset=symbol.offset if symbol.name else None,
        file=symbol.file,
        line=symbol.line,
        trust=frame.trust.value,
        repeat=frame.repeat,
        cycle=frame.cycle,
        cfa=frame.cfa,
    )


def frame_records(frame: Frame, module: Module | None, symbol: Symbol) -> list[model.Frame]:
    """The physical frame and the calls inlined into it, innermost first, as gdb shows
    them: the innermost at the line the line table gives for the pc, each outer one
    (the physical frame last) at the call site of the one inside it."""
    physical = frame_record(frame, module, symbol)
    records = []
    file, line = symbol.file, symbol.line
    for call in reversed(symbol.inlined):
        records.append(physical.replace(symbol=call.name, symbol_offset=None, file=file,
                                        line=line, cfa=None, inlined=True))
        file, line = call.call_file, call.call_line
    if symbol.inlined:
        physical.file, physical.line = file, line
    records.append(physical)
    return records


def expand_frames(frames: list[model.Frame]) -> list[model.Frame]:
    """The frames as the stack held them: a ``repeat`` run of one frame n times, a
    ``cycle`` of k frames (each with the same ``repeat`` n) n times in order."""
    expanded: list[model.Frame] = []
    position = 0
    while position < len(frames):
        frame = frames[position]
        repeat = max(1, int(frame.repeat or 1))
        cycle = max(1, int(frame.cycle or 1))
        group = frames[position:position + cycle]
        expanded.extend(group * repeat)
        position += len(group)
    return expanded


def module_record(module: Module) -> model.Module:
    return model.Module(
        path=module.path, start=module.start, end=module.end,
        load_bias=module.load_bias, build_id=hex_id(module.build_id),
        file_build_id=hex_id(module.file_build_id), debug_file=module.debug_path,
        deleted=module.deleted, replaced=module.replaced,
        modified_in_place=module.modified_in_place, state=module_state(module), kept=module.kept,
        symbols_from=module.symbols_from,
    )


def signal_record(siginfo: SigInfo | None, fallback_signo: int | None) -> model.SignalInfo | None:
    """NT_SIGINFO as a record; only the number when the core has no NT_SIGINFO."""
    if siginfo is None:
        if not fallback_signo:
            return None
        return model.SignalInfo(signo=fallback_signo, name=L.signal_name(fallback_signo))
    return model.SignalInfo(
        signo=siginfo.si_signo, name=siginfo.signal_name, code=siginfo.si_code,
        code_name=siginfo.code_name, errno=siginfo.si_errno,
        address=siginfo.si_addr,
        sender_pid=siginfo.si_pid if siginfo.sent_by_process else None,
        sender_uid=siginfo.si_uid if siginfo.sent_by_process else None,
    )


def instruction_record(instruction: Instruction, pc: int) -> model.DisassemblyLine:
    return model.DisassemblyLine(address=instruction.address, bytes=instruction.raw.hex(),
                                 text=instruction.text, current=instruction.address == pc)
