"""A throwaway PostgreSQL cluster, and the services that bookcounter runs on it, once per session.

``postgres`` (session): ``initdb`` + ``pg_ctl start`` in a temp dir, on a free loopback port, with
password (scram) login for the user ``bookcounter``; stopped and removed at session end. As root
the server runs as the ``postgres`` user (PostgreSQL refuses root). ``make setup`` installs it.
``postgres.create_database()`` makes a new empty database and returns its URL.

``labelstudio_pg`` (session): a second Label Studio server, on its own database of that cluster.
``ls_pg_settings``: per test, like ``ls_settings`` but on ``labelstudio_pg``.
(``prefect_server_pg`` is in ``fixtures_prefect.py``.)
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures_labelstudio import free_port

from annotator.labelstudio.server import start_server, stop_server
from bookcounter.postgres import PostgresError, tool
from bookcounter.settings import Settings, get_settings

PG_USER = "bookcounter"
START_TIMEOUT_S = 60


@dataclass
class Cluster:
    port: int
    password: str

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "db") -> str:
        """A new empty database; its URL."""
        import psycopg2

        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        con = psycopg2.connect(self.url("postgres"))
        con.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        con.close()
        return self.url(name)

    def query(self, url: str, sql: str) -> list[tuple]:
        import psycopg2

        con = psycopg2.connect(url)
        try:
            with con.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            con.close()


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL will not run as root: there, run its tools as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    try:
        initdb, pg_ctl = tool("initdb"), tool("pg_ctl")
    except PostgresError as e:
        pytest.fail(f"{e} (or deselect these tests: -m 'not postgres')")
    root = Path(
        tempfile.mkdtemp(prefix="bookcounter-pg-")
    )  # not under pytest's 0700 root dir: the server user reads it
    data, log, pwfile = root / "data", root / "server.log", root / "pw"
    cluster = Cluster(free_port(), secrets.token_hex(12))
    pwfile.write_text(cluster.password)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    subprocess.run(
        _as_server_user(
            [
                initdb,
                "-D",
                str(data),
                "-U",
                PG_USER,
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=300,
    )
    options = f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
    subprocess.run(
        _as_server_user(
            [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start"]
        ),
        check=True,
        capture_output=True,
        timeout=START_TIMEOUT_S + 60,
    )
    try:
        yield cluster
    finally:
        subprocess.run(
            _as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            check=False,
            timeout=120,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def labelstudio_pg(postgres: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A Label Studio server on PostgreSQL (its own database); its settings."""
    server = Settings(
        state_dir=tmp_path_factory.mktemp("labelstudio-pg"),
        ls_port=free_port(),
        ls_database_url=postgres.create_database("labelstudio"),
    )
    start_server(server, timeout=300)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def ls_pg_settings(labelstudio_pg: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Fresh settings (own state dir) with their own project on the PostgreSQL Label Studio."""
    monkeypatch.setenv("BOOKCOUNTER_STATE_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("BOOKCOUNTER_LS_PORT", str(labelstudio_pg.ls_port))
    monkeypatch.setenv("BOOKCOUNTER_LS_DATABASE_URL", str(labelstudio_pg.ls_database_url))  # as its deployment says
    monkeypatch.setenv("BOOKCOUNTER_LS_PROJECT_TITLE", f"test-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    settings = get_settings()
    settings.inbox_dir.mkdir(parents=True)
    yield settings
    get_settings.cache_clear()
