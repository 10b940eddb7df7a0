"""The crash model: typed records that every layer speaks (docs/ARCHITECTURE.md "Model").

At the bottom of the tree (it imports only :mod:`coredumpd.errors` and the
standard library): the dump-time :class:`Facts`, the index row
:class:`CrashRecord`, the :class:`AnalysisResult` with its :class:`Thread`,
:class:`Frame`, :class:`Module`, :class:`SignalInfo`,
:class:`DisassemblyLine` and :class:`Annotation`, and the states
:class:`CoreState` and :class:`AnalysisState`.

A record's fields are its annotated class attributes, in order; that order is
the order of the keys of its JSON (CONTRACT.md, docs/ARCHITECTURE.md).  So a
new JSON field is one annotated line here (plus the line of a formatter that
shows it).  ``to_json()`` gives plain JSON-able values; ``from_json()`` reads
them back, keeping keys it does not know (a newer writer's fields) so that a
round trip loses nothing.  The top-level records that are stored (facts,
analysis result) carry a ``version``: a newer or invalid one is a
:class:`~coredumpd.errors.FormatError` naming both versions; the crash record
is versioned by the index schema (``PRAGMA user_version``).

Records are plain ``__slots__`` classes made by :class:`_RecordType`, not
dataclasses: measured here, ``@dataclass`` costs about 1 ms per class at import
(it generates and compiles code), and ``corectl analyze`` imports this module.
"""

from __future__ import annotations

# Mutable defaults of fields are fine here: every instance gets its own copy
# (Record.__init__), which ruff cannot see.
# ruff: noqa: RUF012
import enum
import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from coredumpd.errors import FormatError

if TYPE_CHECKING:
    from typing import dataclass_transform
else:
    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda cls: cls


class CoreState(enum.StrEnum):
    """What became of the core (CONTRACT.md ``core_state``)."""

    PRESENT = "present"  # stored whole
    TRUNCATED = "truncated"  # stored, cut at ExternalSizeMax or RLIMIT_CORE
    MISSING = "missing"  # wanted, but storing it failed (or it was removed since)
    NONE = "none"  # not kept on purpose (Storage=none, rate limit, RLIMIT_CORE)

    @property
    def stored(self) -> bool:
        """A file of it is (or was) in the store."""
        return self in (CoreState.PRESENT, CoreState.TRUNCATED)


class AnalysisState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


_NOTHING: Any = object()


