"""Preference store: SQLAlchemy models and the small API shared by the web app, the CLI and simulated labelers.

SQLite (WAL, synchronous=FULL) is the embedded default: a plain path means SQLite. PostgreSQL works by URL
(`postgresql+psycopg://...`). Judgments are append-only: a corrected answer is a new row whose
`supersedes_id` points at the answer it replaces; nothing in `judgments` is ever updated or deleted.

Answers are stored twice: `raw` exactly as submitted (positions as shown: "A" is the first response shown) and
`answer` in task terms (indices into `Task.responses`), mapped through the assignment's recorded `shown_order`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    exists,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from rlhf.errors import UserError

ROLES = ("labeler", "admin")
IMPORT_ROLE = "import"  # pseudo-users that own imported judgments; they cannot sign in
KINDS = ("pairwise", "ranking")
CHOICES = ("A", "B", "tie", "both_bad")
STRENGTHS = ("much_better", "better", "slightly_better")
FLAGS = ("unsafe", "broken")
MAX_RANKING = 9  # keyboard shortcuts 1-9 cover at most nine responses
INVITE_TTL = timedelta(days=7)
ASSIGNMENT_TTL = timedelta(hours=1)  # an unanswered showing holds its overlap slot this long
MAX_ID = 2**31 - 1  # ids are INTEGER columns: PostgreSQL's int4 (SQLite's are wider); larger ids cannot exist


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def token_hash(token: str) -> str:
    # Tokens are 256-bit random strings, so a plain SHA-256 (no salt, no KDF) is enough to keep them unusable
    # if the database leaks, and lets us look them up by hash.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive UTC; PostgreSQL timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is not None and dialect.name == "sqlite":
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


# none_as_null: store Python None as SQL NULL (the default would store the JSON text 'null', and IS NULL fails).
NullableJSON = JSON(none_as_null=True)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    api_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deactivated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # set: cannot sign in or use the API


class Invite(Base):
    __tablename__ = "invites"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # a newer invite or `label revoke` voided it


class SessionRow(Base):
    """A signed-in browser. The cookie carries a random session token; only its hash is stored, and logout,
    `rlhf label revoke` or deactivating the user end the session on the server, not only in the browser."""

    __tablename__ = "sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Task(Base):
    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    prompt: Mapped[str] = mapped_column(Text)
    responses: Mapped[list] = mapped_column(JSON)
    # ended[i]: response i stopped by itself (EOS) rather than being cut at max_new_tokens; NULL: not known
    # (imports, older sample files), which readers take as "ended".
    responses_ended: Mapped[list | None] = mapped_column(NullableJSON)
    source: Mapped[dict] = mapped_column(JSON)  # where it came from: prompt_id, model, sampling, file, format
    overlap: Mapped[int] = mapped_column(Integer)  # distinct labelers to show it to (0: never served)
    gold_ranks: Mapped[list | None] = mapped_column(NullableJSON)  # known answer: rank per response, 1 = best
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TaskSplit(Base):
    """train/heldout per task, set once (by `simulate --heldout` or by an imported dataset's split)."""

    __tablename__ = "task_splits"
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    split: Mapped[str] = mapped_column(String(16))
    assigned_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Assignment(Base):
    """One showing of a task to one labeler, with the order the responses were shown in."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "user_id", name="uq_assignment_task_user"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    shown_order: Mapped[list] = mapped_column(JSON)  # shown_order[position] = index into Task.responses
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Judgment(Base):
    """Append-only: every raw answer (including skips, flags and superseded ones)."""

    __tablename__ = "judgments"
    __table_args__ = (UniqueConstraint("user_id", "client_id", name="uq_judgment_user_client"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[str] = mapped_column(String(100))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    shown_order: Mapped[list] = mapped_column(JSON)
    kind: Mapped[str] = mapped_column(String(16))  # pairwise | ranking | skip | flag
    answer: Mapped[dict] = mapped_column(JSON)  # in task terms (response indices)
    raw: Mapped[dict] = mapped_column(JSON)  # as submitted (shown positions)
    time_spent_ms: Mapped[int] = mapped_column(Integer)
    # unique: a judgment can be superseded once, so two racing corrections cannot both win.
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("judgments.id"), unique=True)


class MetaEntry(Base):
    """Append-only key/value log; the newest row per key is the current value (e.g. "simulation")."""

    __tablename__ = "meta"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), index=True)
    value: Mapped[Any] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Guidelines(Base):
    """Labeling guidelines (Markdown), append-only: the newest row is current; an empty text means "none"."""

    __tablename__ = "guidelines"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


# ---------------------------------------------------------------------------------------------------------------
# Plain values handed out by the store (never live ORM objects, so callers need no session).


@dataclass(frozen=True)
class UserInfo:
    id: int
    name: str
    role: str


@dataclass(frozen=True)
class NewUser:
    user: UserInfo
    invite_token: str
    api_token: str


@dataclass(frozen=True)
class TaskSpec:
    """A task to add: a prompt with 2..K responses and where they came from."""

    kind: str
    prompt: str
    responses: list[str]
    source: dict = field(default_factory=dict)
    overlap: int = 1
    gold_ranks: list[int] | None = None
    ended: list[bool] | None = None  # per response: stopped by itself (EOS); None: not known (taken as ended)


@dataclass(frozen=True)
class Shown:
    """A task as shown to one labeler: responses in shown order (position 0 is "A")."""

    assignment_id: int
    task_id: int
    kind: str
    prompt: str
    responses: list[str]
    shown_order: list[int]
    current_judgment_id: int | None  # set when already answered: pass it as `supersedes` to correct


@dataclass
class Answer:
    """One submission. Exactly one of choice (pairwise), ranks (ranking), skip_reason or flag is given.

    Positions are as shown: choice "A" is the first response shown; ranks[p] is the rank of the response shown
    at position p (1 = best, ties share a rank).
    """

    assignment_id: int
    client_id: str
    choice: str | None = None
    strength: str | None = None
    ranks: list[int] | None = None
    skip_reason: str | None = None
    flag: str | None = None
    note: str | None = None
    time_spent_ms: int = 0
    supersedes: int | None = None


@dataclass(frozen=True)
class JudgmentRecord:
    id: int
    client_id: str
    user_id: int
    user_name: str
    user_role: str
    task_id: int
    assignment_id: int
    created_at: datetime
    shown_order: list[int]
    kind: str
    answer: dict
    raw: dict
    time_spent_ms: int
    supersedes_id: int | None


@dataclass(frozen=True)
class TaskRecord:
    id: int
    kind: str
    prompt: str
    responses: list[str]
    source: dict
    overlap: int
    gold_ranks: list[int] | None
    split: str | None
    ended: list[bool] | None = None  # per response, see TaskSpec.ended


class StoreError(UserError):
    """A request the store refuses; `status` is the HTTP status the web app answers with, `field` the culprit."""

    status = 422

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotFound(StoreError):
    status = 404


class Forbidden(StoreError):
    status = 403


class Conflict(StoreError):
    status = 409


# ---------------------------------------------------------------------------------------------------------------


def database_url(db: str | Path, *, create: bool = True) -> str:
    """A plain path means SQLite at that path; anything with '://' is a URL. With create, a missing SQLite file is
    created (parent folders too) with mode 0600: it holds who labeled what and the token hashes, and SQLite gives its
    -wal and -shm files the database file's mode. Without create, a missing file is an error."""
    db = str(db)
    if "://" in db:
        try:
            url = make_url(db)
        except ArgumentError as e:
            raise UserError(f"--db {db!r}: not a database URL ({e}); use a path or postgresql+psycopg://...") from None
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return db
        path = Path(url.database).expanduser().resolve()
    else:
        path = Path(db).expanduser().resolve()
    if not path.exists():
        if not create:
            raise UserError(f"--db {db}: no such database (this command only reads one and never creates it); check the path")
        path.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileExistsError):  # another process created it just now
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return db if "://" in db else f"sqlite:///{path}"


