"""Property test (issue item 8): random values of every field type, posted to every route, never give a 5xx.

Values include ids past 2^31 and 2^63 (the INTEGER columns of PostgreSQL and SQLite), NUL characters (PostgreSQL
text refuses them), booleans where numbers go, lists and objects where text goes, and file uploads in forms. Runs on
both backends (PostgreSQL when $RLHF_TEST_POSTGRES_URL is set).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf.labeling.app import create_app
from rlhf.labeling.store import Store, TaskSpec

SECRET = b"fuzz-secret-" + b"f" * 32
BIG = st.sampled_from([2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30])
NUL_TEXT = st.text(max_size=8).map(lambda s: s + "\x00" + s)
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), BIG, st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    NUL_TEXT, st.sampled_from(["A", "B", "tie", "both_bad", "better", "unsafe", "1", "0", "-1", " ", ""]),
)  # fmt: skip
VALUE = st.one_of(SCALAR, st.lists(SCALAR, max_size=10), st.dictionaries(st.text(max_size=5), SCALAR, max_size=3))
FORM_TEXT = st.one_of(
    st.text(max_size=20), NUL_TEXT, BIG.map(str), st.integers().map(str), st.just("9" * 5000),
    st.sampled_from(["A", "B", "tie", "both_bad", "better", "much_better", "skip", "flag", "answer", "pairs", "raw"]),
)  # fmt: skip
JSON_FIELDS = ("assignment_id", "client_id", "choice", "strength", "ranks", "skip_reason", "flag", "note", "time_spent_ms",
               "supersedes", "extra")  # fmt: skip
FORM_FIELDS = ("assignment_id", "client_id", "choice", "strength", "rank", "skip_reason", "flag", "note", "time_spent_ms",
               "supersedes", "action", "what")  # fmt: skip


@pytest.fixture
def fuzz(db_url: str) -> Any:
    store = Store(db_url)
    store.add_tasks([TaskSpec("pairwise", f"p{i}", [f"a{i}", f"b{i}"], {}, 2) for i in range(30)]
                    + [TaskSpec("ranking", f"r{i}", ["x", "y", "z"], {}, 2) for i in range(30)])  # fmt: skip
    lab, admin = store.create_user("lab", "labeler"), store.create_user("boss", "admin")
    app = create_app(store, SECRET, gold_rate=0.2, rate_per_s=0.0)
    c = TestClient(app, follow_redirects=False, raise_server_exceptions=False)
    yield {"store": store, "lab": lab, "admin": admin, "csrf": sign_in(c, lab.invite_token), "client": c}
    store.close()


def sign_in(c: TestClient, invite: str) -> str:
    """Sign in through the invite page; returns the session's CSRF token."""
    form = re.search(r'name="csrf_token" value="([^"]+)"', c.get(f"/invite/{invite}").text).group(1)
    assert c.post(f"/invite/{invite}", data={"csrf_token": form}).status_code == 303
    return re.search(r'name="csrf_token" value="([^"]+)"', c.get("/label").text).group(1)


def real_ids(store: Store) -> list[int]:
    return [j.assignment_id for j in store.judgments()][-3:] + [j.id for j in store.judgments()][-3:] + [1, 2]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_no_route_answers_5xx(fuzz: dict, data: st.DataObject) -> None:
    c, store = fuzz["client"], fuzz["store"]
    api = {"authorization": f"Bearer {data.draw(st.sampled_from([fuzz['lab'], fuzz['admin']])).api_token}"}
    route = data.draw(st.sampled_from(["json", "form", "path", "query", "invite"]), label="route")
    if route == "json":
        # Mostly a real open assignment, so the answer fields get past the id lookup and are validated.
        task = c.get("/api/tasks/next", headers=api).json()["task"]
        ids = real_ids(store) + ([task["assignment_id"]] if task else [])
        fields = data.draw(st.sets(st.sampled_from(JSON_FIELDS), max_size=6), label="fields")
        body = {f: data.draw(st.one_of(VALUE, st.sampled_from(ids)), label=f) for f in fields}
        body.setdefault("assignment_id", data.draw(st.one_of(st.sampled_from(ids), BIG)))
        body.setdefault("client_id", data.draw(st.one_of(st.text(min_size=1, max_size=5), NUL_TEXT)))
        r = c.post("/api/judgments", json=body, headers=api)
    elif route == "form":
        page = c.get("/label").text
        shown = re.search(r'name="assignment_id" value="(\d+)"', page)
        fields = data.draw(st.sets(st.sampled_from(FORM_FIELDS), max_size=7), label="fields")
        form: dict[str, Any] = {f: data.draw(FORM_TEXT, label=f) for f in fields}
        if "rank" in form:
            form["rank"] = data.draw(st.lists(FORM_TEXT, max_size=4))
        if shown and data.draw(st.booleans()):
            form["assignment_id"] = shown.group(1)
        form["csrf_token"] = fuzz["csrf"] if data.draw(st.booleans()) else data.draw(FORM_TEXT)
        upload = data.draw(st.sampled_from([None, "skip_reason", "choice", "assignment_id", "note", "rank", "csrf_token"]))
        files = {upload: ("x.txt", b"file body", "text/plain")} if upload else None
        if upload:
            form.pop(upload, None)
        target = data.draw(st.sampled_from(["/label", "/admin/export", "/logout"]), label="target")
        r = c.post(target, data=form, files=files)
        if target == "/logout" and r.status_code == 200:  # signed out: sign in again for the next example
            fuzz["csrf"] = sign_in(c, store.new_invite("lab"))
    elif route == "path":
        segment = data.draw(st.one_of(BIG.map(str), st.integers().map(str), st.text(max_size=12)), label="segment")
        r = c.get("/label/" + quote(segment, safe=""))
    elif route == "query":
        name, value = data.draw(st.sampled_from(["saved", "sup", "what", "progress"])), data.draw(FORM_TEXT)
        path = {"saved": "/label", "sup": "/label", "what": "/api/export", "progress": "/api/tasks/next"}[name]
        r = c.get(path, params={name: value}, headers=api)
    else:
        token = data.draw(st.one_of(st.text(min_size=1, max_size=50), NUL_TEXT), label="token")
        token = quote(token, safe="") or "x"
        method = data.draw(st.sampled_from(["GET", "POST"]))
        r = c.request(method, f"/invite/{token}", data={"csrf_token": data.draw(FORM_TEXT)} if method == "POST" else None)
    assert r.status_code < 500, (route, r.status_code, r.text[:300])
    assert "content-security-policy" in r.headers
