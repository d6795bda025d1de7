"""The labeling web app: server-rendered pages for people, a JSON API for scripts.

Pages sign in with a one-time invite link and then use a signed HttpOnly, SameSite=Lax session cookie (Secure when
served over https) naming a server-side session (logout and `rlhf label revoke` end it); every form carries the
session's CSRF token and must come from our own origin (`Sec-Fetch-Site` / `Origin`). The API (`/api/...`) takes
only `Authorization: Bearer TOKEN`, never the cookie, so it needs no CSRF token. Every judgment is one transaction
in the store and is idempotent by `client_id`.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the Annotated[..., Depends(closure)] hints.
import json
import re
from datetime import timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.concurrency import run_in_threadpool

from rlhf.errors import UserError
from rlhf.labeling import agreement
from rlhf.labeling.export import build_export
from rlhf.labeling.render import markdown, prompt_turns
from rlhf.labeling.security import LimitsAndHeaders, RateLimiter, Sessions, csrf_ok, install_log_redaction, same_origin
from rlhf.labeling.store import FLAGS, MAX_ID, Answer, Shown, Store, StoreError, UserInfo

HERE = FilePath(__file__).parent
COOKIE = "rlhf_session"
Id = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]  # the INTEGER columns' range: larger values are refused with 422


class PageError(Exception):
    """An error shown as an HTML page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# -- API models (their Field descriptions show in the OpenAPI page) --------------------------------------------