class _RecordType(type):
    """Turns the annotated class attributes into ``__slots__`` and defaults."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> Any:
        own = [field for field in namespace.get("__annotations__", {})
               if not str(namespace["__annotations__"][field]).startswith("ClassVar")]
        inherited: tuple[str, ...] = ()
        defaults: dict[str, Any] = {}
        for base in bases:
            inherited += getattr(base, "_fields", ())
            defaults.update(getattr(base, "_defaults", {}))
        for field in own:
            if field in namespace:
                defaults[field] = namespace.pop(field)
        namespace["__slots__"] = tuple(own) + (("_extra",) if not inherited and own else ())
        namespace["_fields"] = inherited + tuple(own)
        namespace["_defaults"] = defaults
        return super().__new__(mcs, name, bases, namespace)


@dataclass_transform(kw_only_default=False)
class Record(metaclass=_RecordType):
    """Base of every record: init from fields, equality, repr, JSON."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]]
    _defaults: ClassVar[dict[str, Any]]
    # field -> how to read its JSON: a Record class, an enum, or any callable
    _readers: ClassVar[dict[str, Any]] = {}
    _transient: ClassVar[tuple[str, ...]] = ()  # fields left out of the JSON

    def __init__(self, *args: Any, **values: Any) -> None:
        fields = self._fields
        if args:
            if len(args) > len(fields):
                raise TypeError(f"{type(self).__name__} takes {len(fields)} fields")
            values.update(zip(fields, args))
        defaults = self._defaults
        setter = object.__setattr__
        for field in fields:
            value = values.pop(field, _NOTHING)
            if value is _NOTHING:
                value = defaults.get(field, _NOTHING)
                if value is _NOTHING:
                    raise TypeError(f"{type(self).__name__} needs {field}")
                if isinstance(value, _MUTABLE):
                    value = type(value)(value)  # a fresh copy of a mutable default
            setter(self, field, value)
        if values:
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(values)}")
        setter(self, "_extra", {})

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields) and \
            self._extra == other._extra  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        body = ", ".join(f"{field}={getattr(self, field)!r}" for field in self._fields)
        return f"{type(self).__name__}({body})"

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``."""
        copy = type(self)(**{f: getattr(self, f) for f in self._fields} | changes)
        copy._extra.update(self._extra)  # type: ignore[attr-defined]
        return copy

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-able values, keys in field order (then unknown keys kept)."""
        out = {}
        transient = self._transient
        for field in self._fields:
            if field in transient:
                continue
            value = getattr(self, field)
            # most values are plain already (a frame's ints and strings): no conversion
            out[field] = value if type(value) in _SCALARS else _plain(value)
        out.update(self._extra)  # type: ignore[attr-defined]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Read ``to_json()``'s output (missing keys take their defaults)."""
        if not isinstance(data, Mapping):
            raise FormatError(f"{cls.__name__}: expected an object, not {type(data).__name__}")
        values = {}
        for field in cls._fields:
            if field in data:
                reader = cls._readers.get(field)
                value = data[field]
                values[field] = _read(reader, value) if reader is not None else value
        try:
            record = cls(**values)
        except TypeError as err:
            raise FormatError(f"{cls.__name__}: {err}") from err
        extra = {key: value for key, value in data.items() if key not in cls._fields}
        record._extra.update(extra)  # type: ignore[attr-defined]
        return record



    def check(self) -> None:
        """FormatError unless every field holds a value of its annotated type, down the
        whole tree.  For records read from JSON that nobody vouches for: ``from_json``
        takes any JSON value for a field, and the sandbox's answer is written by a child
        that a hostile core may have taken over (a string where a list of frames belongs
        broke the journal entry and the index update in the job, outside the sandbox)."""
        name = type(self).__name__
        for field, hint in _field_hints(type(self)).items():
            _check(getattr(self, field), hint, f"{name}.{field}")

_SCALARS = frozenset({int, str, float, bool, type(None)})  # exactly these types, no subclass
_MUTABLE = (list, dict)


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _read(reader: Any, value: Any) -> Any:
    """``value`` through ``reader``: a record class or an enum reads a list element by
    element, another callable (``tuple``) takes the whole value; None stays None."""
    if value is None:
        return None
    element_wise = isinstance(reader, type) and issubclass(reader, (Record, enum.Enum))
    if isinstance(value, list) and element_wise:
        return [_read(reader, item) for item in value]
    if isinstance(reader, type) and issubclass(reader, Record):
        return reader.from_json(value)
    try:
        return reader(value)
    except (ValueError, TypeError) as err:
        raise FormatError(f"invalid value {value!r}: {err}") from err


@functools.cache
def _field_hints(cls: type[Record]) -> dict[str, Any]:
    """The annotated type of each field of ``cls`` (resolved once, when first checked)."""
    hints = typing.get_type_hints(cls)
    return {field: hints[field] for field in cls._fields}