def _make_engine(url: str, pool_size: int) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60}, pool_size=pool_size, max_overflow=pool_size)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # pysqlite must not emit its own BEGIN: we do (see below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is fsynced before we acknowledge it (NORMAL in WAL mode may lose the last commits on
            # power loss; a process kill would be safe either way).
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Write transactions take the write lock up front (BEGIN IMMEDIATE): a deferred transaction that reads
            # and then writes fails at once with SQLITE_BUSY when another writer got in between, whatever the
            # busy timeout. Reads stay deferred so they never wait for writers (WAL).
            opts = conn.get_execution_options()
            if opts.get("rlhf_write"):
                conn.exec_driver_sql(f"PRAGMA synchronous={opts.get('rlhf_sync', 'FULL')}")
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=2 * pool_size)


def _add_missing_columns(engine: Engine) -> None:
    insp = inspect(engine)
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in insp.get_columns(table.name)}
        for col in table.columns:
            if col.name not in have:
                assert col.nullable, f"{table.name}.{col.name}: a column added later must be nullable"
                ddl = Column(col.name, col.type).type.compile(dialect=engine.dialect)
                with engine.begin() as c:
                    c.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {ddl}')


def _dedup_key(kind: str, prompt: str, responses: list[str], gold: list[int] | None) -> str:
    blob = json.dumps([kind, prompt, responses, gold], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Store:
    """The preference store. Every public method is one transaction.

    Built on SQLAlchemy Core (connections and table rows, no ORM session): the web app calls `next_assignment` and
    `submit` once per judgment, and the ORM's per-object bookkeeping cost more than the SQL itself.
    """

    def __init__(self, db: str | Path, *, create: bool = True, pool_size: int = 10):
        """create=False (read-only commands): refuse a database that does not exist or holds no labeling tables,
        instead of creating an empty one (a typo'd --db would otherwise export 0 pairs over a good file)."""
        self.url = database_url(db, create=create)
        self.engine = _make_engine(self.url, pool_size)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._durable = self.engine.execution_options(rlhf_write=True)
        # Assignments may be lost on power failure without harm (the task is shown again), so on SQLite their
        # commits skip the fsync (synchronous=NORMAL; still safe against a killed process). Judgments fsync.
        self._fast = self.engine.execution_options(rlhf_write=True, rlhf_sync="NORMAL")
        self._write_lock = threading.Lock() if self.is_sqlite else nullcontext()
        if not create and not inspect(self.engine).has_table("tasks"):
            shown = make_url(self.url).render_as_string(hide_password=True)
            self.engine.dispose()
            raise UserError(f"--db {shown}: holds no labeling tables (this command never creates them); check --db")
        # Tables missing from an older store are created, columns added since are added (nullable, so old rows
        # stay valid); nothing is ever dropped or rewritten.
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[Connection]:
        # SQLite has one writer at a time, and a writer that finds the lock taken sleeps in SQLite's busy handler
        # (steps of up to 100 ms). Queueing this process's writers on a Python lock instead hands the database
        # over as soon as it is free; other processes still wait through busy_timeout.
        with self._write_lock, (self._durable if durable else self._fast).begin() as conn:
            yield conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- users ---------------------------------------------------------------------------------------------------

    def create_user(self, name: str, role: str) -> NewUser:
        """Create a user; returns a one-time invite token (for the browser) and an API token (for scripts)."""
        name = name.strip()
        if not name or len(name) > 100 or "\x00" in name:
            raise StoreError("user name must be 1..100 characters (no NUL)", "name")
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}, got {role!r}", "role")
        api_token = secrets.token_urlsafe(32)
        try:
            with self._write() as c:
                uid = _insert(c, USERS, name=name, role=role, api_token_hash=token_hash(api_token), created_at=utcnow())
                invite = self._add_invite(c, uid)
        except IntegrityError:
            raise Conflict(f"user {name!r} already exists; use `rlhf label invite {name}` for a new link", "name") from None
        return NewUser(UserInfo(uid, name, role), invite, api_token)

    def _add_invite(self, c: Connection, user_id: int) -> str:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        # One live invite per user: a new link voids the older ones (an admin who re-invites after a link leaked
        # expects the leaked one to stop working).
        c.execute(
            update(INVITES)
            .where(INVITES.c.user_id == user_id, INVITES.c.used_at.is_(None), INVITES.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        _insert(c, INVITES, user_id=user_id, token_hash=token_hash(token), created_at=now, expires_at=now + INVITE_TTL)
        return token

    def _named(self, c: Connection, name: str) -> Any:
        user = c.execute(select(USERS.c.id, USERS.c.role, USERS.c.deactivated_at).where(USERS.c.name == name)).first()
        if user is None or user.role not in ROLES:
            raise NotFound(f"no labeler or admin named {name!r}; create one with `rlhf label add-user`", "name")
        return user

    def new_invite(self, name: str) -> str:
        """A fresh one-time invite token for an existing user (e.g. a lost session); older unused ones stop working."""
        with self._write() as c:
            user = self._named(c, name)
            if user.deactivated_at is not None:
                raise Conflict(f"user {name!r} is deactivated; run `rlhf label activate {name}` first", "name")
            return self._add_invite(c, user.id)

    def invite_user(self, token: str) -> UserInfo | None:
        """The user an unused, unexpired, unrevoked invite belongs to (does not use it up)."""
        with self._reading() as c:
            row = c.execute(Q.invite_user, {"token_hash": token_hash(token), "now": utcnow()}).first()
            return UserInfo(*row) if row else None

    def redeem_invite(self, token: str) -> UserInfo | None:
        """Use up an invite; None if it is unknown, used, revoked or expired, or its user is deactivated. Safe
        against two racing redemptions."""
        now = utcnow()
        with self._write() as c:
            inv = c.execute(select(INVITES.c.id, INVITES.c.user_id).where(INVITES.c.token_hash == token_hash(token))).first()
            if inv is None:
                return None
            # Conditional update: only one of two concurrent redemptions changes the row.
            res = c.execute(
                update(INVITES)
                .where(
                    INVITES.c.id == inv.id, INVITES.c.used_at.is_(None), INVITES.c.revoked_at.is_(None),
                    INVITES.c.expires_at > now,
                )
                .values(used_at=now)
            )  # fmt: skip
            if res.rowcount != 1:
                return None
            return self._user(c, inv.user_id)

    def _user(self, c: Connection, user_id: int) -> UserInfo | None:
        """An active user (deactivated ones are None: they cannot sign in or use the API)."""
        row = c.execute(Q.active_user, {"user_id": user_id}).first()
        return UserInfo(*row) if row else None

    def user_by_api_token(self, token: str) -> UserInfo | None:
        with self._reading() as c:
            row = c.execute(Q.user_by_token, {"token_hash": token_hash(token)}).first()
            return UserInfo(*row) if row and row.role in ROLES else None

    def get_user(self, user_id: int) -> UserInfo | None:
        if not 0 < user_id <= MAX_ID:
            return None
        with self._reading() as c:
            return self._user(c, user_id)

    # -- browser sessions ----------------------------------------------------------------------------------------

    def create_session(self, user_id: int, ttl: timedelta) -> str:
        """A new server-side session; returns its token (for the signed cookie; only the hash is stored)."""
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self._write() as c:
            _insert(c, SESSIONS, user_id=user_id, token_hash=token_hash(token), created_at=now, expires_at=now + ttl,
                    revoked_at=None)  # fmt: skip
        return token

    def session_user(self, token: str) -> UserInfo | None:
        """The active user of a live (unexpired, unrevoked) session, else None."""
        with self._reading() as c:
            row = c.execute(Q.session_user, {"token_hash": token_hash(token), "now": utcnow()}).first()
            return UserInfo(*row) if row else None

    def end_session(self, token: str) -> None:
        """Logout: the session stops working on the server, whoever holds a copy of the cookie."""
        with self._write() as c:
            c.execute(
                update(SESSIONS)
                .where(SESSIONS.c.token_hash == token_hash(token), SESSIONS.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )

    def revoke(self, name: str, *, tokens: bool = True, sessions: bool = True, new_token: bool = False,
               deactivate: bool = False) -> dict[str, Any]:  # fmt: skip
        """`rlhf label revoke`: end a user's sessions (all signed-in browsers) and/or void their API token and unused
        invites; optionally issue a replacement API token, or deactivate the user (which also revokes both).
        Returns counts and the new token (if any)."""
        now = utcnow()
        out: dict[str, Any] = {"sessions": 0, "invites": 0, "api_token": False, "new_api_token": None}
        with self._write() as c:
            user = self._named(c, name)
            if deactivate:
                tokens = sessions = True
                c.execute(update(USERS).where(USERS.c.id == user.id).values(deactivated_at=now))
            if sessions:
                out["sessions"] = c.execute(
                    update(SESSIONS).where(SESSIONS.c.user_id == user.id, SESSIONS.c.revoked_at.is_(None)).values(revoked_at=now)
                ).rowcount
            if tokens:
                out["invites"] = c.execute(
                    update(INVITES)
                    .where(INVITES.c.user_id == user.id, INVITES.c.used_at.is_(None), INVITES.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                ).rowcount
                had = c.scalar(select(USERS.c.api_token_hash).where(USERS.c.id == user.id))
                out["api_token"] = had is not None
                c.execute(update(USERS).where(USERS.c.id == user.id).values(api_token_hash=None))
            if new_token and not deactivate:
                token = secrets.token_urlsafe(32)
                c.execute(update(USERS).where(USERS.c.id == user.id).values(api_token_hash=token_hash(token)))
                out["new_api_token"] = token
        return out

    def activate(self, name: str) -> None:
        """Undo a deactivation (the user then needs a new invite and, for scripts, `revoke --tokens --new-token`)."""
        with self._write() as c:
            user = self._named(c, name)
            c.execute(update(USERS).where(USERS.c.id == user.id).values(deactivated_at=None))

    def users(self) -> list[UserInfo]:
        with self._reading() as c:
            return [UserInfo(*r) for r in c.execute(select(USERS.c.id, USERS.c.name, USERS.c.role).order_by(USERS.c.id))]

    def _ensure_user(self, c: Connection, name: str, role: str) -> int:
        uid = c.scalar(select(USERS.c.id).where(USERS.c.name == name))
        if uid is None:
            uid = _insert(c, USERS, name=name, role=role, api_token_hash=None, created_at=utcnow())
        return uid

    def ensure_user(self, name: str, role: str = "labeler") -> UserInfo:
        """Get or create a user without tokens (simulated labelers, importers)."""
        with self._write() as c:
            return self._user(c, self._ensure_user(c, name, role))

    # -- tasks ---------------------------------------------------------------------------------------------------

    def add_tasks(self, specs: Iterable[TaskSpec]) -> tuple[list[int], int]:
        """Add tasks in one transaction; returns (ids of new tasks, number already present and skipped)."""
        new_ids, existing = [], 0
        with self._write() as c:
            for spec in specs:
                _check_spec(spec)
                key = _dedup_key(spec.kind, spec.prompt, spec.responses, spec.gold_ranks)
                if c.scalar(select(TASKS.c.id).where(TASKS.c.dedup_key == key)) is not None:
                    existing += 1
                    continue
                new_ids.append(self._insert_task(c, spec, key, spec.gold_ranks))
        return new_ids, existing

    def _insert_task(self, c: Connection, spec: TaskSpec, key: str, gold: list[int] | None) -> int:
        return _insert(
            c, TASKS, kind=spec.kind, prompt=spec.prompt, responses=list(spec.responses), source=dict(spec.source),
            overlap=spec.overlap, gold_ranks=list(gold) if gold is not None else None, dedup_key=key,
            created_at=utcnow(), responses_ended=list(spec.ended) if spec.ended is not None else None,
        )  # fmt: skip

    def tasks(self) -> list[TaskRecord]:
        with self._reading() as c:
            q = (
                select(TASKS.c.id, TASKS.c.kind, TASKS.c.prompt, TASKS.c.responses, TASKS.c.source, TASKS.c.overlap,
                       TASKS.c.gold_ranks, SPLITS.c.split, TASKS.c.responses_ended)
                .outerjoin(SPLITS, SPLITS.c.task_id == TASKS.c.id)
                .order_by(TASKS.c.id)
            )  # fmt: skip
            return [TaskRecord(*r) for r in c.execute(q)]

    def assign_splits(self, heldout_fraction: float, seed: int, assigned_by: str) -> dict[str, int]:
        """Give every task without a split one: heldout with probability `heldout_fraction` (seeded per task)."""
        if not 0.0 <= heldout_fraction < 1.0:
            raise StoreError(f"held-out fraction must be in [0, 1), got {heldout_fraction}", "heldout")
        counts = {"train": 0, "heldout": 0}
        with self._write() as c:
            todo = c.scalars(select(TASKS.c.id).where(~exists().where(SPLITS.c.task_id == TASKS.c.id)).order_by(TASKS.c.id)).all()
            for tid in todo:
                # Per-task seed: the split of a task does not depend on which other tasks exist.
                split = "heldout" if random.Random(f"{seed}:{tid}").random() < heldout_fraction else "train"
                _insert(c, SPLITS, task_id=tid, split=split, assigned_by=assigned_by, created_at=utcnow())
                counts[split] += 1
        return counts

    # -- assignments ---------------------------------------------------------------------------------------------

    def next_assignment(self, user_id: int, *, gold_rate: float = 0.1, rng: random.Random | None = None) -> Shown | None:
        """The user's open assignment, else a new one: a task still short of its overlap that this user has never
        been shown (FIFO), or with probability `gold_rate` an unseen gold task. None when nothing is left."""
        rng = rng or random.SystemRandom()
        with self._reading() as c:
            open_a = c.execute(Q.open_assignment, {"user_id": user_id}).first()
        if open_a is not None:
            return _shown(open_a, None)
        order = [True, False] if rng.random() < gold_rate else [False]
        params = {"user_id": user_id, "cutoff": utcnow() - ASSIGNMENT_TTL}
        with self._write(durable=False) as c:
            for gold in order:
                for task in c.execute(Q.gold_candidates if gold else Q.candidates, params).all():
                    order = rng.sample(range(len(task.responses)), len(task.responses))
                    aid = self._try_assign(c, task, user_id, gold, order)
                    if aid is not None:
                        return Shown(aid, task.id, task.kind, task.prompt, [task.responses[i] for i in order], order, None)
        return None

    def _try_assign(self, c: Connection, task: Any, user_id: int, gold: bool, order: list[int]) -> int | None:
        values = {"task_id": task.id, "user_id": user_id, "shown_order": order, "created_at": utcnow()}
        if self.is_sqlite:
            # BEGIN IMMEDIATE holds the database write lock: the candidate query above saw the final counts.
            return _insert(c, ASSIGNMENTS, **values)
        # PostgreSQL: lock the task row and recount, so two labelers racing for the last slot cannot both get it;
        # the savepoint turns a racing duplicate (same user, two tabs) into "try the next task".
        c.execute(Q.lock_task, {"task_id": task.id})
        if not gold:
            row = c.execute(Q.active_one, {"task_id": task.id, "cutoff": utcnow() - ASSIGNMENT_TTL}).first()
            if (row.n if row else 0) >= task.overlap:
                return None
        try:
            with c.begin_nested():
                return _insert(c, ASSIGNMENTS, **values)
        except IntegrityError:
            return None

    def get_shown(self, user_id: int, assignment_id: int) -> Shown:
        """An assignment of this user as shown (e.g. to correct an answer)."""
        if not 0 < assignment_id <= MAX_ID:
            raise NotFound(f"assignment {assignment_id} does not exist", "assignment_id")
        with self._reading() as c:
            row = c.execute(Q.shown_by_id, {"assignment_id": assignment_id}).first()
            if row is None:
                raise NotFound(f"assignment {assignment_id} does not exist", "assignment_id")
            if row.user_id != user_id:
                raise Forbidden(f"assignment {assignment_id} belongs to another user", "assignment_id")
            return _shown(row, self._current(c, assignment_id))

    def _current(self, c: Connection, assignment_id: int) -> int | None:
        row = c.execute(Q.current, {"assignment_id": assignment_id}).first()
        return row.id if row else None

    # -- judgments -----------------------------------------------------------------------------------------------

    def submit(self, user_id: int, ans: Answer) -> tuple[JudgmentRecord, bool]:
        """Store one judgment in one transaction. Returns (record, created); the same client_id again returns the
        stored record with created=False and writes nothing."""
        _check_answer_fields(ans)
        for attempt in range(2):
            try:
                with self._write() as c:
                    # Lock the assignment row first (PostgreSQL; SQLite holds the write lock already): concurrent
                    # submissions for one assignment then run one after the other, and a repeat finds the first.
                    a = c.execute(Q.lock_assignment, {"assignment_id": ans.assignment_id}).first()
                    prior = c.execute(Q.prior, {"user_id": user_id, "client_id": ans.client_id}).first()
                    if prior is not None:
                        if prior.assignment_id != ans.assignment_id:
                            raise Conflict(
                                f"client_id {ans.client_id!r} was already used for assignment {prior.assignment_id}",
                                "client_id",
                            )
                        # A true repeat (a retry) must carry the same answer: validate it, then compare.
                        kind, _answer, raw = _canonical(a.kind, list(a.shown_order), ans)
                        if (kind, raw, ans.supersedes) != (prior.kind, dict(prior.raw), prior.supersedes_id):
                            raise Conflict(
                                f"client_id {ans.client_id!r} was already used for a different answer (judgment "
                                f"{prior.id}); send a new client_id for a new answer",
                                "client_id",
                            )
                        return _to_record(prior), False
                    values = self._new_judgment(c, a, user_id, ans)
                    jid = _insert(c, JUDGMENTS, **values)
                    return _to_record(c.execute(Q.judgment_by_id, {"judgment_id": jid}).one()), True
            except IntegrityError:
                # A concurrent request with the same client_id (or superseding the same judgment) won the race;
                # the retry sees its row and answers like a repeat.
                if attempt == 1:
                    raise Conflict("the judgment this corrects was already corrected", "supersedes") from None
        raise AssertionError("unreachable")

    def _new_judgment(self, c: Connection, a: Any, user_id: int, ans: Answer) -> dict[str, Any]:
        if a is None:
            raise NotFound(f"assignment {ans.assignment_id} does not exist", "assignment_id")
        if a.user_id != user_id:
            raise Forbidden(f"assignment {ans.assignment_id} belongs to another user", "assignment_id")
        cur = c.execute(Q.current, {"assignment_id": a.id}).first()
        current = cur.id if cur else None
        if current is not None and ans.supersedes != current:
            raise Conflict(
                f"assignment {a.id} is already answered (judgment {current}); to correct it, send supersedes={current}",
                "supersedes",
            )
        if current is None and ans.supersedes is not None:
            raise StoreError(f"assignment {a.id} has no answer yet, so there is nothing to supersede", "supersedes")
        if not 0 <= ans.time_spent_ms <= 86_400_000:
            raise StoreError("time_spent_ms must be between 0 and 86400000", "time_spent_ms")
        kind, answer, raw = _canonical(a.kind, list(a.shown_order), ans)
        if kind in KINDS and not a.gold:
            self._check_overlap_slot(c, a, cur)
        return {
            "client_id": ans.client_id, "user_id": user_id, "task_id": a.task_id, "assignment_id": a.id,
            "created_at": utcnow(), "shown_order": list(a.shown_order), "kind": kind, "answer": answer, "raw": raw,
            "time_spent_ms": int(ans.time_spent_ms), "supersedes_id": ans.supersedes,
        }  # fmt: skip

    def _check_overlap_slot(self, c: Connection, a: Any, cur: Any) -> None:
        """Overlap is a hard cap on labelers with a current answer. A showing holds its slot while unanswered and
        recent, or while answered with anything but a skip; one that lost it (skipped, or left open past
        ASSIGNMENT_TTL) may answer only if the slot is still free, else someone else has taken it meanwhile."""
        cutoff = utcnow() - ASSIGNMENT_TTL
        holds = cur.kind != "skip" if cur is not None else a.created_at > cutoff
        if holds:
            return
        if not self.is_sqlite:  # serialise with _try_assign, which counts under the same lock
            c.execute(Q.lock_task, {"task_id": a.task_id})
        row = c.execute(Q.active_one, {"task_id": a.task_id, "cutoff": cutoff}).first()
        if (row.n if row else 0) >= a.overlap:
            why = "you skipped it" if cur is not None else f"it was open longer than {ASSIGNMENT_TTL}"
            raise Conflict(
                f"task {a.task_id} already has its {a.overlap} labelers ({why}, and the slot went to someone else); "
                "ask for the next task",
                "assignment_id",
            )

    def judgments(self, *, current_only: bool = False) -> list[JudgmentRecord]:
        """All judgments in id order; with current_only, only those not superseded by a later one."""
        with self._reading() as c:
            q = _JUDGMENT_ROWS.order_by(JUDGMENTS.c.id)
            if current_only:
                later = JUDGMENTS.alias("later")
                q = q.where(~exists().where(later.c.supersedes_id == JUDGMENTS.c.id))
            return [_to_record(r) for r in c.execute(q)]

    def import_records(self, user_name: str, items: Iterable[tuple[TaskSpec, list[int], str]]) -> tuple[int, int]:
        """Add imported (task, ranks by response index, client_id) triples as judgments of the pseudo-user
        `user_name`, in one transaction. Returns (imported, already present)."""
        imported = duplicates = 0
        with self._write() as c:
            uid = self._ensure_user(c, user_name, IMPORT_ROLE)
            known = set(c.scalars(select(JUDGMENTS.c.client_id).where(JUDGMENTS.c.user_id == uid)))
            for spec, ranks, client_id in items:
                if client_id in known:
                    duplicates += 1
                    continue
                known.add(client_id)
                _check_spec(spec)
                key = _dedup_key(spec.kind, spec.prompt, spec.responses, None)
                tid = c.scalar(select(TASKS.c.id).where(TASKS.c.dedup_key == key))
                if tid is None:
                    tid = self._insert_task(c, spec, key, None)
                split = spec.source.get("split")
                if split and c.scalar(select(SPLITS.c.task_id).where(SPLITS.c.task_id == tid)) is None:
                    _insert(c, SPLITS, task_id=tid, split=split, assigned_by=user_name, created_at=utcnow())
                order = list(range(len(spec.responses)))
                aid = c.scalar(select(ASSIGNMENTS.c.id).where(ASSIGNMENTS.c.task_id == tid, ASSIGNMENTS.c.user_id == uid))
                if aid is None:
                    aid = _insert(c, ASSIGNMENTS, task_id=tid, user_id=uid, shown_order=order, created_at=utcnow())
                elif self._current(c, aid) is not None:
                    duplicates += 1  # the same comparison appears twice in the file(s): keep the first
                    continue
                if spec.kind == "pairwise":
                    choice = "tie" if ranks[0] == ranks[1] else ("A" if ranks[0] < ranks[1] else "B")
                    ans = Answer(aid, client_id, choice=choice, strength=None)
                else:
                    ans = Answer(aid, client_id, ranks=list(ranks))
                kind, answer, raw = _canonical(spec.kind, order, ans, strength_required=False)
                _insert(
                    c, JUDGMENTS, client_id=client_id, user_id=uid, task_id=tid, assignment_id=aid,
                    created_at=utcnow(), shown_order=order, kind=kind, answer=answer, raw=raw, time_spent_ms=0,
                    supersedes_id=None,
                )  # fmt: skip
                imported += 1
        return imported, duplicates

    # -- progress and meta ---------------------------------------------------------------------------------------

    def progress(self, user_id: int | None = None) -> dict[str, int]:
        """Counts for the progress bars: overall, and for one user if given."""
        with self._reading() as c:
            served = TASKS.c.overlap > 0
            count = select(func.count()).select_from(TASKS)
            out = {
                "tasks": c.scalar(count.where(served, TASKS.c.gold_ranks.is_(None))),
                "gold_tasks": c.scalar(count.where(TASKS.c.gold_ranks.is_not(None))),
                "judgments": c.scalar(select(func.count()).select_from(JUDGMENTS)),
            }
            per_task = (
                select(JUDGMENTS.c.task_id, func.count(func.distinct(JUDGMENTS.c.user_id)).label("n"))
                .where(JUDGMENTS.c.kind.in_(KINDS))
                .group_by(JUDGMENTS.c.task_id)
                .subquery()
            )
            out["tasks_complete"] = c.scalar(
                count.join(per_task, per_task.c.task_id == TASKS.c.id).where(
                    served, TASKS.c.gold_ranks.is_(None), per_task.c.n >= TASKS.c.overlap
                )
            )
            if user_id is not None:
                out["my_judgments"] = c.scalar(
                    select(func.count(func.distinct(JUDGMENTS.c.assignment_id))).where(
                        JUDGMENTS.c.user_id == user_id, JUDGMENTS.c.kind.in_(KINDS)
                    )
                )
                params = {"user_id": user_id, "cutoff": utcnow() - ASSIGNMENT_TTL}
                out["my_available"] = c.scalar(Q.count_candidates, params)
        return out

    def set_meta(self, key: str, value: Any) -> None:
        with self._write() as c:
            _insert(c, META, key=key, value=value, created_at=utcnow())

    def get_meta(self, key: str) -> Any:
        with self._reading() as c:
            return c.scalar(select(META.c.value).where(META.c.key == key).order_by(META.c.id.desc()).limit(1))

    # -- guidelines and what the pages show ----------------------------------------------------------------------

    def set_guidelines(self, text: str) -> int:
        """Store new labeling guidelines (Markdown; "" removes them); returns the version (row id)."""
        if not isinstance(text, str) or "\x00" in text:
            raise StoreError("guidelines must be text without NUL characters", "guidelines")
        with self._write() as c:
            return _insert(c, GUIDELINES, text=text, created_at=utcnow())

    def guidelines(self) -> tuple[str, int, datetime] | None:
        """The current guidelines as (text, version, set at), or None if none were ever set or the last is empty."""
        with self._reading() as c:
            row = c.execute(select(GUIDELINES).order_by(GUIDELINES.c.id.desc()).limit(1)).first()
        return (row.text, row.id, row.created_at) if row is not None and row.text else None

    def prompt_messages(self, task_id: int) -> list | None:
        """The task's prompt as {"role", "content"} messages when it was imported as a conversation, else None."""
        with self._reading() as c:
            source = c.scalar(select(TASKS.c.source).where(TASKS.c.id == task_id))
        messages = source.get("prompt_messages") if isinstance(source, dict) else None
        return messages if isinstance(messages, list) else None


USERS = User.__table__
INVITES = Invite.__table__
SESSIONS = SessionRow.__table__
TASKS = Task.__table__
SPLITS = TaskSplit.__table__
ASSIGNMENTS = Assignment.__table__
JUDGMENTS = Judgment.__table__
META = MetaEntry.__table__
GUIDELINES = Guidelines.__table__
_SHOWN = select(
    ASSIGNMENTS.c.id, ASSIGNMENTS.c.user_id, ASSIGNMENTS.c.shown_order, TASKS.c.id.label("task_id"), TASKS.c.kind,
    TASKS.c.prompt, TASKS.c.responses,
).join(TASKS, TASKS.c.id == ASSIGNMENTS.c.task_id)  # fmt: skip
_JUDGMENT_ROWS = select(JUDGMENTS, USERS.c.name.label("user_name"), USERS.c.role.label("user_role")).join(
    USERS, USERS.c.id == JUDGMENTS.c.user_id
)


_LATER = JUDGMENTS.alias("later")
_IS_CURRENT = ~exists().where(_LATER.c.supersedes_id == JUDGMENTS.c.id)  # a judgment nobody corrected (yet)


def _active_counts_q(one_task: bool) -> Any:
    """Assignments holding an overlap slot per task: whose current answer is not a skip (a skip frees the slot; a
    skip later corrected into an answer holds it again), or unanswered and recent."""
    answered = exists().where(JUDGMENTS.c.assignment_id == ASSIGNMENTS.c.id)
    holds = exists().where(JUDGMENTS.c.assignment_id == ASSIGNMENTS.c.id, JUDGMENTS.c.kind != "skip", _IS_CURRENT)
    recent = ASSIGNMENTS.c.created_at > bindparam("cutoff", type_=UTCDateTime())
    q = select(ASSIGNMENTS.c.task_id, func.count().label("n")).where(or_(holds, ~answered & recent))
    if one_task:
        q = q.where(ASSIGNMENTS.c.task_id == bindparam("task_id"))
    return q.group_by(ASSIGNMENTS.c.task_id)


def _candidates_q(gold: bool) -> Any:
    """Tasks this user was never shown and with no current flag (a flag corrected into an answer no longer hides the
    task); non-gold ones still short of their overlap (FIFO)."""
    seen = exists().where(ASSIGNMENTS.c.task_id == TASKS.c.id, ASSIGNMENTS.c.user_id == bindparam("user_id"))
    flagged = exists().where(JUDGMENTS.c.task_id == TASKS.c.id, JUDGMENTS.c.kind == "flag", _IS_CURRENT)
    q = select(TASKS.c.id, TASKS.c.overlap, TASKS.c.kind, TASKS.c.prompt, TASKS.c.responses).where(~seen, ~flagged)
    if gold:
        return q.where(TASKS.c.gold_ranks.is_not(None)).order_by(TASKS.c.id)
    active = _active_counts_q(one_task=False).subquery()
    return (
        q.outerjoin(active, active.c.task_id == TASKS.c.id)
        .where(TASKS.c.gold_ranks.is_(None), TASKS.c.overlap > func.coalesce(active.c.n, 0))
        .order_by(TASKS.c.id)
    )


class Q:
    """Statements built once, run with parameters: building a SQLAlchemy statement costs more CPU than running it
    on SQLite, and these run once or twice per judgment."""

    open_assignment = (
        _SHOWN.where(
            ASSIGNMENTS.c.user_id == bindparam("user_id"),
            ~exists().where(JUDGMENTS.c.assignment_id == ASSIGNMENTS.c.id),
        )
        .order_by(ASSIGNMENTS.c.id)
        .limit(1)
    )
    shown_by_id = _SHOWN.where(ASSIGNMENTS.c.id == bindparam("assignment_id"))
    current = (
        select(JUDGMENTS.c.id, JUDGMENTS.c.kind)
        .where(JUDGMENTS.c.assignment_id == bindparam("assignment_id"))
        .order_by(JUDGMENTS.c.id.desc())
        .limit(1)
    )
    candidates = _candidates_q(gold=False).limit(20)
    gold_candidates = _candidates_q(gold=True).limit(20)
    count_candidates = select(func.count()).select_from(_candidates_q(gold=False).subquery())
    active_one = _active_counts_q(one_task=True)
    # Lock the rows we decide on (PostgreSQL; SQLite ignores FOR UPDATE). NO KEY UPDATE: the foreign-key checks of
    # concurrent inserts (KEY SHARE) do not wait for it.
    lock_task = select(TASKS.c.id).where(TASKS.c.id == bindparam("task_id")).with_for_update(key_share=True)
    lock_assignment = (
        select(ASSIGNMENTS, TASKS.c.kind, TASKS.c.overlap, TASKS.c.gold_ranks.is_not(None).label("gold"))
        .join(TASKS, TASKS.c.id == ASSIGNMENTS.c.task_id)
        .where(ASSIGNMENTS.c.id == bindparam("assignment_id"))
        .with_for_update(of=ASSIGNMENTS, key_share=True)
    )
    prior = _JUDGMENT_ROWS.where(JUDGMENTS.c.user_id == bindparam("user_id"), JUDGMENTS.c.client_id == bindparam("client_id"))
    judgment_by_id = _JUDGMENT_ROWS.where(JUDGMENTS.c.id == bindparam("judgment_id"))
    _now = bindparam("now", type_=UTCDateTime())
    _user_cols = (USERS.c.id, USERS.c.name, USERS.c.role)
    active_user = select(*_user_cols).where(USERS.c.id == bindparam("user_id"), USERS.c.deactivated_at.is_(None))
    user_by_token = select(*_user_cols).where(USERS.c.api_token_hash == bindparam("token_hash"), USERS.c.deactivated_at.is_(None))
    invite_user = (
        select(*_user_cols)
        .join(INVITES, INVITES.c.user_id == USERS.c.id)
        .where(
            INVITES.c.token_hash == bindparam("token_hash"), INVITES.c.used_at.is_(None), INVITES.c.revoked_at.is_(None),
            INVITES.c.expires_at > _now, USERS.c.deactivated_at.is_(None),
        )
    )  # fmt: skip
    session_user = (
        select(*_user_cols)
        .join(SESSIONS, SESSIONS.c.user_id == USERS.c.id)
        .where(
            SESSIONS.c.token_hash == bindparam("token_hash"), SESSIONS.c.revoked_at.is_(None), SESSIONS.c.expires_at > _now,
            USERS.c.deactivated_at.is_(None),
        )
    )  # fmt: skip


_INSERTS = {t: insert(t) for t in (USERS, INVITES, SESSIONS, TASKS, SPLITS, ASSIGNMENTS, JUDGMENTS, META, GUIDELINES)}


def _insert(c: Connection, table: Any, **values: Any) -> int:
    return c.execute(_INSERTS[table], values).inserted_primary_key[0]


def _shown(row: Any, current: int | None) -> Shown:
    return Shown(
        assignment_id=row.id,
        task_id=row.task_id,
        kind=row.kind,
        prompt=row.prompt,
        responses=[row.responses[i] for i in row.shown_order],
        shown_order=list(row.shown_order),
        current_judgment_id=current,
    )


def _check_spec(spec: TaskSpec) -> None:
    if spec.kind not in KINDS:
        raise StoreError(f"kind must be one of {', '.join(KINDS)}, got {spec.kind!r}", "kind")
    k = len(spec.responses)
    if spec.kind == "pairwise" and k != 2:
        raise StoreError(f"a pairwise task needs exactly 2 responses, got {k}", "responses")
    if spec.kind == "ranking" and not 2 <= k <= MAX_RANKING:
        raise StoreError(f"a ranking task needs 2..{MAX_RANKING} responses, got {k}", "responses")
    if not isinstance(spec.prompt, str) or not all(isinstance(r, str) for r in spec.responses):
        raise StoreError("prompt and responses must be strings", "responses")
    if "\x00" in spec.prompt or any("\x00" in r for r in spec.responses):
        raise StoreError("prompt and responses must not contain NUL characters", "responses")
    if spec.ended is not None and (
        not isinstance(spec.ended, list) or len(spec.ended) != k or not all(isinstance(e, bool) for e in spec.ended)
    ):
        raise StoreError(f"ended must be a list of {k} true/false flags (one per response), got {spec.ended!r}", "ended")
    if spec.overlap < 0:
        raise StoreError(f"overlap must be >= 0, got {spec.overlap}", "overlap")
    if spec.gold_ranks is not None:
        _check_ranks(spec.gold_ranks, k, "gold_ranks")


def _check_ranks(ranks: Any, k: int, name: str) -> None:
    if not isinstance(ranks, list) or len(ranks) != k:
        raise StoreError(f"{name} must be a list of {k} ranks (one per response), got {ranks!r}", name)
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= k:
            raise StoreError(f"{name} must hold integers 1..{k} (1 = best, ties share a rank), got {ranks!r}", name)
    # Standard competition ranking: a response's rank is 1 + the number ranked strictly better, so [2, 2] (no best)
    # or [1, 1, 2] do not say one consistent thing; tied responses share a rank and the next rank skips.
    for r in ranks:
        if r != 1 + sum(x < r for x in ranks):
            raise StoreError(
                f"{name} {ranks!r}: rank {r} needs exactly {r - 1} responses ranked better; ties share a rank and the "
                "next rank skips (e.g. 1, 1, 3)",
                name,
            )


def _check_answer_fields(ans: Answer) -> None:
    """Types and bounds before any SQL: ids fit the INTEGER columns, text has no NUL (PostgreSQL refuses it)."""
    if not isinstance(ans.client_id, str) or not 1 <= len(ans.client_id) <= 100:
        raise StoreError("client_id must be 1..100 characters", "client_id")
    for name in ("assignment_id", "supersedes"):
        v = getattr(ans, name)
        if v is None and name == "supersedes":
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_ID:
            raise StoreError(f"{name} must be an id (an integer 1..{MAX_ID}), got {v!r}", name)
    for name in ("client_id", "choice", "strength", "skip_reason", "flag", "note"):
        v = getattr(ans, name)
        if v is not None and not isinstance(v, str):
            raise StoreError(f"{name} must be text, got {type(v).__name__}", name)
        if v and "\x00" in v:
            raise StoreError(f"{name} must not contain NUL characters", name)
    if isinstance(ans.time_spent_ms, bool) or not isinstance(ans.time_spent_ms, int):
        raise StoreError("time_spent_ms must be an integer", "time_spent_ms")


def _canonical(kind: str, order: list[int], ans: Answer, strength_required: bool = True) -> tuple[str, dict, dict]:
    """Validate an answer against the task kind; return (judgment kind, answer in task terms, raw answer)."""
    given = [n for n in ("choice", "ranks", "skip_reason", "flag") if getattr(ans, n) not in (None, "")]
    if len(given) != 1:
        names = "choice" if kind == "pairwise" else "ranks"
        raise StoreError(
            f"give exactly one of {names}, skip_reason or flag (got {', '.join(given) or 'none'})",
            given[1] if len(given) > 1 else names,
        )
    what = given[0]
    note = {"note": ans.note} if ans.note else {}  # kept in raw with any answer (raw = exactly as submitted)
    if what == "skip_reason":
        if not isinstance(ans.skip_reason, str) or not ans.skip_reason.strip():
            raise StoreError("skip_reason must say why (not blank)", "skip_reason")
        reason = ans.skip_reason[:500]
        return "skip", {"reason": reason}, {"skip_reason": reason, **note}
    if what == "flag":
        if ans.flag not in FLAGS:
            raise StoreError(f"flag must be one of {', '.join(FLAGS)}, got {ans.flag!r}", "flag")
        text = (ans.note or "")[:1000]
        return "flag", {"flag": ans.flag, "note": text}, {"flag": ans.flag, "note": text}
    if what == "choice":
        if kind != "pairwise":
            raise StoreError("this is a ranking task: send ranks, not choice", "choice")
        if ans.choice not in CHOICES:
            raise StoreError(f"choice must be one of {', '.join(CHOICES)}, got {ans.choice!r}", "choice")
        if ans.choice not in ("A", "B") and ans.strength is not None:
            raise StoreError(f"strength goes only with A or B: a {ans.choice!r} answer has none", "strength")
        if ans.choice in ("A", "B"):
            if ans.strength not in STRENGTHS and (strength_required or ans.strength is not None):
                raise StoreError(f"strength must be one of {', '.join(STRENGTHS)}, got {ans.strength!r}", "strength")
            better = order[0] if ans.choice == "A" else order[1]
            answer = {"choice": "better", "better": better, "worse": 1 - better, "strength": ans.strength}
        else:
            answer = {"choice": ans.choice}
        return "pairwise", answer, {"choice": ans.choice, "strength": ans.strength, **note}
    if kind != "ranking":
        raise StoreError("this is a pairwise task: send choice, not ranks", "ranks")
    _check_ranks(ans.ranks, len(order), "ranks")
    canonical = [0] * len(order)
    for pos, r in enumerate(ans.ranks):
        canonical[order[pos]] = r
    return "ranking", {"ranks": canonical}, {"ranks": list(ans.ranks), **note}


def _to_record(r: Any) -> JudgmentRecord:
    return JudgmentRecord(
        id=r.id,
        client_id=r.client_id,
        user_id=r.user_id,
        user_name=r.user_name,
        user_role=r.user_role,
        task_id=r.task_id,
        assignment_id=r.assignment_id,
        created_at=r.created_at,
        shown_order=list(r.shown_order),
        kind=r.kind,
        answer=dict(r.answer),
        raw=dict(r.raw),
        time_spent_ms=r.time_spent_ms,
        supersedes_id=r.supersedes_id,
    )
