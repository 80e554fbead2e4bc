"""Prefect servers of the tests' own (the triggers service on), each started once per session.

``prefect_server``: on SQLite in its own temp state dir. ``prefect_server_pg``: on its own
database of the session's PostgreSQL cluster (``fixtures_postgres.py``). Their value is the
server's settings (``prefect_port``, ``prefect_url``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fixtures_labelstudio import free_port
from fixtures_postgres import Cluster

from bookcounter.settings import Settings
from flows.prefect_server import prefect_ui_server, start_ui


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A Prefect server of its own (the triggers service on), started once per session."""
    server = Settings(state_dir=tmp_path_factory.mktemp("prefect"), prefect_port=free_port())
    start_ui(server)
    try:
        yield server
    finally:
        prefect_ui_server(server).stop()


@pytest.fixture(scope="session")
def prefect_server_pg(postgres: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A Prefect server on PostgreSQL (its own database), started once per session."""
    server = Settings(
        state_dir=tmp_path_factory.mktemp("prefect-pg"),
        prefect_port=free_port(),
        prefect_database_url=postgres.create_database("prefect"),
    )
    start_ui(server)
    try:
        yield server
    finally:
        prefect_ui_server(server).stop()
