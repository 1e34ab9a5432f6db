"""Vectors to and from PostgreSQL: binary COPY in, binary COPY out, and the text literal."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg2 import sql

from searcher.schema import NO_CELL


@dataclass
class Item:
    id: int
    vector: np.ndarray
    label: str = ""
    uri: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    # The collection's named vectors (searcher.named_vectors), by name.
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)


def encode_binary_copy(
    items: Sequence[Item], dim: int, segment: int, cells: Sequence[int] | np.ndarray | None = None
) -> io.BytesIO:
    """Rows (id, label, uri, attributes, embedding, segment, cell) in PostgreSQL's binary COPY
    format, every one in `segment`, each in its cell (NO_CELL without `cells`).

    Vectors use pgvector's binary form: int16 dim, int16 unused, then big-endian float32s.
    """
    out = io.BytesIO()
    out.write(_COPY_HEADER)
    vector_header = struct.pack("!ihh", 4 + 4 * dim, dim, 0)
    segment_field = struct.pack("!ii", 4, segment)
    if cells is None:
        cells = [NO_CELL] * len(items)
    for item, cell in zip(items, cells, strict=True):
        label = item.label.encode()
        uri = item.uri.encode()
        attributes = b"\x01" + json.dumps(item.attributes, ensure_ascii=False).encode()
        out.write(struct.pack("!hiq", 7, 8, item.id))
        for value in (label, uri, attributes):
            out.write(struct.pack("!i", len(value)))
            out.write(value)
        out.write(vector_header)
        # tobytes() of the big-endian copy is what keeps this fast
        out.write(np.asarray(item.vector, dtype=">f4").tobytes())
        out.write(segment_field)
        out.write(struct.pack("!ii", 4, cell))
    out.write(_COPY_TRAILER)
    out.seek(0)
    return out


def encode_id_version_cell_copy(
    ids: np.ndarray, versions: np.ndarray, cells: np.ndarray
) -> io.BytesIO:
    """(id, version, cell) rows, two bigints and an integer, in PostgreSQL's binary COPY
    format."""
    rows = np.empty(
        len(ids),
        dtype=[
            ("fields", ">i2"),
            ("l1", ">i4"),
            ("id", ">i8"),
            ("l2", ">i4"),
            ("version", ">i8"),
            ("l3", ">i4"),
            ("cell", ">i4"),
        ],
    )
    rows["fields"], rows["l1"], rows["l2"], rows["l3"] = 3, 8, 8, 4
    rows["id"], rows["version"], rows["cell"] = ids, versions, cells
    out = io.BytesIO(_COPY_HEADER + rows.tobytes() + _COPY_TRAILER)
    return out


def copy_sample(
    cur: Any, table: sql.Composable, dim: int, *, share: float, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of up to `size` rows of `table` drawn at random (each row kept with
    probability `share` percent, repeatably for `seed`), by one binary COPY."""
    picked = io.BytesIO()
    cur.copy_expert(
        sql.SQL(
            "COPY (SELECT id, embedding FROM {} TABLESAMPLE BERNOULLI ({}) REPEATABLE ({}) "
            "LIMIT {}) TO STDOUT (FORMAT binary)"
        ).format(table, sql.Literal(share), sql.Literal(seed), sql.Literal(size)),
        picked,
    )
    return decode_binary_copy_ids_vectors(picked.getvalue(), dim)


def decode_binary_copy_ids_vectors(payload: bytes, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) from `COPY (SELECT id, embedding ...) TO STDOUT WITH (FORMAT binary)`."""
    return decode_id_vector_rows(
        payload[len(_COPY_HEADER) : len(payload) - len(_COPY_TRAILER)], dim
    )


def decode_binary_copy_versioned_vectors(
    payload: bytes, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, versions, vectors) from `COPY (SELECT id, <a bigint>, embedding ...) TO STDOUT
    WITH (FORMAT binary)`."""
    body = payload[len(_COPY_HEADER) : len(payload) - len(_COPY_TRAILER)]
    rows = _fixed_rows(body, dim, versioned=True)
    return (
        rows["id"].astype(np.int64),
        rows["version"].astype(np.int64),
        rows["vector"].astype(np.float32),
    )


def id_vector_row_bytes(dim: int) -> int:
    return _id_vector_row(dim).itemsize


