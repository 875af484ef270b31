"""Kafka messages described once, as dataclasses whose fields carry their wire type and versions.

A message is a dataclass; each field is declared with `kfield(kind, versions, nullable=..., array=...)`,
in wire order, the way Kafka's own JSON message definitions declare them ("0+", "2-4", ...). One walker
decodes and one encodes every message at every version from these declarations, so a message's layout
is written in one place and its decoder and encoder cannot disagree. A field absent from a version takes
its default when decoded and is not written when encoded. Flexible versions (compact lengths, tagged
fields at the end of every structure) are the same walk with `flexible=True`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Final, TypeVar

from shmraft.kafka.errors import KafkaEncodeError
from shmraft.kafka.primitives import Reader, Writer

VERSION_MAX: Final = 0x7FFF
MessageT = TypeVar("MessageT")


class Kind(enum.Enum):
    """A primitive wire type."""

    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"
    STRING = "string"
    BYTES = "bytes"  # also Kafka's `records`: kept as bytes here, decoded by records.py


_UNIT_BYTES: Final = {Kind.INT8: 1, Kind.INT16: 2, Kind.INT32: 4, Kind.INT64: 8, Kind.BOOL: 1}
_ZERO: Final = {Kind.INT8: 0, Kind.INT16: 0, Kind.INT32: 0, Kind.INT64: 0, Kind.BOOL: False, Kind.STRING: ""}


def parse_versions(text: str) -> tuple[int, int]:
    """Kafka's version range syntax: "3+", "2-4", "5", or "none"."""
    if text == "none":
        return (1, 0)
    if text.endswith("+"):
        return (int(text[:-1]), VERSION_MAX)
    lo, _, hi = text.partition("-")
    return (int(lo), int(hi or lo))


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    """How one field is carried: its type (a Kind or a message dataclass), versions, nullability, arrayness."""

    kind: Kind | type
    versions: tuple[int, int]
    nullable: tuple[int, int]
    array: bool

    def present(self, version: int) -> bool:
        return self.versions[0] <= version <= self.versions[1]

    def is_nullable(self, version: int) -> bool:
        return self.nullable[0] <= version <= self.nullable[1]


def kfield(
    kind: Kind | type, versions: str = "0+", *, nullable: str = "none", array: bool = False, default: Any = ...
) -> Any:
    """Declare a message field (see the module docstring); the default is 0, False, "", [] or None (nullable)."""
    spec = Spec(kind, parse_versions(versions), parse_versions(nullable), array)
    meta = {"kafka": spec}
    if default is not ...:
        return dataclasses.field(default=default, metadata=meta)
    if array:
        return dataclasses.field(default_factory=list, metadata=meta)
    if nullable != "none" or kind is Kind.BYTES:
        return dataclasses.field(default=None, metadata=meta)
    if isinstance(kind, Kind):
        return dataclasses.field(default=_ZERO[kind], metadata=meta)
    raise TypeError(f"a nested structure needs a default: {kind}")


_SPECS: dict[type, tuple[tuple[str, Spec], ...]] = {}


def specs(cls: type) -> tuple[tuple[str, Spec], ...]:
    """The (name, Spec) of each field of a message dataclass, in wire order."""
    out = _SPECS.get(cls)
    if out is None:
        out = tuple((f.name, f.metadata["kafka"]) for f in dataclasses.fields(cls) if "kafka" in f.metadata)
        _SPECS[cls] = out
    return out


# --- decoding -------------------------------------------------------------------------------------------------


def _read_one(kind: Kind | type, r: Reader, version: int, flexible: bool, nullable: bool, name: str) -> Any:
    if kind is Kind.INT32:
        return r.int32(name)
    if kind is Kind.INT16:
        return r.int16(name)
    if kind is Kind.INT64:
        return r.int64(name)
    if kind is Kind.INT8:
        return r.int8(name)
    if kind is Kind.BOOL:
        return r.boolean(name)
    if kind is Kind.STRING:
        return r.string(name, nullable, flexible)
    if kind is Kind.BYTES:
        return r.bytes_(name, nullable, flexible)
    return decode_struct(kind, r, version, flexible, name)  # type: ignore[arg-type]


def decode_struct(cls: type[MessageT], r: Reader, version: int, flexible: bool, path: str = "") -> MessageT:
    """Read one message (or nested structure) of `cls` at `version` from `r`."""
    values: dict[str, Any] = {}
    for name, spec in specs(cls):
        if not spec.present(version):
            continue
        where = f"{path}.{name}" if path else name
        nullable = spec.is_nullable(version)
        if spec.array:
            unit = _UNIT_BYTES.get(spec.kind, 1)  # type: ignore[arg-type]
            n = r.length(where, nullable, flexible, wide=True, unit_bytes=unit)
            if n < 0:
                values[name] = None
                continue
            kind = spec.kind
            values[name] = [_read_one(kind, r, version, flexible, False, where) for _ in range(n)]
        else:
            values[name] = _read_one(spec.kind, r, version, flexible, nullable, where)
    if flexible:
        r.skip_tagged_fields(f"{path}._tagged_fields" if path else "_tagged_fields")
    return cls(**values)


# --- encoding -------------------------------------------------------------------------------------------------


def _write_one(kind: Kind | type, value: Any, w: Writer, version: int, flexible: bool, name: str) -> None:
    if kind is Kind.INT32:
        w.int32(value, name)
    elif kind is Kind.INT16:
        w.int16(value, name)
    elif kind is Kind.INT64:
        w.int64(value, name)
    elif kind is Kind.INT8:
        w.int8(value, name)
    elif kind is Kind.BOOL:
        w.boolean(value, name)
    elif kind is Kind.STRING:
        w.string(value, name, flexible)
    elif kind is Kind.BYTES:
        w.bytes_(value, name, flexible)
    else:
        encode_struct(value, w, version, flexible, name)


def encode_struct(obj: Any, w: Writer, version: int, flexible: bool, path: str = "") -> None:
    """Write one message (or nested structure) at `version`; fields absent from that version are left out."""
    for name, spec in specs(type(obj)):
        if not spec.present(version):
            continue
        value = getattr(obj, name)
        where = f"{path}.{name}" if path else name
        if value is None:
            if not spec.is_nullable(version):
                raise KafkaEncodeError(where, f"a value (not nullable at version {version})", None)
            if spec.array or spec.kind is Kind.BYTES:
                w.length(-1, where, flexible, wide=True)
            else:
                w.string(None, where, flexible)
            continue
        if spec.array:
            w.length(len(value), where, flexible, wide=True)
            for item in value:
                _write_one(spec.kind, item, w, version, flexible, where)
        else:
            _write_one(spec.kind, value, w, version, flexible, where)
    if flexible:
        w.empty_tagged_fields()


def encode(obj: Any, version: int, flexible: bool) -> bytes:
    w = Writer()
    encode_struct(obj, w, version, flexible)
    return w.getvalue()
