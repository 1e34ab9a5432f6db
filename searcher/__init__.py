"""The searcher service: PostgreSQL + pgvector storage and k-nearest-neighbour search."""