class JudgmentIn(BaseModel):
    """One answer. Give exactly one of `choice` (pairwise), `ranks` (ranking), `skip_reason` or `flag`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"assignment_id": 7, "client_id": "a1b2", "choice": "A", "strength": "better", "time_spent_ms": 5400},
                {"assignment_id": 8, "client_id": "c3d4", "ranks": [2, 1, 3, 3]},
                {"assignment_id": 9, "client_id": "e5f6", "skip_reason": "I cannot judge code"},
            ]
        },
    )

    assignment_id: Id = Field(description="from GET /api/tasks/next")
    client_id: str = Field(min_length=1, max_length=100, description="your id for this submission (idempotency)")
    choice: Literal["A", "B", "tie", "both_bad"] | None = Field(None, description="pairwise: A = first shown")
    strength: Literal["much_better", "better", "slightly_better"] | None = Field(None, description="with A or B")
    ranks: list[StrictInt] | None = Field(None, max_length=9, description="ranking: rank per shown response, 1 = best")
    skip_reason: str | None = Field(None, max_length=500)
    flag: Literal["unsafe", "broken"] | None = None
    note: str | None = Field(None, max_length=1000)
    time_spent_ms: StrictInt = Field(0, ge=0, le=86_400_000)
    supersedes: Id | None = Field(None, description="judgment id this answer corrects")


class JudgmentOut(BaseModel):
    judgment_id: int
    created: bool
    task_id: int
    kind: str


def shown_json(s: Shown, messages: list | None) -> dict[str, Any]:
    labels = "AB" if s.kind == "pairwise" else "123456789"
    return {
        "assignment_id": s.assignment_id,
        "task_id": s.task_id,
        "kind": s.kind,
        "prompt": s.prompt,
        # what the page shows: the prompt as chat turns (one turn with role "prompt" for plain text)
        "prompt_turns": [{"role": t.role, "content": t.content} for t in prompt_turns(s.prompt, {"prompt_messages": messages})],
        "responses": [{"label": labels[p], "text": t} for p, t in enumerate(s.responses)],
        "current_judgment_id": s.current_judgment_id,
    }


def create_app(
    store: Store,
    secret: bytes,
    *,
    rate_per_s: float = 10.0,
    burst: int = 60,
    gold_rate: float = 0.1,
    secure_cookies: bool | None = None,
    max_body_bytes: int = 64 * 1024,
    session_days: int = 14,
) -> FastAPI:
    """The app. secure_cookies=None: Secure cookies when the request came over https (behind a TLS proxy, serve
    with --trusted-proxy so its X-Forwarded-Proto counts)."""
    if not 0.0 <= gold_rate <= 1.0:
        raise UserError(f"--gold-rate must be a probability in [0, 1], got {gold_rate}")
    if max_body_bytes < 1024:
        raise UserError(f"--max-body-kb must be >= 1, got {max_body_bytes / 1024:g}")
    if rate_per_s < 0:
        raise UserError(f"--rate-limit must be >= 0 requests per second (0: off), got {rate_per_s}")
    if burst < 1:
        raise UserError(f"--burst must be >= 1, got {burst}")
    if session_days < 1:
        raise UserError(f"session_days must be >= 1, got {session_days}")
    install_log_redaction()  # invite tokens are in request paths: keep them out of uvicorn's logs
    app = FastAPI(
        title="rlhf labeling",
        description="Preference collection. Scripts authenticate with `Authorization: Bearer TOKEN` "
        "(printed by `rlhf label add-user`). See docs/labeling.md.",
    )
    app.add_middleware(LimitsAndHeaders, max_bytes=max_body_bytes)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)  # model output is untrusted
    env.filters["markdown"] = markdown  # the one way to put HTML from text on a page: sanitised (render.py)
    templates = Jinja2Templates(env=env)
    sessions = Sessions(secret, session_days * 86400)
    limiter = RateLimiter(rate_per_s, burst)
    bearer = HTTPBearer(auto_error=False, description="API token printed by `rlhf label add-user`")

    def limit(key: Any) -> None:
        wait = limiter.check(key)
        if wait > 0:
            raise HTTPException(
                429, f"rate limit: too many requests, retry in {wait:.1f} s", headers={"Retry-After": str(max(1, round(wait)))}
            )

    # -- error handling --------------------------------------------------------------------------------------

    def page(request: Request, template: str, code: int = 200, /, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, template, ctx, status_code=code)

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> HTMLResponse:
        return page(request, "error.html", exc.status, status=exc.status, message=exc.message)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=exc.status)
        return page(request, "error.html", exc.status, status=exc.status, message=str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in errors]
        detail = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in errors]
        return JSONResponse({"detail": detail, "message": "; ".join(parts)}, status_code=422)

    # -- who is asking ---------------------------------------------------------------------------------------

    def address(request: Request) -> Any:
        # The peer address; uvicorn replaces it with X-Forwarded-For only from a --trusted-proxy.
        return ("ip", request.client.host if request.client else "?")

    def api_user(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> UserInfo:
        if creds is None or creds.scheme.lower() != "bearer":
            limit(address(request))  # anonymous and failed requests count against the client address
            raise HTTPException(401, "missing token: send Authorization: Bearer TOKEN", headers={"WWW-Authenticate": "Bearer"})
        # Looked up on every request (no cache): a revoked token or a deactivated user stops working at once.
        user = store.user_by_api_token(creds.credentials)
        if user is None:
            limit(address(request))
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
        limit(user.id)
        return user

    def api_admin(user: Annotated[UserInfo, Depends(api_user)]) -> UserInfo:
        if user.role != "admin":
            raise HTTPException(403, "admins only")
        return user

    def session_user(request: Request) -> tuple[UserInfo, str]:
        data = sessions.read(request.cookies.get(COOKIE))
        user = store.session_user(data["s"]) if data else None
        if user is None:
            limit(address(request))
            raise PageError(
                401, "You are not signed in. Open your invite link (an admin makes one with `rlhf label invite NAME`)."
            )
        limit(user.id)
        return user, data["c"]

    def session_admin(request: Request) -> tuple[UserInfo, str]:
        user, csrf = session_user(request)
        if user.role != "admin":
            raise PageError(403, "This page is for admins.")
        return user, csrf

    def check_origin(request: Request) -> None:
        if not same_origin(request.headers):
            raise PageError(403, "Cross-site request refused: use the form on this site's own page.")

    async def checked_form(request: Request, csrf: str) -> Any:
        check_origin(request)
        form = await request.form()
        if not csrf_ok(csrf, form.get("csrf_token")):
            raise PageError(403, "Missing or invalid CSRF token: reload the page and try again.")
        return form

    def secure(request: Request) -> bool:
        return secure_cookies if secure_cookies is not None else request.url.scheme == "https"

    # -- pages -----------------------------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        user, _ = session_user(request)
        return RedirectResponse("/admin" if user.role == "admin" else "/label", status_code=303)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/invite/{token}", include_in_schema=False)
    def invite_page(request: Request, token: str) -> HTMLResponse:
        limit(address(request))
        user = store.invite_user(token)
        if user is None:
            raise PageError(403, "This invite link is invalid, used or expired. Ask an admin for a new one.")
        # Signing in needs a click (POST): link previewers that fetch the URL must not use up the invite.
        return page(request, "invite.html", name=user.name, role=user.role, token=token, csrf=sessions.invite_csrf(token))

    @app.post("/invite/{token}", include_in_schema=False)
    async def invite_sign_in(request: Request, token: str) -> Response:
        limit(address(request))
        # Login CSRF: the HMAC below proves the form came from the invite page, but an attacker can load their own
        # invite page and post it from their site, signing the victim in as the attacker. Same-origin only.
        check_origin(request)
        form = await request.form()
        if not csrf_ok(sessions.invite_csrf(token), form.get("csrf_token")):
            raise PageError(403, "Missing or invalid CSRF token: open the invite link again.")
        user = await run_in_threadpool(store.redeem_invite, token)
        if user is None:
            raise PageError(403, "This invite link is invalid, used or expired. Ask an admin for a new one.")
        session = await run_in_threadpool(store.create_session, user.id, timedelta(seconds=sessions.max_age_s))
        value, _ = sessions.new(session)
        resp = RedirectResponse("/admin" if user.role == "admin" else "/label", status_code=303)
        resp.set_cookie(
            COOKIE, value, max_age=sessions.max_age_s, httponly=True, samesite="lax", secure=secure(request), path="/"
        )
        return resp

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        _user, csrf = await run_in_threadpool(session_user, request)
        await checked_form(request, csrf)
        await run_in_threadpool(store.end_session, sessions.read(request.cookies.get(COOKIE))["s"])
        resp = page(request, "error.html", 200, status=200, message="Signed out.")
        resp.delete_cookie(COOKIE, path="/")
        return resp

    def draft_key(user_id: int, assignment_id: int, supersedes: int | None) -> str:
        return f"rlhf-draft:{user_id}:{assignment_id}:{supersedes or 0}"

    def label_page(
        request: Request, user: UserInfo, csrf: str, shown: Shown | None, saved: int | None, sup: int | None
    ) -> Response:
        progress = store.progress(user.id)
        ctx = {"user": user, "csrf": csrf, "progress": progress, "flags": FLAGS, "saved": saved}
        if saved is not None:  # the page after a submission: the script clears that answer's draft
            ctx["saved_draft"] = draft_key(user.id, saved, sup)
        if shown is None:
            return page(request, "done.html", **ctx)
        supersedes = shown.current_judgment_id
        ctx |= {
            "shown": shown,
            "turns": prompt_turns(shown.prompt, {"prompt_messages": store.prompt_messages(shown.task_id)}),
            "has_guidelines": store.guidelines() is not None,
            "supersedes": supersedes,
            "client_id": f"web-{shown.assignment_id}-{supersedes or 0}",
            "draft_key": draft_key(user.id, shown.assignment_id, supersedes),
        }
        return page(request, "label_pairwise.html" if shown.kind == "pairwise" else "label_ranking.html", **ctx)

    @app.get("/label", include_in_schema=False)
    def label(
        request: Request,
        saved: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
        sup: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
    ) -> Response:
        user, csrf = session_user(request)
        if user.role not in ("labeler", "admin"):
            raise PageError(403, "This account cannot label.")
        shown = store.next_assignment(user.id, gold_rate=gold_rate)
        return label_page(request, user, csrf, shown, saved, sup)

    @app.get("/label/{assignment_id}", include_in_schema=False)
    def label_again(request: Request, assignment_id: Annotated[int, Path(ge=0, le=MAX_ID)]) -> Response:
        user, csrf = session_user(request)
        return label_page(request, user, csrf, store.get_shown(user.id, assignment_id), None, None)

    @app.post("/label", include_in_schema=False)
    async def label_submit(request: Request) -> Response:
        user, csrf = await run_in_threadpool(session_user, request)
        form = await checked_form(request, csrf)
        ans = answer_from_form(form)
        record, _created = await run_in_threadpool(store.submit, user.id, ans)
        return RedirectResponse(f"/label?saved={record.assignment_id}&sup={ans.supersedes or 0}", status_code=303)

    @app.get("/guidelines", include_in_schema=False)
    def guidelines_page(request: Request) -> HTMLResponse:
        user, csrf = session_user(request)
        g = store.guidelines()
        return page(request, "guidelines.html", user=user, csrf=csrf, guidelines=g)

    @app.get("/admin", include_in_schema=False)
    def admin(request: Request) -> HTMLResponse:
        user, csrf = session_admin(request)
        return page(request, "admin.html", user=user, csrf=csrf, r=agreement.report(store), users=store.users())

    @app.post("/admin/export", include_in_schema=False)
    async def admin_export(request: Request) -> Response:
        _user, csrf = await run_in_threadpool(session_admin, request)
        form = await checked_form(request, csrf)
        return await run_in_threadpool(export_response, str(form.get("what", "pairs")))

    def export_response(what: str) -> Response:
        if what not in ("pairs", "raw", "meta"):
            raise HTTPException(422, "what must be pairs, raw or meta")
        rows, raw, meta = build_export(store)
        if what == "meta":
            body, name, mime = json.dumps(meta, indent=2) + "\n", "preferences.meta.json", "application/json"
        else:
            chosen = rows if what == "pairs" else raw
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen)
            name = "preferences.jsonl" if what == "pairs" else "preferences.raw.jsonl"
            mime = "application/x-ndjson"
        return Response(body, media_type=mime, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # -- JSON API --------------------------------------------------------------------------------------------

    @app.get("/api/tasks/next", tags=["api"])
    def api_next(user: Annotated[UserInfo, Depends(api_user)], progress: bool = False) -> dict[str, Any]:
        """Your open task, or a new one (`task` is null when nothing is left). Responses are in the order shown to
        you; answer by position ("A" = first). `progress=true` adds counts (a few more queries)."""
        shown = store.next_assignment(user.id, gold_rate=gold_rate)
        out: dict[str, Any] = {"task": shown_json(shown, store.prompt_messages(shown.task_id)) if shown else None}
        if progress:
            out["progress"] = store.progress(user.id)
        return out

    @app.post(
        "/api/judgments",
        tags=["api"],
        status_code=201,
        response_model=JudgmentOut,
        responses={200: {"description": "this client_id was already stored: nothing new written"}},
    )
    def api_judgment(body: JudgmentIn, user: Annotated[UserInfo, Depends(api_user)]) -> Response:
        """Store one judgment (201). Sending the same `client_id` again returns 200 and stores nothing new."""
        record, created = store.submit(user.id, Answer(**body.model_dump()))
        out = JudgmentOut(judgment_id=record.id, created=created, task_id=record.task_id, kind=record.kind)
        return JSONResponse(out.model_dump(), status_code=201 if created else 200)

    @app.get("/api/guidelines", tags=["api"])
    def api_guidelines(_user: Annotated[UserInfo, Depends(api_user)]) -> dict[str, Any]:
        """The labeling guidelines as Markdown (`text` is null when none are set; `rlhf label guidelines` sets
        them)."""
        g = store.guidelines()
        if g is None:
            return {"text": None, "version": None, "updated_at": None}
        return {"text": g[0], "version": g[1], "updated_at": g[2].isoformat()}

    @app.get("/api/export", tags=["api"])
    def api_export(_admin: Annotated[UserInfo, Depends(api_admin)], what: Literal["pairs", "raw", "meta"] = "pairs") -> Response:
        """Admins only. `pairs`: consensus pairs as TRL-style JSONL; `raw`: every judgment; `meta`: counts and
        Bayes-optimal accuracy of simulated labels."""
        return export_response(what)

    @app.get("/api/stats", tags=["api"])
    def api_stats(_admin: Annotated[UserInfo, Depends(api_admin)]) -> dict[str, Any]:
        """Admins only: progress, throughput and agreement (what the admin page shows)."""
        return json.loads(json.dumps(agreement.report(store), default=str))

    return app


def answer_from_form(form: Any) -> Answer:
    def text(name: str) -> str:
        value = form.get(name)
        if value is None:
            return ""
        if not isinstance(value, str):  # a file upload: refuse it rather than store its repr
            raise StoreError(f"{name} must be a text field, not a file", name)
        return value

    def num(name: str, default: int | None = None, value: Any = None) -> int | None:
        value = text(name) if value is None else value
        if value == "":
            return default
        if not isinstance(value, str):
            raise StoreError(f"{name} must be a text field, not a file", name)
        try:
            n = int(value)
        except ValueError:
            raise StoreError(f"{name} must be an integer, got {value[:50]!r}", name) from None
        if not 0 <= n <= MAX_ID:
            raise StoreError(f"{name} must be an integer 0..{MAX_ID}, got {value[:50]}", name)
        return n

    action = text("action") or "answer"
    ans = Answer(
        assignment_id=num("assignment_id") or 0,
        client_id=text("client_id"),
        time_spent_ms=min(num("time_spent_ms", 0) or 0, 86_400_000),
        supersedes=num("supersedes"),
    )
    if action == "skip":
        ans.skip_reason = text("skip_reason").strip() or "no reason given"  # the form's Skip button needs no reason
    elif action == "flag":
        ans.flag = text("flag")
        ans.note = text("note")
    elif ranks := form_ranks(form):
        if any(r == "" for r in ranks):
            raise StoreError("give every response a rank (1 = best; equal ranks for ties)", "ranks")
        ans.ranks = [num("ranks", value=r) for r in ranks]
    else:
        ans.choice = text("choice") or None
        # The strength radios are always on the page: they belong to the answer only with A or B.
        ans.strength = (text("strength") or None) if ans.choice in ("A", "B") else None
        ans.note = text("note") or None
        if ans.choice is None:
            raise StoreError("choose which response is better (or tie / both bad)", "choice")
    return ans


_RANK_FIELD = re.compile(r"rank_([0-9])")


def form_ranks(form: Any) -> list[Any]:
    """The page names each rank field by the response's shown position (`rank_0` = the first shown), because
    dragging reorders the cards and with them the fields' order in the form. Plain `rank` fields (in shown order)
    are read too. The positions must be exactly 0..k-1."""
    named = [(int(m.group(1)), v) for key, v in form.multi_items() if (m := _RANK_FIELD.fullmatch(key))]
    if not named:
        return form.getlist("rank")
    positions = sorted(p for p, _ in named)
    if positions != list(range(len(named))):
        raise StoreError(f"rank fields must be rank_0..rank_{len(named) - 1}, each once; got positions {positions}", "ranks")
    return [v for _, v in sorted(named, key=lambda pv: pv[0])]
