"""Where the PostgreSQL database is (`MEMENTO_DATABASE_URL`), and that URL as it may be shown.

Kept free of the driver's import: the command line reads the setting, and redacts it in what it
prints, without loading psycopg.
"""

from __future__ import annotations

import os
import re
from urllib.parse import SplitResult, urlsplit

DATABASE_URL_SETTING = "MEMENTO_DATABASE_URL"
_SCHEMES = ("postgresql", "postgres")
_SECRET_IN_QUERY = re.compile(r"(?i)(password=)[^&\s]*")


def database_url() -> str | None:
    """The PostgreSQL database the process keeps its data in, or None for the data folder's
    SQLite (the setting unset or empty)."""
    return os.environ.get(DATABASE_URL_SETTING, "").strip() or None


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in _SCHEMES


def redacted(url: str) -> str:
    """`url` without its password (in the user part or as a `password=` parameter): what a
    message or a log line may show of it."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unreadable database URL>"
    if password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = SplitResult(
            parts.scheme, f"{parts.username or ''}:***@{host}", parts.path, parts.query, ""
        )
    return _SECRET_IN_QUERY.sub(r"\1***", parts.geturl())


def without_secret(message: str, url: str) -> str:
    """`message` (a driver's error, say) with the URL's password taken out wherever it appears."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        message = message.replace(password, "***")
    return message.replace(url, redacted(url))
