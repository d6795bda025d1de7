"""The web app and JSON API through FastAPI's TestClient: flows, status codes and the security checks."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from rlhf.errors import UserError
from rlhf.labeling.app import create_app
from rlhf.labeling.security import SECRET_ENV, load_or_create_secret
from rlhf.labeling.store import Store, TaskSpec

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def env(tmp_path: Path) -> dict:
    store = Store(tmp_path / "labels.db")
    store.add_tasks(
        [
            TaskSpec("pairwise", f"Prompt {EVIL}", [f"first {EVIL}", "second & <b>bold</b>"], {}, 2),
            TaskSpec("ranking", "Rank these", ["r0", "r1", "r2"], {}, 2),
        ]
    )
    labeler, admin = store.create_user("lab", "labeler"), store.create_user("boss", "admin")
    return {"store": store, "labeler": labeler, "admin": admin, "secret": os.urandom(32).hex().encode()}


def client(env: dict, **kw: object) -> TestClient:
    base_url = kw.pop("base_url", "http://testserver")
    app = create_app(env["store"], env["secret"], gold_rate=0.0, **{"rate_per_s": 1000.0, "burst": 1000, **kw})
    return TestClient(app, base_url=base_url, follow_redirects=False)


def bearer(user: object) -> dict:
    return {"Authorization": f"Bearer {user.api_token}"}


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(c: TestClient, new_user: object) -> str:
    page = c.get(f"/invite/{new_user.invite_token}")
    assert page.status_code == 200
    r = c.post(f"/invite/{new_user.invite_token}", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    return r.headers["set-cookie"]


# -- API flow ----------------------------------------------------------------------------------------------------


def test_api_next_submit_idempotent_and_done(env: dict) -> None:
    c = client(env)
    h = bearer(env["labeler"])
    task = c.get("/api/tasks/next", headers=h).json()["task"]
    assert task["kind"] == "pairwise" and [r["label"] for r in task["responses"]] == ["A", "B"]
    body = {"assignment_id": task["assignment_id"], "client_id": "k1", "choice": "A", "strength": "better",
            "time_spent_ms": 1234}  # fmt: skip
    first = c.post("/api/judgments", json=body, headers=h)
    assert first.status_code == 201 and first.json()["created"] is True
    again = c.post("/api/judgments", json=body, headers=h)
    assert again.status_code == 200 and again.json()["judgment_id"] == first.json()["judgment_id"]
    assert len(env["store"].judgments()) == 1
    stored = env["store"].judgments()[0]
    assert stored.time_spent_ms == 1234 and stored.raw == {"choice": "A", "strength": "better"}

    ranking = c.get("/api/tasks/next", headers=h).json()["task"]
    assert ranking["kind"] == "ranking"
    r = c.post("/api/judgments", headers=h, json={"assignment_id": ranking["assignment_id"], "client_id": "k2",
                                                  "ranks": [1, 1, 3]})  # fmt: skip
    assert r.status_code == 201
    done = c.get("/api/tasks/next?progress=true", headers=h).json()
    assert done["task"] is None and done["progress"]["my_judgments"] == 2

    conflict = c.post("/api/judgments", headers=h, json={**body, "client_id": "k3"})
    assert conflict.status_code == 409 and conflict.json()["field"] == "supersedes"
    fix = c.post("/api/judgments", headers=h, json={**body, "client_id": "k4", "choice": "tie", "strength": None,
                                                    "supersedes": first.json()["judgment_id"]})  # fmt: skip
    assert fix.status_code == 201

    export = c.get("/api/export", headers=bearer(env["admin"]))
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(x) for x in export.text.splitlines()]
    assert len(rows) == 2 and all(r["group_id"] for r in rows)  # the pairwise answer is now a tie: no pair
    raw = c.get("/api/export?what=raw", headers=bearer(env["admin"])).text.splitlines()
    assert len(raw) == 3
    assert c.get("/api/stats", headers=bearer(env["admin"])).json()["progress"]["judgments"] == 3


def test_openapi_documents_the_api(env: dict) -> None:
    spec = client(env).get("/openapi.json").json()
    assert {"/api/tasks/next", "/api/judgments", "/api/export"} <= set(spec["paths"])
    assert "201" in spec["paths"]["/api/judgments"]["post"]["responses"]


# -- security ----------------------------------------------------------------------------------------------------


def test_no_auth_401_wrong_role_403(env: dict) -> None:
    c = client(env)
    assert c.get("/api/tasks/next").status_code == 401
    assert c.get("/api/tasks/next", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/api/tasks/next", headers={"Authorization": "Basic abc"}).status_code == 401
    assert c.get("/api/tasks/next", headers=bearer(env["labeler"])).status_code == 200
    assert c.get("/api/export", headers=bearer(env["labeler"])).status_code == 403
    assert c.get("/api/stats", headers=bearer(env["labeler"])).status_code == 403
    assert c.get("/label").status_code == 401
    assert c.get("/admin").status_code == 401
    sign_in(c, env["labeler"])
    assert c.get("/admin").status_code == 403
    assert c.get("/label").status_code == 200


def test_invite_is_one_time_and_cookie_is_hardened(env: dict) -> None:
    c = client(env)
    cookie = sign_in(c, env["labeler"])
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower() and "secure" not in cookie.lower()
    again = client(env).get(f"/invite/{env['labeler'].invite_token}")
    assert again.status_code == 403 and "used or expired" in again.text
    # Behind https the cookie is Secure.
    https = client(env, base_url="https://testserver")
    assert "secure" in sign_in(https, env["admin"]).lower()


def test_forms_need_the_csrf_token(env: dict) -> None:
    c = client(env)
    # The sign-in form itself carries a token bound to the invite.
    assert c.post(f"/invite/{env['labeler'].invite_token}", data={}).status_code == 403
    assert c.post(f"/invite/{env['labeler'].invite_token}", data={"csrf_token": "forged"}).status_code == 403
    sign_in(c, env["labeler"])
    page = c.get("/label").text
    aid = re.search(r'name="assignment_id" value="(\d+)"', page).group(1)
    form = {"assignment_id": aid, "client_id": "web-x", "choice": "A", "strength": "better"}
    assert c.post("/label", data=form).status_code == 403
    assert c.post("/label", data={**form, "csrf_token": "wrong"}).status_code == 403
    assert env["store"].judgments() == []
    ok = c.post("/label", data={**form, "csrf_token": csrf_of(page)})
    assert ok.status_code == 303 and len(env["store"].judgments()) == 1
    assert c.post("/logout", data={}).status_code == 403

    admin = client(env)
    sign_in(admin, env["admin"])
    admin_page = admin.get("/admin")
    assert admin.post("/admin/export", data={"what": "pairs"}).status_code == 403
    r = admin.post("/admin/export", data={"what": "raw", "csrf_token": csrf_of(admin_page.text)})
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]


def test_oversized_and_malformed_bodies(env: dict) -> None:
    c = client(env, max_body_bytes=2048)
    h = bearer(env["labeler"])
    aid = c.get("/api/tasks/next", headers=h).json()["task"]["assignment_id"]
    big = c.post("/api/judgments", headers=h, json={"assignment_id": aid, "client_id": "x", "note": "n" * 5000})
    assert big.status_code == 413 and "too large" in big.json()["detail"]
    streamed = c.post("/api/judgments", headers={**h, "content-type": "application/json"},
                      content=iter([b'{"note": "', b"n" * 4000, b'"}']))  # fmt: skip
    assert streamed.status_code == 413
    broken = c.post("/api/judgments", headers={**h, "content-type": "application/json"}, content=b"{not json")
    assert broken.status_code == 422 and "json" in broken.json()["message"].lower()
    missing = c.post("/api/judgments", headers=h, json={"client_id": "x", "choice": "A"})
    assert missing.status_code == 422 and "assignment_id" in missing.json()["message"]
    wrong = c.post("/api/judgments", headers=h, json={"assignment_id": aid, "client_id": "x", "choice": "C"})
    assert wrong.status_code == 422 and "choice" in wrong.json()["message"]
    extra = c.post("/api/judgments", headers=h, json={"assignment_id": aid, "client_id": "x", "hack": 1})
    assert extra.status_code == 422 and "hack" in extra.json()["message"]
    # Valid JSON that the store refuses: 422 naming the field.
    both = c.post("/api/judgments", headers=h, json={"assignment_id": aid, "client_id": "x", "choice": "A"})
    assert both.status_code == 422 and both.json()["field"] == "strength"
    assert c.post("/api/judgments", headers=h, json={"assignment_id": 999, "client_id": "y", "choice": "tie"}).status_code == 404


def test_model_output_is_rendered_inert(env: dict) -> None:
    c = client(env)
    sign_in(c, env["labeler"])
    page = c.get("/label")
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text
    assert "second &amp; &lt;b&gt;bold&lt;/b&gt;" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    # The only script on the page is our static file.
    assert re.findall(r"<script[^>]*>", page.text) == ['<script src="/static/label.js" defer>']


def test_rate_limit_answers_429(env: dict) -> None:
    c = client(env, rate_per_s=0.5, burst=3)
    h = bearer(env["labeler"])
    codes = [c.get("/api/tasks/next", headers=h).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    limited = c.get("/api/tasks/next", headers=h)
    assert "rate limit" in limited.json()["detail"] and int(limited.headers["retry-after"]) >= 1
    # Limits are per user: the admin is not affected.
    assert c.get("/api/stats", headers=bearer(env["admin"])).status_code == 200


def test_pages_label_both_kinds_and_correct(env: dict) -> None:
    c = client(env)
    sign_in(c, env["labeler"])
    page = c.get("/label").text
    aid = re.search(r'name="assignment_id" value="(\d+)"', page).group(1)
    cid = re.search(r'name="client_id" value="([^"]+)"', page).group(1)
    form = {"csrf_token": csrf_of(page), "assignment_id": aid, "client_id": cid, "choice": "B", "strength": "much_better",
            "time_spent_ms": "800", "action": "answer"}  # fmt: skip
    r = c.post("/label", data=form)
    assert r.status_code == 303 and "saved=" in r.headers["location"]
    assert c.post("/label", data=form).status_code == 303  # a double submit stores nothing new
    assert len(env["store"].judgments()) == 1
    ranking = c.get(r.headers["location"]).text
    assert 'data-kind="ranking"' in ranking and f'data-saved-draft="rlhf-draft:1:{aid}:0"' in ranking
    assert f'href="/label/{aid}"' in ranking  # "change that answer"
    aid2 = re.search(r'name="assignment_id" value="(\d+)"', ranking).group(1)
    cid2 = re.search(r'name="client_id" value="([^"]+)"', ranking).group(1)
    bad = c.post("/label", data={"csrf_token": csrf_of(ranking), "assignment_id": aid2, "client_id": cid2,
                                 "rank": ["1", "", "2"]})  # fmt: skip
    assert bad.status_code == 422 and "every response a rank" in bad.text
    ok = c.post("/label", data={"csrf_token": csrf_of(ranking), "assignment_id": aid2, "client_id": cid2,
                                "rank": ["2", "1", "3"]})  # fmt: skip
    assert ok.status_code == 303
    assert "Nothing left to label" in c.get("/label").text
    # Correct the first answer: the page carries supersedes, the new row points at the old one.
    fix_page = c.get(f"/label/{aid}").text
    sup = re.search(r'name="supersedes" value="(\d+)"', fix_page).group(1)
    cid3 = re.search(r'name="client_id" value="([^"]+)"', fix_page).group(1)
    c.post("/label", data={"csrf_token": csrf_of(fix_page), "assignment_id": aid, "client_id": cid3, "supersedes": sup,
                           "action": "skip", "skip_reason": "changed my mind"})  # fmt: skip
    kinds = [(j.kind, j.supersedes_id) for j in env["store"].judgments()]
    assert kinds == [("pairwise", None), ("ranking", None), ("skip", int(sup))]


def test_signing_key_file_is_private_and_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    key = load_or_create_secret(url)
    path = tmp_path / "labels.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) >= 32
    assert load_or_create_secret(url) == key  # generated once
    path.chmod(0o644)
    with pytest.raises(UserError, match="chmod 600"):
        load_or_create_secret(url)
    monkeypatch.setenv(SECRET_ENV, "x" * 40)
    assert load_or_create_secret(url) == b"x" * 40
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(UserError, match="too short"):
        load_or_create_secret(url)


# -- issue items 8 and 10 through the app ---------------------------------------------------------------------------


def test_out_of_range_ids_are_422_not_500(env: dict) -> None:
    c = client(env)
    h = bearer(env["labeler"])
    aid = c.get("/api/tasks/next", headers=h).json()["task"]["assignment_id"]
    for value in (2**31, 2**63, 2**64, -1, True):
        r = c.post("/api/judgments", headers=h, json={"assignment_id": value, "client_id": "x", "choice": "tie"})
        assert r.status_code == 422 and "assignment_id" in r.json()["message"], value
        r = c.post("/api/judgments", headers=h, json={"assignment_id": aid, "client_id": "x", "choice": "tie",
                                                      "supersedes": value})  # fmt: skip
        assert r.status_code == 422, value
    nul = c.post("/api/judgments", headers=h, json={"assignment_id": aid, "client_id": "x\u0000", "choice": "tie"})
    assert nul.status_code == 422 and nul.json()["field"] == "client_id"
    sign_in(c, env["labeler"])
    assert c.get(f"/label/{2**63}").status_code == 422
    assert c.get(f"/label?saved={2**64}").status_code == 422
    page = c.get("/label").text
    r = c.post("/label", data={"csrf_token": csrf_of(page), "assignment_id": str(2**63), "client_id": "w", "choice": "tie"})
    assert r.status_code == 422 and "assignment_id must be an integer" in r.text
    assert env["store"].judgments() == []


def test_booleans_are_not_ranks(env: dict) -> None:
    c = client(env)
    h = bearer(env["labeler"])
    first = c.get("/api/tasks/next", headers=h).json()["task"]
    c.post("/api/judgments", headers=h, json={"assignment_id": first["assignment_id"], "client_id": "p", "choice": "tie"})
    ranking = c.get("/api/tasks/next", headers=h).json()["task"]
    assert ranking["kind"] == "ranking"
    for ranks in ([True, True, True], [2, 2, 2], [1, 1, 2]):
        r = c.post("/api/judgments", headers=h, json={"assignment_id": ranking["assignment_id"], "client_id": "r",
                                                      "ranks": ranks})  # fmt: skip
        assert r.status_code == 422, ranks
    assert [j.kind for j in env["store"].judgments()] == ["pairwise"]


def test_form_uploads_are_refused_and_notes_are_kept(env: dict) -> None:
    c = client(env)
    sign_in(c, env["labeler"])
    page = c.get("/label").text
    aid = re.search(r'name="assignment_id" value="(\d+)"', page).group(1)
    form = {"csrf_token": csrf_of(page), "assignment_id": aid, "client_id": "w1", "action": "skip"}
    r = c.post("/label", data=form, files={"skip_reason": ("evil.txt", b"contents", "text/plain")})
    assert r.status_code == 422 and "not a file" in r.text
    assert env["store"].judgments() == []
    tie = {**form, "action": "answer", "choice": "tie", "strength": "better", "note": "both fine"}
    assert c.post("/label", data=tie).status_code == 303  # the always-present strength radio is not part of a tie
    assert env["store"].judgments()[0].raw == {"choice": "tie", "strength": None, "note": "both fine"}


# -- issue #21 item 2: chat turns, Markdown, positional rank fields, guidelines -----------------------------------

CHATML = ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
          "<|im_start|>assistant\n4.<|im_end|>\n<|im_start|>user\nAnd **times** 3?<|im_end|>\n<|im_start|>assistant\n")


def roles_of(html: str) -> list[str]:
    return re.findall(r'<div class="turn[^"]*" data-role="([^"]*)"', html)


@pytest.mark.parametrize(
    ("prompt", "source", "roles"),
    [
        (CHATML, {}, ["system", "user", "assistant", "user"]),  # the empty generation prompt at the end is dropped
        ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n", {}, ["user"]),
        ("<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n<start_of_turn>user\nQ"
         "<end_of_turn>\n<start_of_turn>model\n", {}, ["user", "assistant", "user"]),
        ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and then?", {}, ["user", "assistant", "user"]),
        ("User: a\n\nAssistant: b", {"prompt_messages": [{"role": "user", "content": "a"},
                                                          {"role": "assistant", "content": "b"}]}, ["user", "assistant"]),
        ("junk <|im_start|>user\nHi<|im_end|>", {}, ["text", "user"]),  # text outside the markers is kept
        ("Just a plain prompt.", {}, ["prompt"]),
    ],
)  # fmt: skip
def test_prompts_are_shown_as_chat_turns(tmp_path: Path, prompt: str, source: dict, roles: list[str]) -> None:
    store = Store(tmp_path / "labels.db")
    store.add_tasks([TaskSpec("pairwise", prompt, ["a", "b"], source, 1)])
    env = {"store": store, "labeler": store.create_user("lab", "labeler"), "secret": os.urandom(32).hex().encode()}
    c = client(env)
    sign_in(c, env["labeler"])
    page = c.get("/label").text
    assert roles_of(page) == roles
    task = c.get("/api/tasks/next", headers=bearer(env["labeler"])).json()["task"]
    assert [t["role"] for t in task["prompt_turns"]] == roles
    assert "<|im_start|>" not in page.split('id="prompt"', 1)[1].split("</section>", 1)[0]


def test_turn_contents_and_responses_are_markdown(tmp_path: Path) -> None:
    store = Store(tmp_path / "labels.db")
    code = "```python\nprint('<b>hi</b>')\n```"
    store.add_tasks([TaskSpec("pairwise", CHATML, [f"Here:\n\n{code}\n\nwith **bold** and a [link](https://example.org).",
                                                   "line one\nline two"], {}, 1)])  # fmt: skip
    env = {"store": store, "labeler": store.create_user("lab", "labeler"), "secret": os.urandom(32).hex().encode()}
    c = client(env)
    sign_in(c, env["labeler"])
    page = c.get("/label").text
    assert "And <strong>times</strong> 3?" in page  # a prompt turn's Markdown
    assert '<pre><code class="language-python">print(\'&lt;b&gt;hi&lt;/b&gt;\')\n</code></pre>' in page
    assert "<strong>bold</strong>" in page
    assert '<a href="https://example.org" rel="nofollow noopener noreferrer" target="_blank">link</a>' in page
    assert "line one<br />\nline two" in page  # plain text keeps its line breaks
    assert '<details class="plain"><summary>plain text</summary><pre>line one\nline two</pre></details>' in page


def test_rank_fields_are_read_by_shown_position(env: dict) -> None:
    """The page names rank fields rank_<shown position>: after a drag the fields come in page order, not shown order."""
    c = client(env)
    sign_in(c, env["labeler"])
    page = c.get("/label").text
    aid = re.search(r'name="assignment_id" value="(\d+)"', page).group(1)
    c.post("/label", data={"csrf_token": csrf_of(page), "assignment_id": aid, "client_id": "p", "choice": "tie"})
    ranking = c.get("/label").text
    assert re.findall(r'<select name="(rank_\d)"', ranking) == ["rank_0", "rank_1", "rank_2"]
    aid2 = re.search(r'name="assignment_id" value="(\d+)"', ranking).group(1)
    base = [("csrf_token", csrf_of(ranking)), ("assignment_id", aid2), ("client_id", "r")]
    for bad in ([("rank_0", "1"), ("rank_2", "2")], [("rank_0", "1"), ("rank_0", "2"), ("rank_1", "3")]):
        r = c.post("/label", content=urlencode(base + bad), headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 422 and "rank_0..rank_" in r.text, bad
    scrambled = [("rank_2", "1"), ("rank_0", "3"), ("rank_1", "2")]  # the page order after a drag
    r = c.post("/label", content=urlencode(base + scrambled), headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303
    (judgment,) = [j for j in env["store"].judgments() if j.kind == "ranking"]
    assert judgment.raw == {"ranks": [3, 2, 1]}


def test_guidelines_cli_page_api_and_link(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rlhf.labeling.cli import main

    db = str(tmp_path / "labels.db")
    store = Store(db)
    store.add_tasks([TaskSpec("pairwise", "p", ["a", "b"], {}, 1)])
    env = {"store": store, "labeler": store.create_user("lab", "labeler"), "secret": os.urandom(32).hex().encode()}
    c = client(env)
    sign_in(c, env["labeler"])
    assert "No guidelines have been set" in c.get("/guidelines").text
    assert c.get("/api/guidelines", headers=bearer(env["labeler"])).json()["text"] is None
    assert main(["label", "guidelines", "--db", db]) == 1 and "no guidelines set" in capsys.readouterr().err

    md = tmp_path / "guidelines.md"
    md.write_text(f"# How to judge\n\nPrefer **correct** answers.\n\n{EVIL}\n\n[bad](javascript:alert(1))\n")
    assert main(["label", "guidelines", "--db", db, "--file", str(md)]) == 0
    assert "version 1" in capsys.readouterr().out
    page = c.get("/guidelines").text
    assert "<h1>How to judge</h1>" in page and "<strong>correct</strong>" in page
    assert "<script>alert" not in page and "<img" not in page and "javascript:" not in page.split("[bad](")[0]
    assert '<a href="javascript' not in page and "&lt;script&gt;" in page
    task_page = c.get("/label").text
    assert 'href="/guidelines"' in task_page and "labeling guidelines" in task_page
    api = c.get("/api/guidelines", headers=bearer(env["labeler"])).json()
    assert api["text"] == md.read_text() and api["version"] == 1
    assert main(["label", "guidelines", "--db", db]) == 0 and capsys.readouterr().out == md.read_text() + "\n"

    # Durable: a new process (a new Store on the same file) sees them; bad files are one-line errors, nothing stored.
    assert Store(db).guidelines()[0] == md.read_text()
    empty = tmp_path / "empty.md"
    empty.write_text("  \n")
    assert main(["label", "guidelines", "--db", db, "--file", str(empty)]) == 2
    assert main(["label", "guidelines", "--db", db, "--file", str(tmp_path / "missing.md")]) == 2
    (tmp_path / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    assert main(["label", "guidelines", "--db", db, "--file", str(tmp_path / "latin1.md")]) == 2
    err = capsys.readouterr().err
    assert "empty.md: empty" in err and "missing.md: file not found" in err and "latin1.md:1: not UTF-8" in err
    assert Store(db).guidelines()[1] == 1
    assert main(["label", "guidelines", "--db", db, "--clear"]) == 0 and Store(db).guidelines() is None
    assert "No guidelines have been set" in c.get("/guidelines").text


def test_guidelines_table_is_added_to_an_older_database(db_url: str) -> None:
    """A store made before guidelines existed (no table) gets the table on open; its data stays."""
    from sqlalchemy import inspect, text

    old = Store(db_url)
    old.add_tasks([TaskSpec("pairwise", "p", ["a", "b"], {}, 1)])
    with old.engine.begin() as conn:
        conn.execute(text("DROP TABLE guidelines"))
    assert "guidelines" not in inspect(old.engine).get_table_names()
    old.close()
    store = Store(db_url)
    assert store.guidelines() is None and len(store.tasks()) == 1
    assert store.set_guidelines("Be kind.") == 1 and store.set_guidelines("Be precise.") == 2
    assert store.guidelines()[:2] == ("Be precise.", 2)
    with pytest.raises(UserError, match="NUL"):
        store.set_guidelines("a\x00b")
    store.close()


def test_chat_samples_become_tasks_shown_as_turns_and_exported_as_messages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`rlhf sample` keeps a prompt that is a list of messages: add-tasks stores it (rendered text for the store,
    the messages in the source), the page shows the turns, the export writes a conversational row."""
    from rlhf.labeling.cli import main
    from rlhf.labeling.export import build_export

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <b>there</b>"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a **colour**."}]  # fmt: skip
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        json.dumps({"prompt_id": "c1", "prompt": chat, "responses": ["Red.", "Blue."]}) + "\n"
        + json.dumps({"prompt_id": "bad", "prompt": [{"role": "user"}], "responses": ["x", "y"]}) + "\n"
    )  # fmt: skip
    db = str(tmp_path / "labels.db")
    assert main(["label", "add-tasks", "--db", db, str(samples), "--skip-bad"]) == 0
    assert "samples.jsonl:2: field 'prompt': a list of messages must hold objects" in capsys.readouterr().err
    store = Store(db)
    (task,) = store.tasks()
    assert task.source["prompt_messages"] == chat and task.prompt.startswith("System: Be brief.")
    env = {"store": store, "labeler": store.create_user("lab", "labeler"), "secret": os.urandom(32).hex().encode()}
    c = client(env)
    sign_in(c, env["labeler"])
    page = c.get("/label").text
    assert roles_of(page) == ["system", "user", "assistant", "user"]
    assert "Hi &lt;b&gt;there&lt;/b&gt;" in page and "Name a <strong>colour</strong>." in page
    aid = re.search(r'name="assignment_id" value="(\d+)"', page).group(1)
    c.post("/label", data={"csrf_token": csrf_of(page), "assignment_id": aid, "client_id": "w", "choice": "A",
                           "strength": "better"})  # fmt: skip
    (row,), _raw, _meta = build_export(store)
    assert row["prompt"] == chat and row["chosen"][0]["role"] == "assistant"
