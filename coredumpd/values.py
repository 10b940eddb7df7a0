"""Value classes declared as dataclasses are, without their cost at import.

``@dataclasses.dataclass`` writes the source of ``__init__``, ``__repr__``,
``__eq__`` (and ``__hash__``, ``__setattr__`` for a frozen class) and compiles
each when its module is imported: measured on this machine's Python 3.11, about
0.3 ms a class, 15 ms for the ~50 classes ``corectl analyze`` and the sandboxed
analysis import, plus ~5 ms to import :mod:`dataclasses` itself (it imports
:mod:`inspect`, hence ast, dis and tokenize).

A subclass of :class:`Value` (or :class:`Frozen`) is declared the same way —
annotated fields in order, defaults after them — and gets the same behaviour:
an ``__init__`` taking the fields by position or name, ``==`` between instances
of the same class (field by field, as a tuple), the dataclass ``repr``; a
:class:`Frozen` value refuses assignment and hashes its fields.  A mutable
default (``[]``, ``{}``) is copied for each instance, as
``field(default_factory=list)`` would make a new one.  mypy reads these classes
as dataclasses (PEP 681 ``dataclass_transform``).

What it costs: ``==`` and ``repr`` are shared methods; ``__init__`` alone is
written and compiled, as dataclasses writes it (so that the thousands of frames
and symbols of an analysis are made as fast), about 40 µs a class.  It is
compiled with the class rather than on its first instance: a process that
forks analyses (the sandbox zygote, the analysis worker) compiles it once.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FunctionType
from typing import Any, ClassVar, TypeVar, dataclass_transform

_NEW: Any = object()  # the default of a field whose default is mutable: copy it
_MUTABLE = (list, dict, set)

V = TypeVar("V", bound="_Fields")


class _ValueType(type):
    """Records the annotated fields (inherited ones first) and their defaults."""

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> Any:
        annotations = namespace.get("__annotations__", {})
        own = [field for field, kind in annotations.items()
               if not str(kind).startswith(("ClassVar", "typing.ClassVar"))]
        fields: list[str] = []
        defaults: dict[str, Any] = {}
        for base in bases:
            fields += [field for field in getattr(base, "_fields", ()) if field not in fields]
            defaults.update(getattr(base, "_defaults", {}))
        for field in own:
            if field not in fields:
                fields.append(field)
            if field in namespace:
                default = namespace[field]
                defaults[field] = default
                if isinstance(default, _MUTABLE):
                    del namespace[field]  # no shared list on the class: each instance has one
        required = [field for field in fields if field not in defaults]
        if fields[:len(required)] != required:
            raise TypeError(f"{name}: a field without a default follows one with a default")
        if any(field.endswith("__") or field == "self" for field in fields):
            raise TypeError(f"{name}: a field's name is reserved (self, names ending in __)")
        namespace["_fields"] = tuple(fields)
        namespace["_defaults"] = defaults
        if "__init__" not in namespace and fields:
            frozen = namespace.get("_frozen") or any(getattr(base, "_frozen", False)
                                                       for base in bases)
            namespace["__init__"] = _make_init(namespace["__qualname__"], tuple(fields),
                                               defaults, bool(frozen))
        return super().__new__(mcs, name, bases, namespace)


class _Fields(metaclass=_ValueType):
    """What :class:`Value` and :class:`Frozen` share: ``__init__``, ``==``, ``repr``."""

    _fields: ClassVar[tuple[str, ...]] = ()
    _defaults: ClassVar[dict[str, Any]] = {}

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return astuple(self) == astuple(other)

    def __repr__(self) -> str:
        fields = ", ".join(f"{field}={getattr(self, field)!r}" for field in self._fields)
        return f"{type(self).__qualname__}({fields})"


@dataclass_transform()
class Value(_Fields):
    """A mutable value: ``__init__`` from the fields, ``==``, ``repr``; not hashable."""

    __hash__: ClassVar[None] = None  # type: ignore[assignment]


@dataclass_transform(frozen_default=True)
class Frozen(_Fields):
    """An immutable value: as :class:`Value`, and hashable; assignment raises."""

    _frozen: ClassVar[bool] = True

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen "
                             f"{type(self).__qualname__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a frozen "
                             f"{type(self).__qualname__}")

    def __hash__(self) -> int:
        return hash(astuple(self))


def _make_init(qualname: str, fields: tuple[str, ...], defaults: dict[str, Any],
               frozen: bool) -> Callable[..., None]:
    """The ``__init__`` of ``cls``, as ``dataclasses`` writes it: one assignment a field,
    defaults as the function's defaults, a mutable one copied."""
    body = ["    fields__ = self.__dict__"] if frozen else []
    for field in fields:
        if isinstance(defaults.get(field), _MUTABLE):
            body.append(f"    if {field} is NEW__: {field} = copy__(defaults__[{field!r}])")
        body.append(f"    fields__[{field!r}] = {field}" if frozen else f"    self.{field} = {field}")
    source = f"def __init__(self, {', '.join(fields)}):\n" + "\n".join(body or ["    pass"])
    namespace: dict[str, Any] = {"NEW__": _NEW, "copy__": _copy, "defaults__": defaults}
    exec(source, namespace)  # noqa: S102 - the source is made of the class's field names
    init: FunctionType = namespace["__init__"]
    trailing = [defaults[field] for field in fields if field in defaults]
    init.__defaults__ = tuple(_NEW if isinstance(value, _MUTABLE) else value
                              for value in trailing) or None
    init.__qualname__ = f"{qualname}.__init__"
    return init


def _copy(value: Any) -> Any:
    return type(value)(value)


def astuple(value: _Fields) -> tuple[Any, ...]:
    """The fields of ``value`` in order (not recursively, unlike dataclasses.astuple)."""
    return tuple([getattr(value, field) for field in value._fields])


def replace(value: V, **changes: Any) -> V:
    """A copy of ``value`` with ``changes`` (as ``dataclasses.replace``)."""
    return type(value)(**{field: getattr(value, field) for field in value._fields} | changes)
