"""The quantizer of a BINARY index: each generation's function that turns a vector into its
bits, fitted on the collection's rows (per-dimension mean and spread), and dropped once no
searcher names it."""

from __future__ import annotations

from typing import Any

import numpy as np
from psycopg2 import sql

from searcher.catalogue import Collection, quantizer_prefix
from searcher.kinds import create_quantizer, spec
from searcher.pgvector_io import as_array
from searcher.schema import DATA_SCHEMA


def fit_quantizer(cur: Any, collection: Collection) -> dict[str, Any]:
    """Fit the BINARY quantizer (per-dimension mean and standard deviation) on the stored
    rows and create its function for this generation."""
    source = spec(collection.kind).quantizer_input(collection.metric)
    cur.execute(
        sql.SQL("SELECT count(*), avg(x), avg(x * x) FROM (SELECT {} AS x FROM {}) AS rows").format(
            sql.SQL(source), collection.table
        )
    )
    rows, mean, mean_square = cur.fetchone()
    if not rows:
        return {"quantizer_rows": 0}
    centre = as_array(mean)
    spread = np.sqrt(np.maximum(as_array(mean_square) - centre.astype(np.float64) ** 2, 0.0))
    spread = spread.astype(np.float32)
    cur.execute(create_quantizer(collection, collection.generation, centre, spread))
    return {
        "quantizer_rows": rows,
        "quantizer_centre": centre,
        "quantizer_spread": spread,
    }


def drop_quantizers(cur: Any, name: str, *, keep: tuple[str, ...] = ()) -> None:
    """Drop a collection's quantizer functions but those in `keep`."""
    cur.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = %s::regnamespace "
        "AND starts_with(proname, %s)",
        (DATA_SCHEMA, quantizer_prefix(name)),
    )
    for (function,) in cur.fetchall():
        if function not in keep:
            cur.execute(
                sql.SQL("DROP FUNCTION IF EXISTS {}(vector)").format(
                    sql.Identifier(DATA_SCHEMA, function)
                )
            )
