"""The ``bookcounter`` command: one entry point, each part of the product adds its subcommands.

Heavy libraries (torch, mlflow, prefect) are imported inside commands, so ``--help`` is fast.
"""

from __future__ import annotations

import sys

import typer

from annotator.cli import dataset_app
from bookcounter.demo import demo
from bookcounter.errors import UserError

app = typer.Typer(
    help="Count books in photos: pre-label with SAM, correct in Label Studio, retrain Mask R-CNN, "
    "promote the better model and serve it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(dataset_app, name="dataset")
app.command()(demo)


def main() -> None:
    """Run the CLI; errors a person can fix are one line on stderr and exit code 1."""
    try:
        app(standalone_mode=False)
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
