"""The Label Studio admin password and API token: random per install, kept in ``<state_dir>/secrets.env``.

The first time they are needed (``bookcounter labelstudio start``, or any command that talks
to Label Studio), both are generated and written to ``secrets.env`` with mode 0600, in the
same ``KEY=value`` form as ``.env``; the path (never the values) is printed once, on stderr.
``BOOKCOUNTER_LS_PASSWORD`` and ``BOOKCOUNTER_LS_TOKEN`` (environment or ``.env``) override
the file. Values are :class:`pydantic.SecretStr`, so a repr, a log line or a settings dump
shows ``**********``.
"""

from __future__ import annotations

import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values
from pydantic import SecretStr

from bookcounter.atomic import atomic_write
from bookcounter.errors import UserError

PASSWORD_KEY, TOKEN_KEY = "BOOKCOUNTER_LS_PASSWORD", "BOOKCOUNTER_LS_TOKEN"


@dataclass(frozen=True)
class LabelStudioSecrets:
    password: SecretStr
    token: SecretStr  # Label Studio's legacy API token: at most 40 characters (its Token.key column)


def generate() -> dict[str, str]:
    """A fresh password (32 URL-safe characters) and token (40 hex digits)."""
    return {PASSWORD_KEY: secrets.token_urlsafe(24), TOKEN_KEY: secrets.token_hex(20)}


def load_or_create(path: Path, password: SecretStr | None = None, token: SecretStr | None = None) -> LabelStudioSecrets:
    """The overrides given, else the values in ``path``; the file is created first when it is needed and missing."""
    if password is None or token is None:
        stored = _read(path) if path.is_file() else _create(path)
        password = password or SecretStr(stored[PASSWORD_KEY])
        token = token or SecretStr(stored[TOKEN_KEY])
    return LabelStudioSecrets(password, token)


def _read(path: Path) -> dict[str, str]:
    values = {k: v for k, v in dotenv_values(path).items() if v}
    missing = [k for k in (PASSWORD_KEY, TOKEN_KEY) if k not in values]
    if missing:
        raise UserError(f"{path}: no {' or '.join(missing)}; add it, or delete the file to generate new ones")
    return values


def _create(path: Path) -> dict[str, str]:
    """Write new secrets to ``path`` atomically, mode 0600 from the start; if another process
    wins the race, its file is the one used."""
    values = generate()
    lines = ["# Label Studio admin password and API token of this bookcounter install (keep private)"]
    try:
        with atomic_write(path, mode=0o600, exclusive=True) as tmp:  # the temp is 0600 from the start
            tmp.write_text("\n".join([*lines, *(f"{k}={v}" for k, v in values.items())]) + "\n")
    except FileExistsError:  # the file appeared meanwhile
        return _read(path)
    print(f"bookcounter: generated a Label Studio admin password and API token in {path} (mode 0600)", file=sys.stderr)
    return values
