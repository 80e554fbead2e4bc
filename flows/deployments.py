"""The flows as deployments: what ``bookcounter flows serve`` runs and ``prefect.yaml`` declares."""

from __future__ import annotations

from prefect import serve
from prefect.events import DeploymentEventTrigger

from annotator.events import ANNOTATIONS_READY, RESOURCE_PREFIX
from bookcounter.settings import Settings
from flows.backup import backup_flow
from flows.count_folder import count_folder_flow
from flows.loop import collect_flow, loop_flow, retrain_flow, watch_annotations_flow
from flows.prelabel import prelabel_flow

INBOX_POLL_SECONDS = 30  # a photo dropped in the inbox is pre-labelled within a minute
ANNOTATION_POLL_SECONDS = 60


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
        prelabel_flow.to_deployment(name="inbox", interval=INBOX_POLL_SECONDS,
                                    description="Pre-label new inbox photos into Label Studio."),
        watch_annotations_flow.to_deployment(name="annotation-count", interval=ANNOTATION_POLL_SECONDS,
                                             description="Emit bookcounter.annotations.ready once enough new annotations arrived."),
        loop_flow.to_deployment(name="loop", cron=settings.loop_cron, triggers=[annotations_ready_trigger()],
                                description="Collect, retrain and promote: nightly, and on bookcounter.annotations.ready."),
        backup_flow.to_deployment(name="nightly", cron=settings.backup_cron,
                                  description="Back up Label Studio, MLflow, datasets and decisions; keep the last K."),
        collect_flow.to_deployment(name="manual", description="Collect annotations into a new dataset version."),
        retrain_flow.to_deployment(name="manual", description="Train, evaluate and promote on the newest version."),
        count_folder_flow.to_deployment(name="manual", description="Count the books in a folder of photos into a CSV "
                                        "(on Dask with BOOKCOUNTER_DASK_ADDRESS)."),
    ]


def serve_all(settings: Settings) -> None:
    """Serve every deployment with its schedule and trigger until interrupted."""
    serve(*deployments(settings))
