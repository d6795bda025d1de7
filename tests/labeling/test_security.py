"""The labeling app's attack matrix as code, and the security fixes of the labeling issue that need a real server.

Matrix: every route x {no auth, wrong user, labeler on admin, forged / expired / revoked credential, cross-site
Origin} -> the expected status. Cells that do not apply to a route (a labeler on a labeler route, "wrong user"
where a route has no owner) expect the legitimate status, so every cell is still checked.
"""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

import rlhf.labeling.store as store_mod
from rlhf.labeling.app import COOKIE, create_app
from rlhf.labeling.render import markdown
from rlhf.labeling.security import Sessions
from rlhf.labeling.store import Store, TaskSpec

SECRET = b"attack-matrix-secret-" + b"s" * 32
CROSS = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
CONDITIONS = ("none", "wrong_user", "labeler_on_admin", "forged", "expired", "revoked", "cross_site")

# route -> expected status per condition (see the module doc). Page routes authenticate with the session cookie,
# API routes with the bearer token (for them "expired" is a live session cookie without a token: the API never
# takes the cookie), invite routes with the invite token.
MATRIX: dict[str, dict[str, int]] = {
    "GET /": dict(none=401, wrong_user=303, labeler_on_admin=303, forged=401, expired=401, revoked=401, cross_site=303),
    "GET /label": dict(none=401, wrong_user=200, labeler_on_admin=200, forged=401, expired=401, revoked=401, cross_site=200),
    "GET /label/{aid}": dict(none=401, wrong_user=403, labeler_on_admin=200, forged=401, expired=401, revoked=401,
                             cross_site=200),
    "POST /label": dict(none=401, wrong_user=403, labeler_on_admin=303, forged=401, expired=401, revoked=401, cross_site=403),
    "POST /logout": dict(none=401, wrong_user=200, labeler_on_admin=200, forged=401, expired=401, revoked=401, cross_site=403),
    "GET /admin": dict(none=401, wrong_user=200, labeler_on_admin=403, forged=401, expired=401, revoked=401, cross_site=200),
    "POST /admin/export": dict(none=401, wrong_user=200, labeler_on_admin=403, forged=401, expired=401, revoked=401,
                               cross_site=403),
    "GET /invite/{token}": dict(none=403, wrong_user=200, labeler_on_admin=200, forged=403, expired=403, revoked=403,
                                cross_site=200),
    "POST /invite/{token}": dict(none=403, wrong_user=303, labeler_on_admin=303, forged=403, expired=403, revoked=403,
                                 cross_site=403),
    "GET /api/tasks/next": dict(none=401, wrong_user=200, labeler_on_admin=200, forged=401, expired=401, revoked=401,
                                cross_site=200),
    "POST /api/judgments": dict(none=401, wrong_user=403, labeler_on_admin=201, forged=401, expired=401, revoked=401,
                                cross_site=201),
    "GET /api/export": dict(none=401, wrong_user=200, labeler_on_admin=403, forged=401, expired=401, revoked=401,
                            cross_site=200),
    "GET /api/stats": dict(none=401, wrong_user=200, labeler_on_admin=403, forged=401, expired=401, revoked=401,
                           cross_site=200),
    "GET /guidelines": dict(none=401, wrong_user=200, labeler_on_admin=200, forged=401, expired=401, revoked=401,
                            cross_site=200),
    "GET /api/guidelines": dict(none=401, wrong_user=200, labeler_on_admin=200, forged=401, expired=401, revoked=401,
                                cross_site=200),
    "GET /healthz": dict.fromkeys(CONDITIONS, 200),
    "GET /openapi.json": dict.fromkeys(CONDITIONS, 200),
}  # fmt: skip


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    store = Store(tmp_path / "labels.db")
    store.add_tasks([TaskSpec("pairwise", f"p{i}", [f"a{i}", f"b{i}"], {}, 3) for i in range(40)])
    users = {n: store.create_user(n, role) for n, role in (("lab", "labeler"), ("other", "labeler"), ("boss", "admin"),
                                                           ("boss2", "admin"))}  # fmt: skip
    app = create_app(store, SECRET, gold_rate=0.0, rate_per_s=1000.0, burst=1000)
    return {"store": store, "users": users, "app": app, "n": 0}


