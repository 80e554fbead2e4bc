"""The flows as deployments: what ``bookcounter flows serve`` runs and ``prefect.yaml`` declares."""

from __future__ import annotations

from prefect import serve

from bookcounter.settings import Settings
from flows.count_folder import count_folder_flow
from flows.loop import collect_flow, loop_flow, retrain_flow, watch_annotations_flow
from flows.prelabel import prelabel_flow

INBOX_POLL_SECONDS = 30  # a photo dropped in the inbox is pre-labelled within a minute
ANNOTATION_POLL_SECONDS = 60


def deployments(settings: Settings) -> list:
    return [
        prelabel_flow.to_deployment(name="inbox", interval=INBOX_POLL_SECONDS,
                                    description="Pre-label new inbox photos into Label Studio."),
        watch_annotations_flow.to_deployment(name="annotation-count", interval=ANNOTATION_POLL_SECONDS,
                                             description="Run the loop once enough new annotations arrived."),
        loop_flow.to_deployment(name="nightly", cron=settings.loop_cron,
                                description="Collect, retrain and promote on a schedule (or by hand)."),
        collect_flow.to_deployment(name="manual", description="Collect annotations into a new dataset version."),
        retrain_flow.to_deployment(name="manual", description="Train, evaluate and promote on the newest version."),
        count_folder_flow.to_deployment(name="manual", description="Count the books in a folder of photos into a CSV "
                                        "(on Dask with BOOKCOUNTER_DASK_ADDRESS)."),
    ]


def serve_all(settings: Settings) -> None:
    """Serve every deployment with its schedule until interrupted."""
    serve(*deployments(settings))
