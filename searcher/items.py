"""Reading and deleting a collection's items: by id, a page at a time in id order, or (delete)
by filter. Writing them is the loader's (searcher.loader)."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg2 import sql

from imgsearch.errors import InvalidArgument
from searcher.catalogue import Collection
from searcher.pgvector_io import Item, item_from_row
from searcher.pool import ConnectionPool
from searcher.queries import Filter
from searcher.validation import Limits, check_filter, check_id_count, check_page_size


class Items:
    def __init__(self, pool: ConnectionPool, limits: Limits) -> None:
        self.pool = pool
        self.limits = limits

    def get(
        self, collection: Collection, ids: Sequence[int], *, include_vectors: bool = False
    ) -> tuple[list[Item], list[int]]:
        """The items with these ids (in request order) and the ids that were not found."""
        check_id_count(ids, self.limits)
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} WHERE id = ANY(%s)").format(
                    _columns(include_vectors), collection.table
                ),
                (list(ids),),
            )
            found = {item.id: item for item in map(item_from_row, cur.fetchall())}
        items = [found[i] for i in dict.fromkeys(ids) if i in found]
        return items, [i for i in ids if i not in found]

    def page(
        self,
        collection: Collection,
        *,
        after_id: int | None,
        limit: int,
        include_vectors: bool = False,
    ) -> list[Item]:
        """Up to `limit` items with ids above `after_id` (from the start when None), by id."""
        check_page_size(limit, self.limits)
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} WHERE id > %s ORDER BY id LIMIT %s").format(
                    _columns(include_vectors), collection.table
                ),
                (-1 if after_id is None else after_id, limit),
            )
            return list(map(item_from_row, cur.fetchall()))

    def delete(
        self,
        collection: Collection,
        *,
        ids: Sequence[int] = (),
        filter: Filter = Filter(),
        named: Sequence[Collection] = (),
    ) -> int:
        """Delete the items of these ids, or those the filter matches, from the collection and
        (in the same transaction) the tables of its `named` vectors; how many went."""
        if bool(ids) == bool(filter):
            raise InvalidArgument("give either ids or a non-empty filter to delete, not both")
        check_id_count(ids, self.limits)
        check_filter(filter.labels, dict(filter.attributes), self.limits)
        where: sql.Composable
        if ids:
            where, params = sql.SQL("WHERE id = ANY(%(ids)s)"), {"ids": list(ids)}
        else:
            where, params = filter.where()
        with self.pool.connection() as conn, conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("DELETE FROM {} {} RETURNING id").format(collection.table, where), params
            )
            gone = [row[0] for row in cur.fetchall()]
            for table in named:
                cur.execute(
                    sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(table.table), (gone,)
                )
        return len(gone)


def _columns(include_vectors: bool) -> sql.Composable:
    """The columns item_from_row reads; the vector only when asked for (4 KB a row)."""
    return sql.SQL("id, label, uri, attributes, {}").format(
        sql.SQL("embedding" if include_vectors else "NULL")
    )
