"""The `/ui/` pages as an operator's script reads them: each page's `?format=json` twin answers
as its `/v1/` twin does, failures included, through the real proxy and its store."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.harness import RunningProxy, write_tenant
from tests.test_support import wait_until

KEY_A = "key-acme-0123456789"
KEY_B = "key-globex-0123456789"
ECHO = {"echo": {"model": "echo"}}


@pytest.fixture
def proxy(policies_dir: Path, start_proxy: Callable[..., RunningProxy]) -> Iterator[RunningProxy]:
    write_tenant(policies_dir, "acme", KEY_A, ECHO)
    write_tenant(policies_dir, "globex", KEY_B, ECHO)
    yield start_proxy(policies_dir)


def remember(proxy: RunningProxy, key: str, text: str) -> str:
    response = httpx.post(
        f"{proxy.base_url}/v1/memories",
        headers={"authorization": f"Bearer {key}"},
        json={"kind": "fact", "text": text, "user": "alice"},
        timeout=120,
    )
    assert response.status_code == 201, response.text
    memory_id: str = response.json()["id"]
    return memory_id


def openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_json_twin_fails_in_openais_error_shape(proxy: RunningProxy) -> None:
    # The twins answered their failures with the HTML error page (or a redirect to the login),
    # so a script following a page's JSON link could not read why.
    theirs = remember(proxy, KEY_B, "The user lives in Oslo.")
    with httpx.Client(base_url=proxy.base_url, timeout=120) as browser:
        for path in (
            "/ui/memories?format=json",
            "/ui/requests/req_x?format=json",
            "/ui/?format=json",
        ):
            error = openai_error(browser.get(path), 401)
            assert error["type"] == "authentication_error"
            assert "log in at /ui/" in error["message"]
        assert browser.post("/ui/login", data={"key": KEY_A}).status_code == 303
        error = openai_error(browser.get(f"/ui/memories/{theirs}?format=json"), 404)
        assert error["code"] == "memory_not_found" and "Oslo" not in str(error)
        error = openai_error(browser.get("/ui/requests/req_nope?format=json"), 404)
        assert error["code"] == "trace_not_found"
        error = openai_error(browser.get("/ui/memories?offset=-1&format=json"), 400)
        assert error["param"] == "offset"
        error = openai_error(browser.get("/ui/quarantine?user=%00&format=json"), 400)
        assert error["param"] == "user"
        error = openai_error(browser.get("/ui/?limit=abc&format=json"), 400)
        assert error["param"] == "limit"
        # The pages themselves still show the error page, with the same status.
        page = browser.get(f"/ui/memories/{theirs}")
        assert page.status_code == 404
        assert 'class="error"' in page.text and "Oslo" not in page.text
        assert browser.get("/ui/memories?offset=-1").status_code == 400


def chat(proxy: RunningProxy, key: str, user: str) -> str:
    client = openai.OpenAI(api_key=key, base_url=f"{proxy.base_url}/v1", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "Hello there."}], user=user
    )
    raw.parse()
    return raw.headers["x-request-id"]


def test_the_recent_requests_page_has_a_json_twin_the_api_answers(proxy: RunningProxy) -> None:
    # The list of requests was the one page without a JSON twin: ?format=json gave its HTML.
    mine = [chat(proxy, KEY_A, "alice"), chat(proxy, KEY_A, "bob"), chat(proxy, KEY_A, "alice")]
    theirs = chat(proxy, KEY_B, "alice")
    api = {"authorization": f"Bearer {KEY_A}"}
    traces = f"{proxy.base_url}/v1/traces"
    wait_until(lambda: len(httpx.get(traces, headers=api).json()["data"]) == 3, 60)
    with httpx.Client(base_url=proxy.base_url, timeout=120) as browser:
        assert browser.post("/ui/login", data={"key": KEY_A}).status_code == 303
        page = browser.get("/ui/", params={"user": "alice", "limit": "5"})
        assert page.status_code == 200
        shown = [
            chunk.split('"', 1)[0]
            for chunk in page.text.split('<a class="request-link" href="/ui/requests/')[1:]
        ]
        assert shown == [mine[2], mine[0]] and theirs not in page.text
        api_twin = page.text.split('<code class="api-twin">GET ', 1)[1].split("<", 1)[0]
        answer = httpx.get(proxy.base_url + html.unescape(api_twin), headers=api, timeout=120)
        assert [t["request_id"] for t in answer.json()["data"]] == shown
        link = page.text.split('class="json-twin" href="', 1)[1].split('"', 1)[0]
        followed = browser.get(html.unescape(link))
        assert followed.headers["content-type"].startswith("application/json")
        assert followed.json() == answer.json()


def test_a_login_form_too_large_is_refused_on_the_login_page(proxy: RunningProxy) -> None:
    # It was refused with a JSON error body, the one login failure a browser showed as raw JSON.
    with httpx.Client(base_url=proxy.base_url, timeout=120) as browser:
        refused = browser.post("/ui/login", data={"key": "k" * 5000})
        assert refused.status_code == 413
        assert refused.headers["content-type"].startswith("text/html")
        assert "The form is larger than 4096 bytes." in refused.text
        assert 'name="key"' in refused.text and "memento_ui_session" not in refused.headers.get(
            "set-cookie", ""
        )


def test_the_login_and_logout_addresses_opened_in_a_browser_lead_to_the_pages(
    proxy: RunningProxy,
) -> None:
    # They answered a JSON 405: the login form is on the pages, and both act only on POST.
    with httpx.Client(base_url=proxy.base_url, timeout=120, follow_redirects=True) as browser:
        for address in ("/ui/login", "/ui/logout"):
            page = browser.get(address)
            assert page.status_code == 200 and page.url.path == "/ui/", address
            assert page.headers["content-type"].startswith("text/html")
            assert 'name="key"' in page.text


def test_the_memories_page_refuses_the_erased_status_it_cannot_show(proxy: RunningProxy) -> None:
    # status=deleted was accepted, then every row dropped: the page and its JSON said "no
    # memories" while the API it named (GET /v1/memories?status=deleted) listed them.
    gone = remember(proxy, KEY_A, "The user lives in Porto.")
    erased = httpx.delete(
        f"{proxy.base_url}/v1/memories/{gone}", headers={"authorization": f"Bearer {KEY_A}"}
    )
    assert erased.status_code == 200, erased.text
    with httpx.Client(base_url=proxy.base_url, timeout=120) as browser:
        assert browser.post("/ui/login", data={"key": KEY_A}).status_code == 303
        error = openai_error(browser.get("/ui/memories?status=deleted&format=json"), 400)
        assert error["param"] == "status" and "GET /v1/memories?status=deleted" in error["message"]
        page = browser.get("/ui/memories?status=deleted")
        assert page.status_code == 400 and "erased memories are left out" in page.text
        form = browser.get("/ui/memories").text.split('<select id="status"', 1)[1]
        assert "deleted" not in form.split("</select>", 1)[0]


def test_the_session_cookie_is_secure_behind_a_load_balancer_ending_https(
    policies_dir: Path, start_proxy: Callable[..., RunningProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The balancer is not at an address the server trusts for X-Forwarded-Proto (uvicorn
    # trusts 127.0.0.1 alone unless told), so the request looked like http and the cookie of a
    # browser on https went out without Secure.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.9")
    write_tenant(policies_dir, "acme", KEY_A, ECHO)
    proxy = start_proxy(policies_dir)
    # What Chromium sends for the page's form: the pages' no-referrer policy makes Origin null.
    browser = {"origin": "null", "sec-fetch-site": "same-origin"}
    for scheme, secure in (("https", True), ("http", False)):
        login = httpx.post(
            f"{proxy.base_url}/ui/login",
            data={"key": KEY_A},
            headers={**browser, "x-forwarded-proto": scheme},
        )
        assert login.status_code == 303, login.text
        flags = [part.strip().lower() for part in login.headers["set-cookie"].split(";")]
        assert {"httponly", "samesite=strict", "path=/ui"} <= set(flags)
        assert ("secure" in flags) is secure
