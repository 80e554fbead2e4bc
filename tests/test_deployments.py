"""prefect.yaml is written from flows/deployments.py: the committed file is what the command writes,
and every deployment in it (name, entrypoint, schedules, triggers, work pool) is the one
``bookcounter flows serve`` serves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.events import DeploymentTriggerTypes
from pydantic import TypeAdapter

from bookcounter.settings import REPO_ROOT, Settings


def default_crons(settings: Settings) -> Settings:
    """``settings`` with the crons' defaults, whatever the environment says (the file's are those)."""
    return settings.model_copy(update={k: Settings.model_fields[k].default for k in ("loop_cron", "backup_cron")})


def in_repo(entrypoint: str) -> str:
    """A Prefect entrypoint (its path relative to the working directory) relative to the repository."""
    path, function = entrypoint.rsplit(":", 1)
    return f"{Path(path).resolve().relative_to(REPO_ROOT).as_posix()}:{function}"


def test_the_committed_prefect_yaml_is_what_the_command_writes(settings: Settings) -> None:
    from flows.deployments import write_prefect_yaml

    committed = (REPO_ROOT / "prefect.yaml").read_text()
    assert committed == write_prefect_yaml(default_crons(settings)), (
        "prefect.yaml is stale: run `bookcounter flows write-prefect-yaml`"
    )


def test_every_deployment_in_prefect_yaml_is_one_that_flows_serve_serves(settings: Settings) -> None:
    from flows.deployments import GPU_FLOWS, deployments

    declared = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    served = deployments(default_crons(settings))
    assert [(d["name"], d["entrypoint"]) for d in declared] == [(d.name, in_repo(d.entrypoint)) for d in served]
    for yml, ours in zip(declared, served, strict=True):
        schedules = [s.schedule for s in ours.schedules]
        assert len(yml.get("schedules", [])) == len(schedules), ours.name
        for spec, schedule in zip(yml.get("schedules", []), schedules, strict=True):
            if "cron" in spec:
                assert CronSchedule(cron=spec["cron"]).cron == schedule.cron
            else:
                assert isinstance(schedule, IntervalSchedule)
                assert dt.timedelta(seconds=spec["interval"]) == schedule.interval
        triggers = [TypeAdapter(DeploymentTriggerTypes).validate_python(t) for t in yml.get("triggers", [])]
        assert [(t.expect, t.match, t.name, t.enabled) for t in triggers] == [
            (t.expect, t.match, t.name, t.enabled) for t in ours.triggers
        ], ours.name
        assert yml["description"] == ours.description
        assert yml["work_pool"]["name"] == ("bookcounter-gpu" if ours.flow_name in GPU_FLOWS else "bookcounter")
    # the loop runs on the annotations-ready event and nightly: the two ways the loop starts
    (loop,) = [d for d in declared if d["entrypoint"] == "flows/loop.py:loop_flow"]
    assert loop["triggers"][0]["expect"] == ["bookcounter.annotations.ready"] and loop["schedules"] == [
        {"cron": "0 2 * * *"}
    ]


@pytest.mark.parametrize("field", ["loop_cron", "backup_cron"])
def test_the_crons_come_from_the_settings(settings: Settings, field: str) -> None:
    from flows.deployments import prefect_yaml

    spec = prefect_yaml(settings.model_copy(update={field: "5 4 * * 1"}))
    crons = [s["cron"] for d in spec["deployments"] for s in d.get("schedules", []) if "cron" in s]
    assert crons.count("5 4 * * 1") == 1
