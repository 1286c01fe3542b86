"""PostgreSQL as the source of truth: the same table families as SQLite (`storage.sqlite`),
over a pool of psycopg connections, when the process is given `MEMENTO_DATABASE_URL`.

`connection.PostgresConnection` gives the table families the surface of SQLite's connection
(`storage.relational`); `schema` is PostgreSQL's schema as named steps, applied once under an
advisory lock however many replicas start at once. The driver is imported on first use.
"""

from __future__ import annotations

from storage.postgres.url import DATABASE_URL_SETTING, database_url, redacted

__all__ = ["DATABASE_URL_SETTING", "database_url", "redacted"]
