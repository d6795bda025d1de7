import pytest

from tests.diagnose.tiny_runs import build_base


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Base LM (a healthy SFT stage), reward models and prompts, built once per session."""
    return build_base(tmp_path_factory.mktemp("tiny"))
