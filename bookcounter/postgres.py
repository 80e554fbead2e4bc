"""PostgreSQL's own tools for a database named by a ``postgresql://`` URL: dump, restore, is it empty.

``pg_dump``/``pg_restore`` come from ``PATH`` or Debian's ``/usr/lib/postgresql/<version>/bin``
(the newest; ``make setup`` installs it). The password goes to them in ``PGPASSWORD``, never on
the command line, where ``ps`` would show it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse, urlunparse

from bookcounter.errors import UserError

DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"


class PostgresError(UserError):
    """A PostgreSQL tool that is missing or failed; one line saying why."""


def tool(name: str) -> str:
    """The path of ``pg_dump``, ``pg_restore``, ``initdb``, ... (PATH first, then Debian's newest)."""
    found = shutil.which(name)
    if found:
        return found
    debian = sorted(Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")), key=lambda p: int(p.parent.name), reverse=True)
    for bindir in debian:
        if (bindir / name).is_file():
            return str(bindir / name)
    raise PostgresError(f"{name} not found: install PostgreSQL ('make setup' does: apt-get install postgresql)")


def split_password(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password, and the environment that gives libpq the password."""
    parsed = urlparse(url)
    env = {"PGPASSWORD": unquote(parsed.password)} if parsed.password else {}
    netloc = parsed.netloc.rsplit("@", 1)
    if parsed.password:
        netloc[0] = netloc[0].split(":", 1)[0]
    return urlunparse(parsed._replace(scheme="postgresql", netloc="@".join(netloc))), env


def _run(name: str, args: list[str], url: str) -> None:
    dbname, env = split_password(url)
    done = subprocess.run(
        [tool(name), *args, f"--dbname={dbname}"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        err = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise PostgresError(f"{name} {dbname}: {err}")


def dump(url: str, dst: Path) -> None:
    """``pg_dump`` the database into ``dst`` (custom format: one consistent snapshot, compressed)."""
    _run("pg_dump", ["--format=custom", f"--file={dst}"], url)


def restore(url: str, src: Path) -> None:
    """``pg_restore`` a custom-format dump into the database (empty: see :func:`table_count`), all or nothing."""
    _run("pg_restore", ["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", str(src)], url)


def table_count(url: str) -> int:
    """How many tables the database holds outside PostgreSQL's own schemas."""
    import psycopg2

    with psycopg2.connect(url) as con, con.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        (n,) = cur.fetchone()
    con.close()
    return int(n)
