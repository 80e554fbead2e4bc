"""The flows as deployments: the one declaration of what ``bookcounter flows serve`` runs and of
``prefect.yaml`` (written from it by ``bookcounter flows write-prefect-yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.events import DeploymentEventTrigger

from annotator.events import ANNOTATIONS_READY, RESOURCE_PREFIX
from bookcounter.settings import REPO_ROOT, Settings
from flows.backup import backup_flow
from flows.count_folder import count_folder_flow
from flows.loop import collect_flow, loop_flow, retrain_flow, watch_annotations_flow
from flows.prelabel import prelabel_flow

CPU_POOL = "bookcounter"
GPU_POOL = "bookcounter-gpu"  # the flows that train
GPU_FLOWS = {"loop", "retrain"}


def annotations_ready_trigger() -> DeploymentEventTrigger:
    """One ``loop`` run per ``bookcounter.annotations.ready`` event (enough new annotations, or
    "Start training"); the run shows the event as its cause in the Prefect UI."""
    return DeploymentEventTrigger(
        name="loop on annotations ready",
        expect={ANNOTATIONS_READY},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}.*"},
    )


def deployments(settings: Settings) -> list:
    return [
        prelabel_flow.to_deployment(
            name="inbox",
            interval=settings.inbox_poll_seconds,
            description="Pre-label new inbox photos into Label Studio.",
        ),
        watch_annotations_flow.to_deployment(
            name="annotation-count",
            interval=settings.annotation_poll_seconds,
            description="Emit bookcounter.annotations.ready once enough new annotations arrived.",
        ),
        loop_flow.to_deployment(
            name="loop",
            cron=settings.loop_cron,
            triggers=[annotations_ready_trigger()],
            description="Collect, retrain and promote: nightly, and on bookcounter.annotations.ready.",
        ),
        backup_flow.to_deployment(
            name="nightly",
            cron=settings.backup_cron,
            description="Back up Label Studio, MLflow, datasets and decisions; keep the last K.",
        ),
        collect_flow.to_deployment(name="manual", description="Collect annotations into a new dataset version."),
        retrain_flow.to_deployment(name="manual", description="Train, evaluate and promote on the newest version."),
        count_folder_flow.to_deployment(
            name="manual",
            description="Count the books in a folder of photos into a CSV (on Dask with BOOKCOUNTER_DASK_ADDRESS).",
        ),
    ]


def serve_all(settings: Settings) -> None:
    """Serve every deployment with its schedule and trigger until interrupted."""
    serve(*deployments(settings))


PREFECT_YAML_HEADER = """\
# Written by `bookcounter flows write-prefect-yaml` from flows/deployments.py: edit that, not this.
# The same flows as `bookcounter flows serve`, declared for Prefect work pools, for when a team
# outgrows one machine. The crons are the settings' (BOOKCOUNTER_LOOP_CRON, BOOKCOUNTER_BACKUP_CRON)
# when the file was written. Deploy from the repository root with the app venv active:
#
#   prefect work-pool create bookcounter --type process        # CPU steps (prelabel, collect, watch)
#   prefect work-pool create bookcounter-gpu --type process    # or --type docker / kubernetes on a GPU node
#   prefect deploy --all
#   prefect worker start --pool bookcounter                    # on each CPU machine
#   prefect worker start --pool bookcounter-gpu                # on the GPU machine(s)
#
# With Docker or Kubernetes pools, build an image from this repository (`pip install -e .`),
# set it as the pool's image and give the GPU pool's job template an `nvidia.com/gpu` limit;
# all workers must share BOOKCOUNTER_STATE_DIR (a volume) and reach Label Studio.
# `prefect deployment run count-folder/manual -p paths='["/photos"]' -p out=/photos/counts.csv`;
# set BOOKCOUNTER_DASK_ADDRESS on the worker to spread the photos over a Dask cluster.
"""


def prefect_yaml(settings: Settings) -> dict[str, Any]:
    """``prefect.yaml``'s content: every deployment of :func:`deployments`, with its schedules,
    triggers and work pool (:data:`GPU_POOL` for :data:`GPU_FLOWS`)."""
    import prefect

    return {
        "name": "bookcounter",
        "prefect-version": prefect.__version__,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $BOOKCOUNTER_REPO_DIR }}"}}],
        "deployments": [_declared(d) for d in deployments(settings)],
    }


def write_prefect_yaml(settings: Settings) -> str:
    """:func:`prefect_yaml` as the text of ``prefect.yaml``."""
    return PREFECT_YAML_HEADER + yaml.safe_dump(prefect_yaml(settings), sort_keys=False, width=120)


def _declared(deployment: Any) -> dict[str, Any]:
    path, function = deployment.entrypoint.rsplit(":", 1)  # the path is relative to the working directory
    out: dict[str, Any] = {
        "name": deployment.name,
        "entrypoint": f"{Path(path).resolve().relative_to(REPO_ROOT).as_posix()}:{function}",
        "description": deployment.description,
    }
    schedules = [_schedule(s.schedule) for s in deployment.schedules]
    if schedules:
        out["schedules"] = schedules
    if deployment.triggers:
        out["triggers"] = [
            {"type": t.type, **t.model_dump(mode="json", exclude_unset=True)} for t in deployment.triggers
        ]
    out["work_pool"] = {"name": GPU_POOL if deployment.flow_name in GPU_FLOWS else CPU_POOL}
    return out


def _schedule(schedule: Any) -> dict[str, Any]:
    if isinstance(schedule, IntervalSchedule):
        return {"interval": int(schedule.interval.total_seconds())}
    if isinstance(schedule, CronSchedule):
        return {"cron": schedule.cron}
    raise TypeError(f"prefect.yaml has no form for {type(schedule).__name__} here")
