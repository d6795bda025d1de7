"""Fixtures for the labeling tests: store backends (SQLite always, PostgreSQL from $RLHF_TEST_POSTGRES_URL), a
running server in a thread, and Playwright pointed at Debian's Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from rlhf.labeling.store import Store

PG_ENV = "RLHF_TEST_POSTGRES_URL"
CHROMIUM = "/usr/bin/chromium"


def postgres_url_or_skip() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL backend skipped: set {PG_ENV} (e.g. postgresql+psycopg://rlhf:rlhf_pw@127.0.0.1/rlhf_test)")
    try:
        eng = create_engine(url, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(text("select 1"))
        eng.dispose()
    except Exception as e:
        pytest.skip(f"PostgreSQL backend skipped: {PG_ENV} is unreachable ({type(e).__name__}: {str(e)[:120]})")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test: a SQLite file, or a new PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield str(tmp_path / "labels.db")
        return
    url = postgres_url_or_skip()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        # Every connection of the store gets search_path=<schema>, so its tables live (and die) there.
        yield make_url(url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    finally:
        with eng.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        eng.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn in a daemon thread of the test process (fast to start; the SIGKILL test uses a subprocess)."""

    def __init__(self, app: object):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def thread_server() -> type[ThreadServer]:
    return ThreadServer


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    # Playwright's own browser download is unreachable here: drive Debian's Chromium instead.
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture
def artifacts_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("RLHF_TEST_ARTIFACTS") or tmp_path / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


class ServerProcess:
    """`rlhf label serve` as a real subprocess on 127.0.0.1, its stdout and stderr captured in `log`."""

    def __init__(self, db_url: str, log: Path, *args: str):
        self.db_url, self.log, self.args, self.port = db_url, log, args, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        import httpx

        cmd = [sys.executable, "-m", "rlhf.labeling.cli", "label", "serve", "--db", self.db_url, "--port", str(self.port),
               *self.args]  # fmt: skip
        env = {**os.environ, "RLHF_LABEL_SECRET": "server-process-test-" + "k" * 32}
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start in 60 s")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def server_process() -> type[ServerProcess]:
    return ServerProcess
