"""Binary ``COPY`` of a fact table's rows straight into the table: the fast write path.

``INSERT ... SELECT FROM unnest(...) ON CONFLICT (event_id) DO NOTHING`` costs
PostgreSQL about 10 us per row (array parsing, the executor's projection, and the
speculative insertion ``ON CONFLICT`` needs: an extra index probe and an extra WAL
record per row). A binary ``COPY`` into the table inserts pages of rows at a time and
parses nothing: about 6 us per row (``tests/bench/bench_store.py``). ``COPY`` has no
``ON CONFLICT``, so :func:`kingest.store.write.write_batch` runs it under a savepoint
and, when a unique violation shows that some rows are redelivered (or that the batch
holds an event twice), rolls back to the savepoint and writes the table's rows with the
idempotent statement instead. Invariant 2 of ``docs/design.md`` (no duplicates)
holds either way: the primary key on ``event_id`` decides.

Rows are formatted by psycopg's own binary ``COPY`` row formatter (C-accelerated),
mapped over a thousand rows at a time in C (:func:`_write_rows`; psycopg's
``write_row`` adds two Python calls per row, 17 % of the formatting). The only
Python work per value is for the types psycopg cannot take from our column buffers:
event ids (canonical UUID text -> 16 bytes), event times (epoch microseconds ->
PostgreSQL's microseconds since 2000-01-01), jsonb (version byte + text) and optional
text (``''`` -> NULL). Each is converted a whole column at a time with ``map`` and
dumped by a dumper whose ``dump`` is a C function.
"""

from __future__ import annotations

import binascii
import operator
import struct
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from itertools import islice, repeat
from typing import Any, Final

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

try:  # psycopg's binary row formatter (C when psycopg-binary or -c is installed)
    from psycopg._copy_base import format_row_binary
except ImportError:  # pragma: no cover - a psycopg that moved it: row by row
    format_row_binary = None

from kingest.store.tables import ColumnType, WriteTable

__all__ = ["copy_rows"]

#: Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
_POSTGRES_EPOCH_US: Final = 946_684_800_000_000
_JSONB_VERSION: Final = "\x01"
_NULL_IF_EMPTY: Final = {"": None}
_UUID_DIGITS: Final = 32
_UUID_BYTES: Final = struct.Struct("16s")
_first = operator.itemgetter(0)
#: The binary COPY stream's header (signature, flags, header extension length) and
#: trailer (a field count of -1), as PostgreSQL's COPY documentation defines them.
_BINARY_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_BINARY_TRAILER: Final = b"\xff\xff"
#: Rows formatted into one buffer before it is sent (a few hundred KiB).
_ROWS_PER_WRITE: Final = 1000


def _oid(name: str) -> int:
    info = psycopg.postgres.types.get(name)
    assert info is not None
    return info.oid


def _passthrough_dumper(type_name: str, dump: Callable[[Any], bytes]) -> type[Dumper]:
    """A binary dumper for ``type_name`` whose ``dump`` is ``dump`` (a C callable)."""
    return type(
        f"_Copy{type_name.title()}Dumper",
        (Dumper,),
        {"format": Format.BINARY, "oid": _oid(type_name), "dump": staticmethod(dump)},
    )


# Registered by oid only, on the COPY cursor's own adapters (see copy_rows).
_DUMPERS: Final = (
    _passthrough_dumper("uuid", bytes),  # values already 16 bytes
    _passthrough_dumper("timestamptz", struct.Struct(">q").pack),  # PostgreSQL microseconds
    _passthrough_dumper("jsonb", str.encode),  # values already carry the version byte
)


def _uuid_bytes(values: Sequence[str]) -> list[bytes]:
    """Event ids as 16 bytes each. The validator admits only UUIDs of 32 hex digits,
    hyphenated in the canonical places or not, so without its hyphens a column is one hex
    string: it is decoded in one C call and cut into ids in C (150 against 320 ns per id
    decoded one by one). A column of another length cannot be cut into ids."""
    digits = "".join(values).replace("-", "")
    if len(digits) != _UUID_DIGITS * len(values):
        raise ValueError("an event id is not a UUID of 32 hexadecimal digits")
    return list(map(_first, _UUID_BYTES.iter_unpack(binascii.unhexlify(digits))))


