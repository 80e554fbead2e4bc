"""The ``bookcounter`` command: one entry point, each part of the product adds its subcommands.

The top of the layers (see docs/layers.md): it composes every package, and nothing imports it.

Heavy libraries (torch, mlflow, prefect) are imported inside commands, so ``--help`` is fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before torch is imported by any command: idle OpenMP threads sleep instead of spinning, so
# training and inference degrade gracefully when the cores are shared with other servers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from annotator.cli import collect_command, dataset_app, labelstudio_app, prelabel_command, review_command
from bookcounter.errors import UserError
from flows.cli import demo, flows_app, start_command, status_command, stop_command, ui_prefect
from serving.cli import count_command, serve
from serving.ml_backend.server import ml_backend_cli
from trainer.cli import evaluate_command, mlflow_ui, promote_command, registry_app, train_command
from trainer.registry import load_predictor

app = typer.Typer(
    help="Count books in photos: pre-label with SAM, correct in Label Studio, retrain Mask R-CNN, "
    "promote the better model and serve it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(dataset_app, name="dataset")
app.add_typer(labelstudio_app, name="labelstudio")
app.add_typer(ml_backend_cli, name="ml-backend")
app.command("prelabel")(prelabel_command(champion=load_predictor))
app.command("collect")(collect_command(champion=load_predictor))
app.command("review")(review_command(champion=load_predictor))
app.command()(demo)
app.command("start")(start_command)
app.command("status")(status_command)
app.command("stop")(stop_command)
app.command()(serve)
app.command("count")(count_command)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("promote")(promote_command)
app.add_typer(registry_app, name="registry")
ui_app = typer.Typer(help="Start a web UI on 127.0.0.1.", no_args_is_help=True)
ui_app.command("mlflow")(mlflow_ui)
ui_app.command("prefect")(ui_prefect)
app.add_typer(flows_app, name="flows")
app.add_typer(ui_app, name="ui")


@app.command("setup-models")
def setup_models(
    sam_model_type: list[str] = typer.Option(
        None,
        "--sam-model-type",
        help="SAM types to fetch (vit_t, vit_b, vit_l, vit_h); default: settings.sam_model_type.",
    ),
) -> None:
    """Download pretrained weights into var/models/ (the only step that downloads anything).

    Each file comes from its official URL with a progress bar and is checked against its
    published sha256, which is recorded next to it. Where a file cannot be fetched (no
    internet) this says so in one line and goes on: the pipeline then runs without it.
    """
    from annotator.sam.checkpoints import OFFICIAL, CheckpointError, download
    from bookcounter.settings import get_settings

    settings = get_settings()
    for model_type in sam_model_type or [settings.sam_model_type]:
        if model_type not in OFFICIAL:
            raise UserError(f"unknown SAM model type {model_type!r}; choose one of {', '.join(OFFICIAL)}")
        try:
            path = download(settings, model_type)
            typer.echo(f"SAM {model_type}: {path}")
        except CheckpointError as e:
            typer.secho(f"SAM {model_type}: not available, continuing without it: {e}", fg="yellow", err=True)
    from trainer.model import fetch_torchvision_weights

    for name, error in fetch_torchvision_weights(settings.models_dir / "torch"):
        if error:
            typer.secho(
                f"torchvision {name}: not available, training starts from scratch: {error}", fg="yellow", err=True
            )
        else:
            typer.echo(f"torchvision {name}: {settings.models_dir / 'torch' / 'checkpoints'}")


@app.command("backup")
def backup_command(
    dest: Path = typer.Argument(..., help="New folder to write the backup to (must not exist)."),
) -> None:
    """Back up the human work while the services run: Label Studio's and MLflow's databases (SQLite's
    online backup, or pg_dump for PostgreSQL: docs/postgres.md), the uploaded photos, model files, dataset versions,
    decision log, pending inbox
    photos and secrets, with a manifest (sizes, sha256). See 'bookcounter restore'."""
    from bookcounter.settings import get_settings
    from flows.state_backup import backup, summary

    typer.echo(f"backup {dest}: {summary(backup(get_settings(), dest))}")


@app.command("restore")
def restore_command(
    src: Path = typer.Argument(..., help="A folder written by 'bookcounter backup'."),
) -> None:
    """Restore a backup into the state dir (BOOKCOUNTER_STATE_DIR), which must be empty. Every file
    is checked against the manifest first; a PostgreSQL dump goes into the (empty) database that
    BOOKCOUNTER_LS_DATABASE_URL / BOOKCOUNTER_MLFLOW_DATABASE_URL name. Then start the services again
    ('bookcounter labelstudio start')."""
    from bookcounter.settings import get_settings
    from flows.state_backup import restore, summary
    from trainer.registry import relocate_artifacts

    settings = get_settings()
    manifest = restore(settings, src)
    relocate_artifacts(Path(manifest["state_dir"]), settings)
    typer.echo(f"restored into {settings.state_dir}: {summary(manifest)}")


def main() -> None:
    """Run the CLI; errors a person can fix are one line on stderr and exit code 1."""
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit's code here
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", fg="red", err=True)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
