"""What interrupted builds leave, found and dropped when a searcher starts: invalid indexes (a
CONCURRENTLY build or a graph's REINDEX cut short by a crash) and indexes of generations the
catalogue does not record."""

from __future__ import annotations

import logging

from searcher.indexes import IndexBuilder, drop_index
from searcher.locks import advisory_lock
from searcher.schema import DATA_SCHEMA

logger = logging.getLogger(__name__)


def clean_up(builder: IndexBuilder) -> dict[str, str]:
    """Drop what interrupted builds left: invalid indexes (a CONCURRENTLY build cut short by
    a crash) and indexes of generations the catalogue does not record (a build interrupted
    between its index and its record, or before dropping the previous one). Collections a
    searcher is building now are left alone. Says so in each collection's note; returns the
    collections cleaned, each with the upkeep it needs: "build" when its recorded index
    itself was invalid, or covers every row (made before fresh rows existed); "check"
    otherwise (the build that was cut short may have been a repair)."""
    collections = {c.name: c for c in builder.catalogue.list()}
    with builder.autocommit() as cur:
        cur.execute(
            "SELECT t.relname, c.relname, i.indisvalid, i.indpred IS NULL FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
            "WHERE c.relnamespace = %s::regnamespace AND starts_with(c.relname, 'hnsw_') "
            "ORDER BY 1, 2",
            (DATA_SCHEMA,),
        )
        found = cur.fetchall()
        cleaned: dict[str, str] = {}
        for table, index, valid, whole_table in found:
            collection = collections.get(table)
            if collection is None:
                continue
            recorded = index in collection.index_names()
            if valid and recorded:
                if whole_table:
                    # Made before fresh rows existed: every addition went into its graph.
                    logger.info("%s: its index covers every row; built again as partial", table)
                    cleaned[table] = "build"
                continue
            with advisory_lock(cur, "build", table, wait=False) as locked:
                if not locked:
                    continue  # another searcher is building it now
                drop_index(cur, index, concurrently=True)
            what = "an invalid index" if not valid else "an index no build recorded"
            note = f"dropped {what} ({index}) left by an interrupted build"
            if recorded or cleaned.get(table) == "build":
                cleaned[table] = "build"
            else:
                cleaned[table] = "check"
            if recorded:
                note += "; it was the recorded one: the index is built again"
            logger.warning("%s: %s", table, note)
            previous = builder.catalogue.get(table, fresh=True)[0].index_note
            builder.catalogue.record(
                cur, table, index_note="; ".join(filter(None, [note, previous]))
            )
    return cleaned
