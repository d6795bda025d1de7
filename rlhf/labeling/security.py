"""Security bits of the labeling app: the signing key, session cookies, CSRF and same-origin checks, rate limits,
body limits, security headers on every response (5xx included), and keeping invite tokens out of the logs.

No secret lives in the repository: the signing key comes from $RLHF_LABEL_SECRET, or is generated on first start
and kept in a file created with mode 0600 (next to a SQLite database: labels.db -> labels.secret).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.engine import make_url
from starlette.exceptions import HTTPException

from rlhf.errors import UserError

SECRET_ENV = "RLHF_LABEL_SECRET"
MIN_SECRET_CHARS = 32


def default_secret_path(db_url: str) -> Path:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database:
        return Path(url.database).with_suffix(".secret")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "rlhf" / "labeling.secret"


def load_or_create_secret(db_url: str, path: str | Path | None = None) -> bytes:
    """The signing key: $RLHF_LABEL_SECRET, else the key file (created with 0600 on first start)."""
    env = os.environ.get(SECRET_ENV)
    if env:
        if len(env) < MIN_SECRET_CHARS:
            raise UserError(f"${SECRET_ENV} is too short: use at least {MIN_SECRET_CHARS} random characters")
        return env.encode("utf-8")
    p = Path(path) if path else default_secret_path(db_url)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL + mode 0600 at creation: the key is never readable by others, not even for a moment.
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another server created it just now: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        raise UserError(f"{p}: the signing key is readable by others (mode {mode:o}); run: chmod 600 {p}")
    key = p.read_text().strip()
    if len(key) < MIN_SECRET_CHARS:
        raise UserError(f"{p}: the signing key is too short; delete the file to generate a new one")
    return key.encode("utf-8")


class Sessions:
    """Signed session cookie values: {"s": session token, "c": CSRF token}. The session token names a server-side
    session record (Store.create_session), so logout and `rlhf label revoke` end it for every copy of the cookie;
    the signature only saves a database lookup for forged cookies. The CSRF token is random per session and must
    come back in every form (double-submit via the signed cookie)."""

    def __init__(self, secret: bytes, max_age_s: int):
        self._s = URLSafeTimedSerializer(secret, salt="rlhf-label-session")
        self._secret = secret
        self.max_age_s = max_age_s

    def new(self, session_token: str) -> tuple[str, str]:
        csrf = secrets.token_urlsafe(24)
        return self._s.dumps({"s": session_token, "c": csrf}), csrf

    def read(self, value: str | None) -> dict[str, Any] | None:
        if not value:
            return None
        try:
            data = self._s.loads(value, max_age=self.max_age_s)
        except (BadSignature, json.JSONDecodeError, UnicodeDecodeError):
            return None
        ok = isinstance(data, dict) and isinstance(data.get("s"), str) and isinstance(data.get("c"), str)
        return data if ok else None

    def invite_csrf(self, invite_token: str) -> str:
        """CSRF token for the sign-in form (there is no session yet): bound to the invite token."""
        return hmac.new(self._secret, b"invite:" + invite_token.encode(), hashlib.sha256).hexdigest()


def csrf_ok(expected: str | None, given: Any) -> bool:
    # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, so a 500, on a crafted form).
    return bool(expected) and isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def same_origin(headers: Any) -> bool:
    """Is this (form) POST from one of our own pages? Browsers send `Sec-Fetch-Site` (which page scripts cannot
    set): only same-origin, or "none" (typed by the user), passes. Without it, `Origin` must name this host. A
    request with neither is not a browser's cross-site form post (browsers send Origin on every POST)."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return origin != "null" and bool(netloc) and netloc.lower() == str(headers.get("host", "")).lower()


# -- logs ----------------------------------------------------------------------------------------------------------

_INVITE_IN_PATH = re.compile(r"(/invite/)[^\s\"']+")
REDACTED = "[redacted]"


class RedactInviteTokens(logging.Filter):
    """Invite links carry a one-time token in the path, and uvicorn logs every request path: anyone who reads the
    log could sign in as that user (the GET does not use the invite up). This rewrites `/invite/<token>` to
    `/invite/[redacted]` in the message and its arguments (uvicorn's access formatter needs the argument tuple)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _INVITE_IN_PATH.sub(r"\1" + REDACTED, record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_INVITE_IN_PATH.sub(r"\1" + REDACTED, a) if isinstance(a, str) else a for a in record.args)
        return True


LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
_REDACT = RedactInviteTokens()


def install_log_redaction() -> None:
    """Attach the filter to uvicorn's loggers (idempotent). Logger filters see only records logged on that logger,
    so each logger gets it."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


class RateLimiter:
    """Token bucket per key (user id or client address): `rate` requests per second, bursts up to `burst`.
    In memory, per server process. rate <= 0 disables it."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[Any, tuple[float, float]] = {}
        self._lock = threading.Lock()

    MAX_KEYS = 100_000

    def check(self, key: Any) -> float:
        """0 if allowed (and counted), else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > self.MAX_KEYS:  # many client addresses: forget the buckets that are full again
                full_after = self.burst / self.rate
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0


class BodyTooLarge(HTTPException):
    """Raised while the body streams in. An HTTPException, so FastAPI's body parsing passes it on as 413 instead
    of turning it into a generic 400."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body too large: over {limit} bytes")


class LimitsAndHeaders:
    """ASGI middleware: refuse request bodies over `max_bytes` (413, checked on Content-Length and while
    streaming) and add security headers to every response."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _json_response(send, 400, "invalid Content-Length header")
                return
            if int(length) > self.max_bytes:
                await _json_response(send, 413, f"request body too large: {int(length)} bytes, limit {self.max_bytes}")
                return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        docs = scope.get("path", "") in ("/docs", "/redoc")

        async def send_with_headers(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + _security_headers(docs)
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge:
            if not started:
                await _json_response(send, 413, f"request body too large: over {self.max_bytes} bytes")
        except Exception:
            # A bug: Starlette's outermost error middleware would answer 500 without our headers. Answer here, with
            # them, and re-raise so the server still logs the traceback (it sees the response already started).
            if not started:
                await _json_response(send, 500, "internal server error")
            raise


def _security_headers(docs: bool) -> list[tuple[bytes, bytes]]:
    # Model outputs are untrusted: besides escaping, the CSP forbids inline scripts, so even a missed escape
    # cannot run code. FastAPI's /docs page loads Swagger UI from a CDN with an inline script: allow that there.
    csp = (
        "default-src 'self'; script-src 'self' https://cdn.jsdelivr.net 'unsafe-inline'; "
        "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' https://fastapi.tiangolo.com data:"
        if docs
        else "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )
    return [
        (b"content-security-policy", csp.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),  # invite links carry a token: never leak it in Referer
    ]


async def _json_response(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            + _security_headers(False),
        }
    )
    await send({"type": "http.response.body", "body": body})