def _check(value: Any, hint: Any, where: str) -> None:
    """FormatError unless ``value`` is of type ``hint`` (the hints records use: scalars,
    enums, records, ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[K, V]``, Any);
    an int is no bool and a bool no int, as in the JSON they come from."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return
    if origin in (types.UnionType, typing.Union):
        if not any(_conforms(value, arm, where) for arm in arguments):
            raise FormatError(f"{where}: {_kind(value)} is not {hint}")
        return
    if origin in (list, tuple) and isinstance(value, origin):
        for number, item in enumerate(value):
            _check(item, arguments[0], f"{where}[{number}]")
        return
    if origin is dict and isinstance(value, dict):
        for key, item in value.items():
            _check(key, arguments[0], f"{where} key")
            _check(item, arguments[1], f"{where}[{key!r:.40}]")
        return
    if origin is None and isinstance(hint, type) and (
            type(value) is hint if hint in (int, bool) else isinstance(value, hint)):
        if isinstance(value, Record):
            value.check()
        return
    raise FormatError(f"{where}: {_kind(value)} is not {hint}")


def _conforms(value: Any, hint: Any, where: str) -> bool:
    try:
        _check(value, hint, where)
    except FormatError:
        return False
    return True


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"


class Versioned(Record):
    """A record stored on its own (index column, sandbox answer): JSON with a version."""

    __slots__ = ()
    VERSION: ClassVar[int] = 1

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        version = data.get("version", cls.VERSION) if isinstance(data, Mapping) else None
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise FormatError(f"{cls.__name__}: invalid version {version!r}")
        if version > cls.VERSION:
            raise FormatError(f"{cls.__name__} version {version} is newer than this "
                              f"coredumpd reads (version {cls.VERSION})")
        return super().from_json(data)


# ------------------------------------------------------------------ analysis result


class Frame(Record):
    """One frame of a thread's backtrace (CONTRACT.md "JSON", ``frames``).

    ``offset`` is ``pc`` minus the start of the module's lowest mapping, what
    systemd-coredump prints as ``(libc.so.6 + 0x2724a)``.
    """

    index: int
    pc: int | None  # None for an interpreted frame (``language``), which has no pc
    module: str | None = None
    build_id: str | None = None
    offset: int | None = None
    symbol: str | None = None
    symbol_offset: int | None = None
    file: str | None = None
    line: int | None = None
    trust: str = "scan"  # context | cfi | frame-pointer | scan
    repeat: int = 1  # >1: a folded run of this recursive frame
    cycle: int = 1  # >1: one of a run of ``cycle`` frames repeated ``repeat`` times
    cfa: int | None = None  # canonical frame address: gdb's "frame at" (info frame)
    # a call inlined into the physical frame that follows it (gdb's INLINE frame): the
    # same pc, the inlined function's name and line; no cfa of its own
    inlined: bool = False
    language: str | None = None  # "python": a frame of the interpreted program, not native

    @property
    def module_name(self) -> str | None:
        return self.module.rsplit("/", 1)[-1] if isinstance(self.module, str) else None

    def repeat_note(self) -> str:
        """``x5`` for a run of one recursive frame, ``x5, cycle of 2 frames`` for a
        frame of a mutual-recursion cycle repeated as a whole; "" otherwise."""
        repeat, cycle = self.repeat, self.cycle
        if not isinstance(repeat, int) or repeat <= 1:
            return ""
        if isinstance(cycle, int) and cycle > 1:
            return f"x{repeat}, cycle of {cycle} frames"
        return f"x{repeat}"


class FrameStyle(Record):
    """How :func:`format_frame` lays a frame out (each consumer has its own)."""

    index_width: int = 3
    separator: str = " "  # between pc, symbol and module
    unknown_symbol: str = "??"
    symbol_offset: str | None = "+{:#x}"  # after the symbol when the offset is not 0
    unknown_module: str = "?"  # the module's name when the frame has none
    module_offset: str = "{module} + {offset:#x}"
    module_no_offset: str = "{module}"
    no_module: str | None = None  # replaces the module part when the frame has none
    source: str | None = " at {file}:{line}"  # None: no source location
    trust: str | None = " [{trust}]"
    repeat: str | None = " ({note})"
    escape: Callable[[Any], str] = str
    no_pc: str | None = None  # replaces the pc of an inlined or interpreted frame
    inlined: str | None = " [inlined]"  # replaces the trust of an inlined frame
    interpreted: str = "{language}"  # the module part of an interpreted (Python) frame


def format_frame(frame: Frame, style: FrameStyle) -> str:
    """One backtrace line: ``#N PC SYMBOL (MODULE + OFFSET)``, then source, trust and
    repeat as ``style`` says.  The one frame formatter of coredumpd: corectl's text
    report, the journal (systemd's elf-util.c layout) and ``python -m
    coredumpd.analysis`` differ only in their :class:`FrameStyle`."""
    text = style.escape
    symbol = text(frame.symbol) if frame.symbol else style.unknown_symbol
    if frame.symbol and frame.symbol_offset and style.symbol_offset is not None:
        symbol += style.symbol_offset.format(frame.symbol_offset)
    pc = f"0x{frame.pc:016x}" if isinstance(frame.pc, int) and frame.pc >= 0 else "-"
    if (frame.inlined or frame.language) and style.no_pc is not None:
        pc = style.no_pc  # gdb prints no pc for an inlined frame
    line = f"#{text(frame.index):<{style.index_width}} " + \
        style.separator.join((pc, symbol, f"({_where(frame, style)})"))
    if frame.file and style.source is not None:
        line += style.source.format(file=text(frame.file), line=text(frame.line))
    if frame.inlined and style.inlined is not None:
        line += style.inlined
    elif style.trust is not None:
        line += style.trust.format(trust=text(frame.trust))
    note = frame.repeat_note()
    if note and style.repeat is not None:
        line += style.repeat.format(note=note)
    return line


def _where(frame: Frame, style: FrameStyle) -> str:
    """The module part of a frame line: ``libc.so.6 + 0x2724a``, or the language of an
    interpreted frame (``python``)."""
    text = style.escape
    if frame.language:
        return style.interpreted.format(language=text(frame.language))
    name = frame.module_name
    if name is None and style.no_module is not None:
        return style.no_module
    name = text(name) if name else style.unknown_module
    if isinstance(frame.offset, int):
        return style.module_offset.format(module=name, offset=frame.offset)
    return style.module_no_offset.format(module=name)


class Thread(Record):
    tid: int
    crashed: bool = False
    name: str | None = None
    stop_reason: str | None = None  # why unwinding stopped early, if it did
    registers: dict[str, int] = {}
    frames: list[Frame] = []
    _readers: ClassVar[dict[str, Any]] = {"frames": Frame}


class Module(Record):
    """One mapped ELF object as the analysis saw it (``modules`` of the result)."""

    path: str
    start: int
    end: int
    load_bias: int = 0
    build_id: str | None = None  # from the ELF header page dumped in the core
    file_build_id: str | None = None  # from the file on disk
    debug_file: str | None = None
    deleted: bool = False
    replaced: bool = False
    modified_in_place: bool = False
    state: str | None = None  # same|deleted|replaced|modified|other-namespace
    kept: str | None = None  # path of the kept copy of the mapped file, or null
    symbols_from: str | None = None  # file | kept copy | debug file | debuginfod | core

    def flags(self) -> list[str]:
        """``deleted``, ``replaced``, ``modified in place``, ``other namespace``: what changed
        since it was mapped; then ``kept: PATH`` when the store holds the mapped copy."""
        flags = [flag.replace("_", " ") for flag in ("deleted", "replaced", "modified_in_place")
                 if getattr(self, flag)]
        if self.state == "other-namespace":
            flags.append("other namespace")
        if self.kept:
            flags.append(f"kept: {self.kept}")
        if self.symbols_from == "debuginfod":
            flags.append("symbols from debuginfod")
        return flags


class SignalInfo(Record):
    """NT_SIGINFO of the crash (or only the number when the core has none)."""

    signo: int
    name: str | None = None
    code: int | None = None
    code_name: str | None = None
    errno: int | None = None
    address: int | None = None
    sender_pid: int | None = None
    sender_uid: int | None = None


class DisassemblyLine(Record):
    address: int
    bytes: str
    text: str
    current: bool = False  # the crash pc


class Annotation(Record):
    """One root cause, as CONTRACT.md's JSON shows it."""

    id: str  # stable kebab-case id (CONTRACT.md "Annotation ids")
    title: str
    confidence: str  # high | medium | low
    evidence: tuple[str, ...] = ()
    advice: str | None = None
    _readers: ClassVar[dict[str, Any]] = {"evidence": tuple}


class AnalysisResult(Versioned):
    """What :func:`coredumpd.analysis.analyze` finds (docs/ARCHITECTURE.md)."""

    version: int = 1
    state: AnalysisState = AnalysisState.DONE  # never pending: a result exists
    error: str | None = None
    duration_ms: int = 0
    crashed_tid: int | None = None
    signal: SignalInfo | None = None
    threads: list[Thread] = []
    modules: list[Module] = []
    disassembly: list[DisassemblyLine] = []
    annotations: list[Annotation] = []
    signature: str | None = None
    signature_frames: list[str] = []
    problems: list[str] = []
    _readers: ClassVar[dict[str, Any]] = {"state": AnalysisState, "signal": SignalInfo, "threads": Thread,
                "modules": Module, "disassembly": DisassemblyLine, "annotations": Annotation}

    @classmethod
    def failed(cls, error: str, duration_ms: int | None = None) -> AnalysisResult:
        """The result of an analysis that could not run (or ran and broke)."""
        result = cls(state=AnalysisState.FAILED, error=error)
        if duration_ms is not None:
            result.duration_ms = duration_ms
        return result

    @property
    def root_cause(self) -> str | None:
        """The id of the first annotation (the most specific), or None."""
        return self.annotations[0].id if self.annotations else None

    @property
    def crashed_thread(self) -> Thread | None:
        return next((thread for thread in self.threads if thread.crashed), None)


# ------------------------------------------------------------------ facts


class Facts(Versioned):
    """What the handler recorded while /proc/PID existed (docs/ARCHITECTURE.md "Facts").

    The sections stay JSON objects: they mirror /proc and degrade key by key
    (``missing[key] = reason``); the accessors below are what other layers read.
    """

    version: int = 1
    args: dict[str, Any] = {}
    boot_id: str | None = None
    handler_pid: int | None = None
    proc: dict[str, Any] = {}
    mapped_objects: dict[str, Any] = {}
    sender: dict[str, Any] | None = None
    stream: dict[str, Any] = {}
    pidfd_check: dict[str, Any] = {}
    problems: list[str] = []
    missing: dict[str, str] = {}
    # engine, id, pod, namespace_pid, own_mount_namespace, root (ingest/container.py)
    container: dict[str, Any] | None = None
    # where pid, uid, gid come from: "%P"/"%u"/"%g", "NT_PRPSINFO", or None (unknown)
    id_sources: dict[str, str | None] = {}

    @property
    def tid(self) -> int | None:
        tid = (self.args or {}).get("tid")
        return tid if isinstance(tid, int) else None

    @property
    def argv(self) -> list[str] | None:
        """The command line as a list (keeps argument boundaries)."""
        argv = (self.proc or {}).get("cmdline") if isinstance(self.proc, dict) else None
        return [str(arg) for arg in argv] if isinstance(argv, list) else None


# ------------------------------------------------------------------ crash record


class CrashRecord(Record):
    """One crash, as the index stores it (docs/ARCHITECTURE.md "Index").

    ``pid`` and ``timestamp_us`` are None only for a core without an index row
    (``corectl analyze``); the index refuses such a record.
    """

    pid: int | None
    timestamp_us: int | None
    id: str = ""
    tid: int | None = None
    ns_pid: int | None = None
    uid: int | None = None
    gid: int | None = None
    signal: int | None = None
    si_code: int | None = None
    fault_address: int | None = None
    boot_id: str = ""
    hostname: str = ""
    comm: str = ""
    exe: str = ""
    cmdline: str = ""
    unit: str = ""
    cgroup: str = ""
    rlimit_core: int | None = None
    dump_mode: int | None = None
    core_path: str = ""
    core_state: CoreState = CoreState.NONE
    core_reason: str = ""
    core_size: int | None = None
    stored_size: int | None = None
    facts: Facts | None = None
    analysis_state: AnalysisState | None = AnalysisState.PENDING  # None: no index row
    analysis_error: str | None = ""
    analysis: AnalysisResult | None = None
    root_cause: str | None = ""
    signature: str | None = ""
    path_taken: dict[str, Any] | None = None
    container_id: str = ""  # the facts' container id (ingest/container.py), for MATCH
    problems: list[str] = []  # what could not be read back from the index (not a column)
    _readers: ClassVar[dict[str, Any]] = {"core_state": CoreState, "analysis_state": AnalysisState, "facts": Facts,
                "analysis": AnalysisResult}
    _transient: ClassVar[tuple[str, ...]] = ("problems",)

    @property
    def container(self) -> dict[str, Any]:
        """The facts' ``container`` (engine, id…), empty when it ran on the host."""
        container = self.facts.container if self.facts is not None else None
        return container if isinstance(container, dict) else {}

    def set_analysis(self, result: AnalysisResult) -> None:
        """Take the analysis ``result``: its state, error, root cause and signature."""
        self.analysis = result
        state = result.state if result.state in (AnalysisState.DONE, AnalysisState.FAILED) \
            else AnalysisState.FAILED
        self.analysis_state = AnalysisState(state)
        self.analysis_error = result.error
        self.root_cause = result.root_cause
        self.signature = result.signature

    def analysis_columns(self) -> dict[str, Any]:
        """The index columns :meth:`set_analysis` fills."""
        return {name: getattr(self, name) for name in
                ("analysis", "analysis_state", "analysis_error", "root_cause", "signature")}


COLUMNS = tuple(field for field in CrashRecord._fields if field not in CrashRecord._transient)