def session_cookie(world: dict, name: str, ttl: timedelta = timedelta(days=1)) -> tuple[str, str]:
    """A fresh server-side session of `name`: (cookie value, its CSRF token)."""
    token = world["store"].create_session(world["users"][name].user.id, ttl)
    return Sessions(SECRET, 14 * 86400).new(token)


def request_for(world: dict, route: str, condition: str) -> tuple[TestClient, str, str, dict]:
    """(client, method, url, httpx kwargs) for one cell of the matrix."""
    store, users = world["store"], world["users"]
    world["n"] += 1
    method, path = route.split(" ", 1)
    admin_route = path.startswith("/admin") or path in ("/api/export", "/api/stats")
    owner = "boss" if admin_route else "lab"
    actor = {"wrong_user": "boss2" if admin_route else "other", "labeler_on_admin": "lab"}.get(condition, owner)
    c = TestClient(world["app"], follow_redirects=False)
    headers: dict[str, str] = dict(CROSS) if condition == "cross_site" else {}
    kw: dict[str, Any] = {"headers": headers}

    if path.startswith("/invite/"):
        invitee = {"wrong_user": "other", "labeler_on_admin": "boss"}.get(condition, "lab")
        token = store.new_invite(invitee)
        if condition == "none":
            token = "no-such-invite"
        elif condition == "forged":
            token = token[:-4] + "AAAA"
        elif condition == "expired":
            old, store_mod.INVITE_TTL = store_mod.INVITE_TTL, timedelta(seconds=-1)
            try:
                token = store.new_invite(invitee)
            finally:
                store_mod.INVITE_TTL = old
        elif condition == "revoked":
            store.new_invite(invitee)  # a newer invite voids `token`
        if method == "POST":
            kw["data"] = {"csrf_token": Sessions(SECRET, 1).invite_csrf(token)}
        return c, method, path.replace("{token}", token), kw

    if path.startswith("/api/"):
        if condition == "forged":
            headers["authorization"] = "Bearer forged-" + "x" * 40
        elif condition == "expired":
            c.cookies.set(COOKIE, session_cookie(world, actor)[0])  # a live cookie, but no bearer token
        elif condition == "revoked":  # a throwaway user with the actor's role, whose token was revoked
            new = store.create_user(f"revoked-{world['n']}", "admin" if admin_route else "labeler")
            store.revoke(new.user.name, tokens=True, sessions=False)
            headers["authorization"] = f"Bearer {new.api_token}"
        elif condition != "none":
            headers["authorization"] = f"Bearer {users[actor].api_token}"
        if path == "/api/judgments":
            lab_token = {"authorization": f"Bearer {users['lab'].api_token}"}
            aid = c.get("/api/tasks/next", headers=lab_token).json()["task"]["assignment_id"]
            kw["json"] = {"assignment_id": aid, "client_id": f"m{world['n']}", "choice": "tie"}
        return c, method, path, kw

    # Page routes: the session cookie.
    if condition == "forged":
        c.cookies.set(COOKIE, Sessions(b"not-the-key-" + b"k" * 32, 86400).new("made-up-session")[0])
        csrf = "x"
    elif condition == "expired":
        value, csrf = session_cookie(world, actor, ttl=timedelta(seconds=-1))
        c.cookies.set(COOKIE, value)
    elif condition == "revoked":  # signed in, logged out, and the copied cookie used again
        value, csrf = session_cookie(world, actor)
        c.cookies.set(COOKIE, value)
        assert c.post("/logout", data={"csrf_token": csrf}).status_code == 200
        c = TestClient(world["app"], follow_redirects=False)
        c.cookies.set(COOKIE, value)
    elif condition == "none":
        csrf = "x"
    else:
        value, csrf = session_cookie(world, actor)
        c.cookies.set(COOKIE, value)
    if "{aid}" in path or path == "/label":
        lab = users["lab"].user.id
        shown = store.next_assignment(lab, gold_rate=0.0)
        path = path.replace("{aid}", str(shown.assignment_id))
        if method == "POST":
            kw["data"] = {"csrf_token": csrf, "assignment_id": str(shown.assignment_id), "client_id": f"w{world['n']}",
                          "choice": "tie"}  # fmt: skip
    elif method == "POST":
        kw["data"] = {"csrf_token": csrf, "what": "meta"}
    return c, method, path, kw


