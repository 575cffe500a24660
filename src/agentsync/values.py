"""Value types for the hot paths: frozen to the type checker, plain at run time.

A frozen dataclass's ``__init__`` calls ``object.__setattr__`` once per field: 1.9 µs
for a 15-field stream row against 0.3 µs for a plain slotted one, and the append path
builds several per request. ``@value`` gives a slotted, hashable dataclass that mypy
treats as frozen (assigning to a field is a type error), so nothing changes one after
it is made, checked before run time rather than during it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def value(cls: type[T]) -> type[T]:
    return dataclass(slots=True, unsafe_hash=True)(cls)
