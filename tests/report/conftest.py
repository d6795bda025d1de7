from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict) -> dict:
    # Playwright's own browser download is unreachable here: drive Debian's Chromium instead.
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture
def artifacts_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("RLHF_TEST_ARTIFACTS") or tmp_path / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d