@pytest.mark.parametrize("route", list(MATRIX))
def test_attack_matrix(world: dict, route: str) -> None:
    got = {}
    for condition in CONDITIONS:
        c, method, url, kw = request_for(world, route, condition)
        r = c.request(method, url, **kw)
        got[condition] = r.status_code
        assert r.status_code < 500, (route, condition, r.text[:300])
        assert "default-src 'self'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"
    assert got == MATRIX[route]


def test_the_matrix_covers_every_route(world: dict) -> None:
    routes = {f"{m} {r.path.replace('{assignment_id}', '{aid}')}" for r in world["app"].routes
              for m in getattr(r, "methods", ()) if m != "HEAD"}  # fmt: skip
    public = {"GET /docs", "GET /redoc", "GET /docs/oauth2-redirect"}
    assert routes - public == set(MATRIX)


# -- item 1: invite tokens never reach the logs ---------------------------------------------------------------------


def test_invite_token_is_not_in_the_server_output(tmp_path: Path, server_process: Any) -> None:
    db = str(tmp_path / "labels.db")
    store = Store(db)
    store.add_tasks([TaskSpec("pairwise", "p", ["a", "b"], {}, 1)])
    admin = store.create_user("boss", "admin")
    other = store.new_invite(store.create_user("lab", "labeler").user.name)
    log = tmp_path / "server.log"
    with server_process(db, log, "--log-level", "debug") as server, httpx.Client(base_url=server.url) as c:
        page = c.get(f"/invite/{admin.invite_token}")  # a link previewer, then the person
        assert page.status_code == 200
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        signed_in = c.post(f"/invite/{admin.invite_token}", data={"csrf_token": csrf}, follow_redirects=False)
        assert signed_in.status_code == 303
        assert c.get(f"/invite/{admin.invite_token}").status_code == 403  # used: 403, logged too
        assert c.get(f"/invite/{other}?utm=chat").status_code == 200
        assert c.get(f"/invite/{other}/extra").status_code == 404
        assert c.get("/healthz").status_code == 200
    text = log.read_text()
    assert '"GET /healthz HTTP/1.1" 200' in text  # the access log is on: the test can see request lines
    for token in (admin.invite_token, other):
        assert token[:12] not in text, [line for line in text.splitlines() if token[:12] in line]
    assert text.count("/invite/[redacted]") >= 5


def test_trace_log_level_is_refused(tmp_path: Path) -> None:
    from rlhf.labeling.cli import main

    with pytest.raises(SystemExit):  # argparse: trace logs whole request headers (cookies, bearer tokens)
        main(["label", "serve", "--db", str(tmp_path / "labels.db"), "--log-level", "trace"])


# -- item 3: revocation takes effect at once -----------------------------------------------------------------------


def test_revocation_takes_effect_on_a_running_app(world: dict) -> None:
    store, users = world["store"], world["users"]
    c = TestClient(world["app"], follow_redirects=False)
    h = {"authorization": f"Bearer {users['lab'].api_token}"}
    assert c.get("/api/tasks/next", headers=h).status_code == 200
    value, _ = session_cookie(world, "lab")
    c.cookies.set(COOKIE, value)
    assert c.get("/label").status_code == 200
    store.revoke("lab", tokens=True, sessions=True)  # e.g. `rlhf label revoke lab` from another process
    assert c.get("/api/tasks/next", headers=h).status_code == 401
    assert c.get("/label").status_code == 401
    value, _ = session_cookie(world, "other")
    c.cookies.set(COOKIE, value)
    store.revoke("other", deactivate=True)
    assert c.get("/label").status_code == 401
    assert c.get("/api/tasks/next", headers={"authorization": f"Bearer {users['other'].api_token}"}).status_code == 401


# -- item 4: login CSRF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"origin": "https://evil.example"}, 403),
        ({"origin": "null"}, 403),
        ({"sec-fetch-site": "cross-site"}, 403),
        ({"sec-fetch-site": "same-site", "origin": "http://testserver"}, 403),  # a sibling subdomain is not us
        ({"origin": "http://testserver"}, 303),
        ({"sec-fetch-site": "same-origin", "origin": "http://testserver"}, 303),
        ({}, 303),  # not a browser (no Origin): the invite token and its CSRF HMAC still apply
    ],
)
def test_sign_in_checks_the_origin(world: dict, headers: dict, status: int) -> None:
    token = world["users"]["lab"].invite_token
    c = TestClient(world["app"], follow_redirects=False)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get(f"/invite/{token}").text).group(1)
    r = c.post(f"/invite/{token}", data={"csrf_token": csrf}, headers=headers)
    assert r.status_code == status
    assert (world["store"].invite_user(token) is None) == (status == 303)  # a refused sign-in leaves the invite