def decode_id_vector_rows(body: bytes | bytearray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) from whole rows of such a COPY, without its header and trailer."""
    rows = _fixed_rows(body, dim)
    return rows["id"].astype(np.int64), rows["vector"].astype(np.float32)


def _fixed_rows(body: bytes | bytearray, dim: int, *, versioned: bool = False) -> np.ndarray:
    """COPY rows of an id (and a version) and a vector(dim) as one numpy record array: every
    row has the same size, so they are not read row by row."""
    row = _id_vector_row(dim, versioned=versioned)
    if len(body) % row.itemsize:
        raise ValueError(f"{len(body)} bytes of COPY rows are not rows of {dim}-d vectors")
    rows = np.frombuffer(body, dtype=row)
    if len(rows) and (rows["dim"] != dim).any():
        raise ValueError(f"COPY output holds vectors that are not {dim}-d")
    return rows


def _id_vector_row(dim: int, *, versioned: bool = False) -> np.dtype:
    version = [("version_length", ">i4"), ("version", ">i8")] if versioned else []
    return np.dtype(
        [
            ("fields", ">i2"),
            ("id_length", ">i4"),
            ("id", ">i8"),
            *version,
            ("vector_length", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vector", ">f4", (dim,)),
        ]
    )


COPY_HEADER_BYTES = len(_COPY_HEADER)


def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form of a float32 vector: each value as nine significant digits and an
    exponent ("+123456789e-09"), which round-trips every float32 exactly. Written by numpy for
    the whole vector at once, with no Python step per value: formatting the 1000 values one by
    one ("%.9g") was the largest part of a search's own Python time in the searcher. The tables
    are read with `take`, several times cheaper here than indexing a 2-d table with an array:
    a 1000-d vector's literal took 110 us with indexing and 73-76 with `take` (bench/RESULTS.md,
    "The searcher's own time")."""
    x = np.asarray(vector, dtype=np.float32).astype(np.float64).ravel()
    if not np.isfinite(x).all():
        raise ValueError("a vector literal needs finite values")
    magnitude = np.abs(x)
    with np.errstate(divide="ignore"):
        exponent = np.floor(np.log10(magnitude))
    exponent[magnitude == 0] = 0
    exponent = exponent.astype(np.int64)
    digits = np.rint(magnitude * _POWERS_OF_TEN.take(_POWER_ZERO + 8 - exponent))
    # log10 may land one decade off at a power of ten: nine digits exactly, never ten or eight
    exponent += digits >= 1e9
    exponent -= (digits < 1e8) & (magnitude > 0)
    digits = np.rint(magnitude * _POWERS_OF_TEN.take(_POWER_ZERO + 8 - exponent)).astype(np.int64)
    text = np.empty((len(x), 15), dtype=np.uint8)  # sign, 9 digits, "e", sign, 2 digits, ","
    text[:, 0] = np.where(np.signbit(x), ord("-"), ord("+"))
    text[:, 1:4] = _THREE_DIGITS.take(digits // 1_000_000, axis=0)
    text[:, 4:7] = _THREE_DIGITS.take(digits // 1000 % 1000, axis=0)
    text[:, 7:10] = _THREE_DIGITS.take(digits % 1000, axis=0)
    text[:, 10:15] = _EXPONENTS.take(exponent - 8 + 99, axis=0)
    return "[" + text.tobytes()[:-1].decode("ascii") + "]"


# What vector_literal writes with: "000".."999"; the exponents -99..99 as "e-99,".."e+99,"; and
# 10**p for every p a float32 may need (decimal exponents -45..38, nine digits apart).
_THREE_DIGITS = np.frombuffer("".join(f"{i:03d}" for i in range(1000)).encode(), np.uint8)
_THREE_DIGITS = _THREE_DIGITS.reshape(1000, 3)
_EXPONENTS = np.frombuffer("".join(f"e{i:+03d}," for i in range(-99, 100)).encode(), np.uint8)
_EXPONENTS = _EXPONENTS.reshape(199, 5)
_POWER_ZERO = 60
_POWERS_OF_TEN = 10.0 ** np.arange(-_POWER_ZERO, _POWER_ZERO + 1)


def as_array(value: Any) -> np.ndarray:
    """pgvector's psycopg2 adapter returns numpy arrays or Vector objects, by version."""
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    return np.asarray(value, dtype=np.float32)


def item_from_row(row: Sequence[Any]) -> Item:
    """An Item from (id, label, uri, attributes, embedding or NULL)."""
    vector = as_array(row[4]) if row[4] is not None else np.empty(0, np.float32)
    return Item(id=row[0], label=row[1], uri=row[2], attributes=row[3], vector=vector)