def _postgres_micros(values: Sequence[int]) -> list[int]:
    return list(map(operator.sub, values, repeat(_POSTGRES_EPOCH_US)))


def _jsonb_text(values: Sequence[str]) -> list[str]:
    return list(map(operator.add, repeat(_JSONB_VERSION), values))


def _null_if_empty(values: Sequence[str]) -> list[str | None]:
    return list(map(_NULL_IF_EMPTY.get, values, values))


#: ColumnType -> (PostgreSQL type of the COPY field, column conversion or None).
_FIELDS: Final[dict[ColumnType, tuple[str, Callable[[Any], Sequence[Any]] | None]]] = {
    ColumnType.UUID: ("uuid", _uuid_bytes),
    ColumnType.EPOCH_MICROS: ("timestamptz", _postgres_micros),
    ColumnType.TEXT: ("text", None),
    ColumnType.OPTIONAL_TEXT: ("text", _null_if_empty),
    ColumnType.JSONB: ("jsonb", _jsonb_text),
    ColumnType.INT8: ("int8", None),
    ColumnType.INT4: ("int4", None),
    ColumnType.FLOAT8: ("float8", None),
    ColumnType.BOOL: ("bool", None),
}


def _write_rows(copy: psycopg.Copy, rows: Iterator[tuple[Any, ...]]) -> None:
    """Send ``rows`` in COPY's binary format, :data:`_ROWS_PER_WRITE` rows per message.

    ``Copy.write_row`` costs two Python calls per row around psycopg's C row formatter;
    here the formatter is mapped over each chunk of rows in C, and the stream's header
    and trailer (PostgreSQL's binary COPY format) are written around the rows.
    """
    if format_row_binary is None:  # psycopg without its row formatter: row by row
        deque(map(copy.write_row, rows), maxlen=0)
        return
    transformer = copy.formatter.transformer
    copy.write(_BINARY_HEADER)
    while chunk := list(islice(rows, _ROWS_PER_WRITE)):
        out = bytearray()
        deque(map(format_row_binary, chunk, repeat(transformer), repeat(out)), maxlen=0)
        copy.write(out)
    copy.write(_BINARY_TRAILER)


def copy_rows(
    cursor: psycopg.Cursor[Any], table: WriteTable, columns: Sequence[Sequence[Any]]
) -> int:
    """COPY the rows given column by column (``RowBatch.columns`` order) into ``table``.

    Raises psycopg errors unchanged (a unique violation when an event is already stored
    or appears twice); a value that cannot be encoded (a number out of range, a malformed
    event id) raises :class:`psycopg.DataError`, a permanent error of the data. Returns
    the number of rows copied.
    """
    for dumper in _DUMPERS:
        cursor.adapters.register_dumper(None, dumper)
    fields: list[Sequence[Any]] = []
    types: list[str] = []
    try:
        for column, values in zip(table.columns, columns, strict=True):
            type_name, convert = _FIELDS[column.type]
            types.append(type_name)
            fields.append(values if convert is None else convert(values))
    except (ValueError, TypeError) as exc:
        raise psycopg.DataError(f"{table.name}: {exc}") from exc
    try:
        with cursor.copy(table.copy_statement) as copy:
            copy.set_types(types)
            _write_rows(copy, zip(*fields, strict=True))
    except (struct.error, OverflowError, ValueError, TypeError) as exc:
        # Raised by a dumper (None in a NOT NULL number, an int8 out of range); psycopg
        # has already failed the COPY, so the statement is over as with a server error.
        raise psycopg.DataError(f"{table.name}: {exc}") from exc
    return len(fields[0]) if fields else 0