# -- item 5: rate limits -------------------------------------------------------------------------------------------


def test_failed_and_anonymous_requests_are_rate_limited(world: dict) -> None:
    app = create_app(world["store"], SECRET, gold_rate=0.0, rate_per_s=0.01, burst=3)
    c = TestClient(app, follow_redirects=False)
    guesses = [c.get("/api/tasks/next", headers={"authorization": f"Bearer guess{n}"}).status_code for n in range(5)]
    assert guesses == [401, 401, 401, 429, 429]
    c2 = TestClient(create_app(world["store"], SECRET, gold_rate=0.0, rate_per_s=0.01, burst=3), follow_redirects=False)
    assert [c2.get("/label").status_code for _ in range(5)] == [401, 401, 401, 429, 429]
    assert c2.get("/admin").status_code == 429  # one bucket per address, for every anonymous page
    # A signed-in user has their own bucket.
    c2.cookies.set(COOKIE, session_cookie(world, "lab")[0])
    assert c2.get("/label").status_code == 200


@pytest.mark.slow
def test_forwarded_for_counts_only_from_a_trusted_proxy(tmp_path: Path, server_process: Any) -> None:
    db = str(tmp_path / "labels.db")
    Store(db).close()
    args = ("--rate-limit", "0.01", "--burst", "3", "--log-level", "warning")

    def codes(url: str, addrs: list[str]) -> list[int]:
        return [httpx.get(f"{url}/invite/guess", headers={"x-forwarded-for": a}).status_code for a in addrs]

    rotating = [f"10.0.0.{n}" for n in range(5)]
    with server_process(db, tmp_path / "a.log", *args) as server:  # no --trusted-proxy: the header is ignored
        assert codes(server.url, rotating) == [403, 403, 403, 429, 429]
    with server_process(db, tmp_path / "b.log", *args, "--trusted-proxy", "127.0.0.1") as server:
        assert codes(server.url, rotating) == [403] * 5  # behind our proxy: one bucket per real client
        assert codes(server.url, ["10.0.0.9"] * 4) == [403, 403, 403, 429]


# -- item 8: a 5xx still carries the security headers --------------------------------------------------------------


