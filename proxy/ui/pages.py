"""The trace pages at `/ui/`: recent requests, and one request's timeline of stages.

Server-rendered HTML (Jinja2, autoescaped) with no scripts. The page is tenant-scoped like the
API: a login form takes the tenant's proxy key and gives the browser a signed session
that ends after `SESSION_S` (`proxy.ui.session`: the key's hash, never the key) in an HttpOnly,
SameSite=Strict cookie limited to `/ui`, so the key never appears in a URL, a log line, page
script or the browser's storage; every page re-checks the session against the current
policies, so removing a key from a policy file logs the browser out. What a page shows is
exactly what `GET /v1/traces[/{id}]` returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from proxy.app_state import memory_store_of, span_store_of
from proxy.errors import ProxyError
from proxy.memory.inject import short_id
from proxy.policy import Policy
from proxy.routes.traces import parse_limit, trace_not_found
from proxy.shapes import trace_document, with_memory_texts
from proxy.tenants import PolicyRegistry
from proxy.ui import session

COOKIE = "memento_ui_session"
COOKIE_PATH = "/ui"
SESSION_S = 8 * 3600
MAX_FORM_BYTES = 4096
View = Callable[[Request, Policy], Awaitable[Response]]
_HERE = Path(__file__).parent
_STYLE = _HERE / "static" / "style.css"

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}

_env = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
# OpenTelemetry's "unset" status means nothing went wrong.
_env.filters["status"] = lambda status: "ok" if status == "unset" else status
_env.filters["utc"] = lambda epoch: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))
_env.filters["day"] = lambda epoch: (
    time.strftime("%Y-%m-%d", time.gmtime(epoch)) if isinstance(epoch, int | float) else "—"
)
_env.filters["short"] = short_id
# Where a memory came from, as the pages say it ("from an assistant message", not "a assistant").
_SOURCES = {
    "user": "a user message",
    "assistant": "an assistant message",
    "tool": "a tool result",
    "import": "an import",
}
_env.filters["source"] = lambda role: _SOURCES.get(role, f"a {role} message")
_env.filters["signed"] = lambda value: (
    f"{value:+.3f}".replace("-", "−") if isinstance(value, int | float) else "—"
)


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def page_url(path: str, **params: Any) -> str:
    """`path` with the given query parameters, those that are None, "" or 0 left out."""
    query = urlencode({k: v for k, v in params.items() if v not in (None, "", 0)})
    return f"{path}?{query}" if query else path


def wants_json(request: Request) -> bool:
    return request.query_params.get("format") == "json"


def json_twin(request: Request, document: dict[str, Any]) -> Response | None:
    """With `?format=json`, a page answers the JSON its `/v1/` twin gives for the same thing,
    under the page's login: a link a browser can follow, where `/v1/` wants a Bearer key."""
    if not wants_json(request):
        return None
    return JSONResponse(document, headers=SECURITY_HEADERS)


def problem(request: Request, error: ProxyError, tenant: str | None) -> Response:
    """A page's failure: the error page, or under `?format=json` the OpenAI-shaped error its
    `/v1/` twin answers, with the same status."""
    if wants_json(request):
        return JSONResponse(error.body(), status_code=error.status, headers=SECURITY_HEADERS)
    return render("error.html", status=error.status, tenant=tenant, message=error.message)


def logged_out(request: Request) -> Response:
    """No session: back to the login page, or a 401 for a twin's JSON reader."""
    if wants_json(request):
        error = ProxyError(
            401,
            "No UI session: log in at /ui/ with a proxy key of the tenant, or call /v1/ with "
            "the key as a Bearer token.",
            type="authentication_error",
            code="not_logged_in",
        )
        return JSONResponse(error.body(), status_code=401, headers=SECURITY_HEADERS)
    return RedirectResponse("/ui/", status_code=303, headers=SECURITY_HEADERS)


async def guarded(request: Request, view: View) -> Response:
    """A page under the login: `view` with the session's tenant, its ProxyErrors shown as
    `problem` shows them."""
    policy = await ui_policy(request)
    if policy is None:
        return logged_out(request)
    try:
        return await view(request, policy)
    except ProxyError as error:
        return problem(request, error, policy.tenant)


async def ui_policy(request: Request) -> Policy | None:
    """The tenant of the UI session in the cookie, if the session is genuine, has not ended
    and its key still belongs to the tenant (`proxy.ui.session`)."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    hashed = session.key_hash(await session.session_secret(request), cookie, time.time())
    if hashed is None:
        return None
    registry: PolicyRegistry = request.app.state.policies
    return registry.policy_for_hash(hashed)


def same_origin(request: Request) -> bool:
    """Form posts must come from our own pages (defence against cross-site login/logout)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return request.headers.get("sec-fetch-site") in (None, "same-origin", "none")
    return origin == f"{request.url.scheme}://{request.url.netloc}"


async def read_form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ProxyError(413, f"The form is larger than {MAX_FORM_BYTES} bytes.")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


