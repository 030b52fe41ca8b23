from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import BACKENDS, SESSION, database_env, fresh_database
from tests.support import Background, Holds, Stack, running

_names = itertools.count()
ALLOWED_ORIGIN = "https://app.example.com"


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each store backend in turn: a test that asks for it (or for the stack) runs on both."""
    name: str = request.param
    return name


# For a test of what Pushpin does with streams (keep-alives, its queue, paging), where the store
# answers as any other test shows it does: it runs on SQLite's shared stack only.
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture(scope="session")
def stack(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One run command (Pushpin and origin) shared by the tests that only need a server, on
    each backend in turn."""
    env = database_env(backend)
    with running(tmp_path_factory.mktemp("stack"), CORS_ORIGINS=ALLOWED_ORIGIN, **env) as s:
        yield s


@pytest.fixture
def holds(stack: Stack) -> Iterator[Holds]:
    """Requests held in the shared stack's Pushpin, and how their answers came."""
    with Holds(stack) as h:
        yield h


@pytest.fixture(scope="session", autouse=True)
def _drop_databases() -> Iterator[None]:
    """Drops every database the session made with fresh_database, whichever test made it."""
    yield
    SESSION.drop_all()


@pytest.fixture
def postgres_url() -> str:
    """The URL of a new empty PostgreSQL database for this test alone."""
    return fresh_database()


@pytest.fixture
def fresh_data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def unique(prefix: str) -> str:
    """A JID no other test uses."""
    return f"{prefix}{next(_names)}@example.com"


@pytest.fixture(scope="module")
def bg() -> Iterator[Background]:
    """An event loop in a thread, for tests that hold many connections (streams, sockets)."""
    background = Background()
    yield background
    background.close()