def test_server_errors_carry_the_security_headers(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: object, **k: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(world["store"], "next_assignment", broken)
    c = TestClient(world["app"], raise_server_exceptions=False)
    r = c.get("/api/tasks/next", headers={"authorization": f"Bearer {world['users']['lab'].api_token}"})
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"


# -- issue #21 item 2: no raw HTML from a prompt, a response or the guidelines reaches a page -----------------------

# The XSS cases, each in raw HTML and in the Markdown forms that could smuggle it past an escaper.
XSS = [
    "<script>window.hacked = 1; alert('x')</script>",
    '<img src=x onerror="window.hacked = 1">',
    '<a href="javascript:window.hacked = 1">click</a>',
    "[click](javascript:window.hacked=1)",
    "[click](JaVaScRiPt:window.hacked=1)",
    "[click](java\tscript:window.hacked=1)",
    "[click](&#106;avascript:window.hacked=1)",
    "[click](vbscript:msgbox(1))",
    "[click](data:text/html;base64,PHNjcmlwdD53aW5kb3cuaGFja2VkPTE8L3NjcmlwdD4=)",
    "[click](data:image/png;base64,iVBORw0KGgo=)",  # markdown-it's own check lets data:image links through; ours not
    "<javascript:window.hacked=1>",
    '![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+) ![y](x" onerror="window.hacked=1)',
    "<svg onload=window.hacked=1>",
    '<iframe src="javascript:window.hacked=1"></iframe><style>body{display:none}</style>',
    "```html\n<script>window.hacked = 1</script>\n```",
    '``` onmouseover="window.hacked=1\ncode\n```',
    "[ref]\n\n[ref]: javascript:window.hacked=1",
]
# What rendered Markdown and our templates may contain; anything else on a page came from untrusted text.
PAGE_TAGS = {"html", "head", "meta", "title", "link", "script", "body", "header", "strong", "span", "nav", "a", "form",
             "input", "button", "main", "section", "h1", "h2", "p", "div", "fieldset", "legend", "label", "select",
             "option", "kbd", "details", "summary", "pre", "code", "ol", "ul", "li", "em", "br", "hr", "blockquote",
             "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"}  # fmt: skip


class PageAudit(HTMLParser):
    """Every element, attribute and URL on a page, with what is not allowed."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in PAGE_TAGS:
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on") or name in ("style", "srcdoc", "formaction"):
                self.problems.append(f"<{tag} {name}=...>")
            if name in ("href", "src", "action") and value is not None:
                scheme = re.match(r"\s*([a-zA-Z][a-zA-Z0-9+.-]*):", re.sub(r"[\x00-\x20]", "", value))
                if scheme and scheme.group(1).lower() not in ("http", "https", "mailto"):
                    self.problems.append(f"<{tag} {name}={value!r}>")
        if tag == "script":
            self.scripts.append(dict(attrs).get("src") or "inline")


def audit(html: str) -> PageAudit:
    a = PageAudit()
    a.feed(html)
    return a


@pytest.fixture
def xss_world(tmp_path: Path) -> dict[str, Any]:
    store = Store(tmp_path / "labels.db")
    evil = "\n\n".join(XSS)
    messages = [{"role": "system", "content": evil}, {"role": "user", "content": f"question {evil}"},
                {"role": "assistant", "content": evil}, {"role": f"user {XSS[1]}", "content": evil}]  # fmt: skip
    chatml = "".join(f"<|im_start|>{r}\n{evil}<|im_end|>\n" for r in ("system", "user", XSS[0])) + "<|im_start|>assistant\n"
    store.add_tasks([
        TaskSpec("pairwise", "rendered", [f"A {evil}", f"B {evil}"], {"prompt_messages": messages}, 1),
        TaskSpec("ranking", chatml, [f"R{i} {evil}" for i in range(3)], {}, 1),
        TaskSpec("pairwise", f"\n\nHuman: {evil}\n\nAssistant: {evil}\n\nHuman: {evil}", ["x", evil], {}, 1),
        TaskSpec("pairwise", evil, [evil, "y"], {}, 1),
    ])  # fmt: skip
    store.set_guidelines(f"# Rules\n\n{evil}")
    user = store.create_user("lab", "labeler")
    app = create_app(store, SECRET, gold_rate=0.0, rate_per_s=1000.0, burst=1000)
    return {"store": store, "user": user, "app": app}


def test_no_raw_html_from_prompts_responses_or_guidelines(xss_world: dict) -> None:
    c = TestClient(xss_world["app"], follow_redirects=False)
    value, csrf = Sessions(SECRET, 14 * 86400).new(xss_world["store"].create_session(xss_world["user"].user.id,
                                                                                     timedelta(days=1)))  # fmt: skip
    c.cookies.set(COOKIE, value)
    pages = {"/guidelines": c.get("/guidelines").text}
    for n in range(4):  # every task once: answer each to get the next
        page = c.get("/label").text
        aid = re.search(r'name="assignment_id" value="(\d+)"', page).group(1)
        pages[f"task {n + 1}"] = page
        c.post("/label", data={"csrf_token": csrf, "assignment_id": aid, "client_id": f"c{n}", "action": "skip"})
    assert len({p for p in pages.values()}) == 5
    for name, page in pages.items():
        a = audit(page)
        assert a.problems == [], (name, a.problems[:5])
        assert a.scripts == ["/static/label.js"], name
        assert "window.hacked" in page, name  # the text itself is shown (escaped), not dropped
    turns = re.findall(r'data-role="([^"]*)"', pages["task 1"])
    assert turns == ["system", "user", "assistant", "user &lt;img src=x onerror=&#34;window.hacked = 1&#34;&gt;"]
    assert '<h1>Rules</h1>' in pages["/guidelines"]


@given(st.lists(st.sampled_from(XSS + ["**b**", "`c`", "\n", "\n\n", "[", "](", ")", "<", ">", "&", '"', "javascript:",
                                       "x", "> q", "- li", "1. n", "```", "<b>", "](http://a)", " "]), max_size=12))
@settings(max_examples=300, deadline=None)
def test_markdown_output_never_holds_raw_html(parts: list[str]) -> None:
    """Property: whatever the pieces, the sanitised Markdown holds only allowed tags, no event handlers, no
    javascript:/data: URLs."""
    html = str(markdown("".join(parts)))
    a = audit(html)
    assert a.problems == [] and a.scripts == [], (parts, html)