async def index(request: Request) -> Response:
    if not wants_json(request) and await ui_policy(request) is None:
        return render("login.html", error=None)
    return await guarded(request, _index)


async def _index(request: Request, policy: Policy) -> Response:
    user = request.query_params.get("user") or None
    client_id = request.query_params.get("client_request_id") or None
    limit = parse_limit(request.query_params.get("limit"))
    traces = await span_store_of(request).list_traces(
        policy.tenant, limit=limit, user_id=user, client_request_id=client_id
    )
    if (twin := json_twin(request, {"object": "list", "data": traces})) is not None:
        return twin
    query = {"user": user, "client_request_id": client_id, "limit": limit}
    return render(
        "list.html",
        tenant=policy.tenant,
        traces=traces,
        user=user or "",
        client_request_id=client_id or "",
        limit=limit,
        json_url=page_url("/v1/traces", **query),
        twin_url=page_url("/ui/", **query, format="json"),
    )


async def request_page(request: Request) -> Response:
    return await guarded(request, _request_page)


async def _request_page(request: Request, policy: Policy) -> Response:
    request_id = request.path_params["request_id"]
    rows = await span_store_of(request).get_trace(policy.tenant, request_id)
    if not rows:
        raise trace_not_found(request_id)
    doc = trace_document(request_id, rows)
    await with_memory_texts(doc, memory_store_of(request), policy.tenant, policy.tracing)
    if (twin := json_twin(request, doc)) is not None:
        return twin
    return render(
        "request.html",
        tenant=policy.tenant,
        trace=doc,
        block=memory_block(doc),
        bars=timeline_bars(doc),
        content_policy=policy.tracing.content,
    )


async def page_not_found(request: Request) -> Response:
    """An unknown address under /ui: an HTML page saying so, as the other pages' errors."""
    policy = await ui_policy(request)
    message = f"There is no page at {request.url.path}."
    return render(
        "error.html", status=404, tenant=policy.tenant if policy else None, message=message
    )


async def login(request: Request) -> Response:
    if not same_origin(request):
        return render("login.html", status=403, error="Log in from this page.")
    try:
        key = (await read_form(request)).get("key", "").strip()
    except ProxyError as too_large:
        return render("login.html", status=too_large.status, error=too_large.message)
    registry: PolicyRegistry = request.app.state.policies
    if not key:
        return render("login.html", status=400, error="Enter a proxy key to log in.")
    if registry.policy_for_key(key) is None:
        error = "That key belongs to no tenant. Use a proxy key listed in a tenant's policy file."
        return render("login.html", status=401, error=error)
    response = RedirectResponse("/ui/", status_code=303, headers=SECURITY_HEADERS)
    # Secure over https, also when a load balancer in front ends it: its X-Forwarded-Proto
    # counts here even from an address the server does not trust for the request's scheme, as
    # a client that forges it only makes its own cookie stricter.
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    https = request.url.scheme == "https" or forwarded == "https"
    cookie = session.issue(await session.session_secret(request), key, time.time() + SESSION_S)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=https,
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/ui/", status_code=303, headers=SECURITY_HEADERS)
    if same_origin(request):
        response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


async def style(request: Request) -> Response:
    return FileResponse(_STYLE, media_type="text/css", headers={"cache-control": "max-age=300"})


async def ui_root(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308)


async def to_pages(request: Request) -> Response:
    """A login or logout address opened in the browser (a bookmark, a typed URL): the pages,
    whose first one shows the login form when there is no session. Both act only on POST."""
    return RedirectResponse("/ui/", status_code=303)


def routes() -> list[Route]:
    """The trace pages and the login (the memory pages: proxy/ui/memory_pages.py)."""
    return [
        Route("/ui", ui_root, methods=["GET"]),
        Route("/ui/", index, methods=["GET"]),
        Route("/ui/login", login, methods=["POST"]),
        Route("/ui/login", to_pages, methods=["GET"]),
        Route("/ui/logout", logout, methods=["POST"]),
        Route("/ui/logout", to_pages, methods=["GET"]),
        Route("/ui/requests/{request_id}", request_page, methods=["GET"]),
        Route("/ui/static/style.css", style, methods=["GET"]),
    ]


def memory_block(doc: dict[str, Any]) -> str | None:
    """The memory block exactly as the model saw it, when the policy let the trace keep it."""
    for span in doc["spans"]:
        if span["phase"] == "request" and span["name"] == "memento.inject":
            block = span["attributes"].get("memento.memory.block")
            return block if isinstance(block, str) else None
    return None


def timeline_bars(doc: dict[str, Any], width: float = 300.0) -> list[dict[str, float]]:
    """Each span's bar as x and width in a `width`-unit SVG, scaled to the whole timeline."""
    spans = doc["spans"]
    end = max((s["offset_ms"] + s["duration_ms"] for s in spans), default=0.0) or 1.0
    return [
        {
            "x": round(width * max(0.0, s["offset_ms"]) / end, 2),
            "w": round(max(1.0, width * s["duration_ms"] / end), 2),
        }
        for s in spans
    ]
