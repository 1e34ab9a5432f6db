"""The source tutorial's feature file: one line per image, `id|label|{v1,v2,...,vN}`.

Read and written as a stream (never the whole file in memory). Every malformed line is reported
with its line number; values are written with 9 significant digits, which round-trips float32
exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from imgsearch.errors import InvalidArgument


@dataclass(frozen=True)
class FeatureRow:
    line: int
    id: int
    label: str
    vector: np.ndarray


def parse_line(text: str, line: int, dim: int | None = None) -> FeatureRow:
    fields = text.rstrip("\r\n").split("|")
    if len(fields) < 3:
        raise InvalidArgument(f"line {line}: expected id|label|{{v1,...}}, got {text[:60]!r}")
    raw_id, raw_vector = fields[0].strip(), fields[-1].strip()
    label = "|".join(fields[1:-1])
    try:
        item_id = int(raw_id)
    except ValueError:
        raise InvalidArgument(f"line {line}: id {raw_id[:30]!r} is not an integer") from None
    if not 0 <= item_id < 1 << 63:
        raise InvalidArgument(f"line {line}: id {item_id} is outside 0..2^63-1")
    if not (raw_vector.startswith("{") and raw_vector.endswith("}")):
        raise InvalidArgument(f"line {line}: the vector must be written {{v1,v2,...}}")
    try:
        vector = np.array(raw_vector[1:-1].split(","), dtype=np.float32)
    except ValueError:
        message = f"line {line}: the vector holds a value that is not a number"
        raise InvalidArgument(message) from None
    if not np.isfinite(vector).all():
        raise InvalidArgument(f"line {line}: the vector holds NaN or infinity")
    if dim is not None and vector.size != dim:
        raise InvalidArgument(
            f"line {line}: the vector has {vector.size} values; earlier lines have {dim}"
        )
    return FeatureRow(line, item_id, label, vector)


def read_features(lines: Iterable[str]) -> Iterator[FeatureRow]:
    """Rows of a feature file, one at a time; raises InvalidArgument at the first bad line.
    Blank lines are skipped."""
    dim: int | None = None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        row = parse_line(text, number, dim)
        dim = row.vector.size
        yield row


def format_line(item_id: int, label: str, vector: np.ndarray) -> str:
    values = ",".join(map("{:.9g}".format, np.asarray(vector, dtype=np.float32).tolist()))
    return f"{item_id}|{label}|{{{values}}}\n"


def write_features(out: TextIO, rows: Iterable[tuple[int, str, np.ndarray]]) -> int:
    count = 0
    for item_id, label, vector in rows:
        out.write(format_line(item_id, label, vector))
        count += 1
    return count
