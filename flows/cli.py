"""``bookcounter flows ...`` and ``bookcounter ui prefect``: running the loop through Prefect."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from bookcounter.settings import REPO_ROOT, get_settings

# The work each of the demo's trainings may do, in images seen: smaller than the nightly budget
# (settings.retrain_budget_images) so that the demo ends in about half an hour on 2 cores.
DEMO_BUDGET_IMAGES = 1000

flows_app = typer.Typer(
    help="The loop as Prefect flows: run one now, or serve them all with their schedules and triggers.",
    no_args_is_help=True,
)


class FlowName(StrEnum):
    prelabel = "prelabel"
    collect = "collect"
    retrain = "retrain"
    loop = "loop"
    watch_annotations = "watch-annotations"
    backup = "backup"
    count_folder = "count-folder"


@flows_app.command("run")
def run_flow(
    name: FlowName = typer.Argument(..., help="Which flow to run."),
    budget_images: int | None = typer.Option(
        None,
        help="retrain/loop: the work a training may do, in images seen (default BOOKCOUNTER_RETRAIN_BUDGET_IMAGES).",
    ),
    inbox: str | None = typer.Option(None, help="prelabel: the inbox folder (default var/inbox)."),
    run_name: str | None = typer.Option(None, help="Name of the flow run shown in the Prefect UI."),
    photos: list[str] | None = typer.Option(
        None, "--photos", help="count-folder: a photo or folder (repeat for more)."
    ),
    out: str = typer.Option("counts.csv", help="count-folder: the results file (as `bookcounter count --out`)."),
) -> None:
    """Run one flow now, in this process (it shows up in the Prefect UI like a scheduled run)."""
    from flows.prefect_server import configure_prefect

    configure_prefect(get_settings())
    from flows.backup import backup_flow
    from flows.count_folder import count_folder_flow
    from flows.loop import collect_flow, loop_flow, retrain_flow, watch_annotations_flow
    from flows.prelabel import prelabel_flow

    chosen = {
        FlowName.prelabel: (prelabel_flow, {"inbox": inbox}),
        FlowName.collect: (collect_flow, {}),
        FlowName.retrain: (retrain_flow, {"budget_images": budget_images}),
        FlowName.loop: (loop_flow, {"budget_images": budget_images}),
        FlowName.watch_annotations: (watch_annotations_flow, {}),
        FlowName.backup: (backup_flow, {}),
        FlowName.count_folder: (count_folder_flow, {"paths": photos or [], "out": out}),
    }[name]
    fn, params = chosen
    if run_name:
        fn = fn.with_options(flow_run_name=run_name)
    fn(**params)


@flows_app.command("serve")
def serve_flows() -> None:
    """Serve all deployments until Ctrl-C: prelabel every 30 s (inbox watch,
    BOOKCOUNTER_INBOX_POLL_SECONDS), the annotation count every minute
    (BOOKCOUNTER_ANNOTATION_POLL_SECONDS), the loop nightly (BOOKCOUNTER_LOOP_CRON) and on each
    bookcounter.annotations.ready event (enough new annotations, or "Start training"), a backup
    nightly (BOOKCOUNTER_BACKUP_CRON, into BOOKCOUNTER_BACKUP_DIR), collect/retrain on demand.

    Schedules need Prefect's scheduler, which the temporary (ephemeral) server does not run, so
    this first starts the Prefect server and UI in the background (as `bookcounter ui prefect`)."""
    from flows.prefect_server import configure_prefect, start_ui

    url = start_ui(get_settings())
    configure_prefect(get_settings())  # the server runs now, so Prefect reports to it
    typer.echo(f"Prefect UI: {url}")
    from flows.deployments import serve_all

    serve_all(get_settings())


@flows_app.command("write-prefect-yaml")
def write_prefect_yaml_command(
    out: Path = typer.Option(REPO_ROOT / "prefect.yaml", help="Where to write it."),
) -> None:
    """Write prefect.yaml (the deployments for Prefect work pools) from flows/deployments.py, the
    one declaration of the deployments; the crons are the current settings'."""
    from flows.prefect_server import configure_prefect

    settings = get_settings()
    configure_prefect(settings)
    from flows.deployments import write_prefect_yaml

    out.write_text(write_prefect_yaml(settings))
    typer.echo(f"wrote {out}")


def ui_prefect(stop: bool = typer.Option(False, "--stop", help="Stop the Prefect UI server instead.")) -> None:
    """Start the Prefect server and UI on 127.0.0.1 over bookcounter's Prefect database (var/prefect);
    later flows report to it. Runs in the background; --stop ends it."""
    from flows.prefect_server import prefect_ui_server, start_ui

    settings = get_settings()
    if stop:
        typer.echo("stopped" if prefect_ui_server(settings).stop() else "not running")
        return
    typer.echo(f"Prefect UI: {start_ui(settings)}  (log: {prefect_ui_server(settings).log_file})")


def status_command() -> None:
    """Show every service bookcounter starts: its URL, pid, up or down, uptime and log file."""
    from flows.services import status_lines

    for line in status_lines(get_settings()):
        typer.echo(line)


def start_command(
    names: list[str] | None = typer.Argument(
        None, metavar="NAME", help="Services to start (see 'bookcounter status'); default: all of them."
    ),
) -> None:
    """Start the services in the background (Label Studio first); each one unless it runs already."""
    from flows.services import start

    for service, now in start(get_settings(), names or ()):
        typer.echo(f"{service.title} ({service.name}): {'started' if now else 'already running'} at {service.url}")


def stop_command(
    names: list[str] | None = typer.Argument(
        None, metavar="NAME", help="Services to stop (see 'bookcounter status'); default: all of them."
    ),
) -> None:
    """Stop the services bookcounter started, all of them by default; only processes it started."""
    from flows.services import stop

    for service, pid in stop(get_settings(), names or ()):
        typer.echo(f"{service.title} ({service.name}): {f'stopped (pid {pid})' if pid else 'not running'}")


def demo(
    first_train_photos: int = typer.Option(
        40, help="Train photos in the first dataset version; the rest go through the inbox."
    ),
    budget_images: int = typer.Option(
        DEMO_BUDGET_IMAGES,
        help="The work each of the demo's two trainings may do, in images seen (the nightly default is larger).",
    ),
) -> None:
    """Run the whole loop for real on the sample photos (open-shelves, BOOKCOUNTER_SAMPLE_DIR):
    first version -> first model -> inbox -> prelabel -> replayed annotations -> collect ->
    retrain -> promote or reject -> serve. Safe to re-run after an interruption."""
    from flows.prefect_server import configure_prefect

    configure_prefect(get_settings())
    from flows.demo import run_demo

    run_demo(get_settings(), first_train_photos, budget_images)
