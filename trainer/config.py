"""Training settings: the base of the config records, and one ``key=value`` syntax for the CLI and the benches."""

from __future__ import annotations

import json
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from bookcounter.errors import UserError


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=3", "model.image_size=640", "init=none"]`` -> ``{"epochs": 3, "model": {"image_size": 640}, "init":
    "none"}``.

    A value is read as JSON when it parses (numbers, true/false/null, lists), else kept as text;
    a dotted key sets a field of a nested setting.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UserError(f"setting {pair!r} is not KEY=VALUE (e.g. epochs=20 or model.image_size=640)")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        *parents, leaf = key.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


class Config(BaseModel):
    """A settings record (the network's, the training's): unknown keys and values out of range
    are errors, said in one line; ``to_dict`` is its JSON form (model.json, checkpoints, MLflow)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise UserError(f"{cls.__name__}: {'; '.join(_problem(cls, err) for err in e.errors())}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _problem(cls: type[BaseModel], err: Any) -> str:
    where = ".".join(map(str, err["loc"]))
    if err["type"] == "extra_forbidden":
        return f"unknown setting {where} (known: {', '.join(cls.model_fields)})"
    return f"{where}: {err['msg']}"
