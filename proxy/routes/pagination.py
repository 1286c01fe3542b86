"""List pages in OpenAI's shape: `{"object": "list", "data", "has_more", "first_id", "last_id"}`.

A list route reads `limit` (1 to MAX_LIMIT, default DEFAULT_LIMIT) and `after` (the `last_id`
of the page before) from the query. The store is asked for one item more than `limit`: whether
it came back is `has_more` (the page's JSON: `page_json` in proxy/shapes.py). Pages follow the
list's order by a cursor, not a count, so a page is never shifted by items added meanwhile;
`offset` is refused with a message saying so.
"""

from __future__ import annotations

from starlette.requests import Request

from proxy.errors import bad_request
from proxy.shapes import PageRequest
from storage.numbers import parse_whole_number

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def page_request(request: Request) -> PageRequest:
    """`limit` and `after` from the query, each refused with a 400 that says what to send."""
    params = request.query_params
    if "offset" in params:
        raise bad_request(
            "'offset' is not supported: pass after=<last_id of the previous page> instead.",
            param="offset",
        )
    raw = params.get("limit") or ""
    limit = parse_whole_number(raw, 1, MAX_LIMIT) if raw else DEFAULT_LIMIT
    if limit is None:
        raise bad_request(
            f"'limit' must be a whole number from 1 to {MAX_LIMIT}; got {raw!r}. Page "
            "through longer lists with after=<last_id>.",
            param="limit",
        )
    after = params.get("after") or None
    return PageRequest(limit, after)
