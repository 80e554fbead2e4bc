"""``bookcounter dataset ...``: the versioned COCO dataset store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from annotator.coco_import import read_coco
from bookcounter.dataset_store import SPLITS, DatasetStore
from bookcounter.detector import DetectorProvider
from bookcounter.settings import get_settings

console = Console()
dataset_app = typer.Typer(
    help="Immutable, versioned COCO datasets under var/datasets (the contract between annotator and trainer).",
    no_args_is_help=True,
)


@dataset_app.command("import-coco")
def import_coco(
    paths: list[Path] = typer.Argument(
        ..., help="COCO instances JSON file(s); train.json/val.json/test.json give their split."
    ),
    images: Path = typer.Option(
        ..., "--images", help="Folder that the files' image file_name entries are relative to."
    ),
    split: str | None = typer.Option(
        None, help="Put every image in this split (train, val or test) unless frozen already."
    ),
    source: str = typer.Option("", help="Source name recorded in the manifest (default: the folder name)."),
    licence: str = typer.Option("", help="Licence of the source, recorded in the manifest."),
    credit: str = typer.Option("", help="Credit line for the source, recorded in the manifest."),
) -> None:
    """Import COCO file(s) as a new dataset version on top of the latest one.

    Polygons become RLE masks; bbox and area come from the mask; images are stored once by
    sha256. Importing content equal to an existing version creates nothing and names it.
    Photos over BOOKCOUNTER_MAX_MEGAPIXELS, or with a shorter side under
    BOOKCOUNTER_MIN_PHOTO_SIDE (64 px), are refused, as serving refuses them.
    """
    if split is not None and split not in SPLITS:
        raise typer.BadParameter(f"split must be one of {', '.join(SPLITS)}")
    settings = get_settings()
    items, warnings, totals = [], [], {"skipped_zero_area": 0, "clipped_polygons": 0}
    for path in paths:
        got, report = read_coco(path, images, split, settings.max_megapixels, settings.min_photo_side)
        items += got
        warnings += report["warnings"]
        for k in totals:
            totals[k] += report.get(k, 0)
    for w in warnings[:10]:
        console.print(f"[yellow]warning:[/] {w}")
    if len(warnings) > 10:
        console.print(f"[yellow]warning:[/] ... and {len(warnings) - 10} more")
    result = DatasetStore.from_settings(settings).commit(
        items,
        source={
            "name": source or images.resolve().name,
            "licence": licence,
            "credit": credit,
            "files": [str(p) for p in paths],
        },
        report=totals,
    )
    verb = "created" if result.created else "unchanged: same content as"
    console.print(f"{verb} [bold]{result.version.name}[/]  {_summary(result.version.manifest())}")
    if totals["skipped_zero_area"]:
        console.print(f"skipped {totals['skipped_zero_area']} zero-area mask(s)")


@dataset_app.command("list")
def list_versions() -> None:
    """List dataset versions with their counts per split."""
    table = Table("version", "parent", "created", "train", "val", "test", "source")
    for v in DatasetStore.from_settings(get_settings()).versions():
        m = v.manifest()
        c = m["counts"]
        table.add_row(
            v.name,
            m["parent"] or "-",
            m["created_at"],
            *(f"{c[s]['images']} img / {c[s]['books']} books" for s in SPLITS),
            m["source"].get("name", ""),
        )
    console.print(table)


@dataset_app.command()
def show(version: str = typer.Argument(..., help="Version name (v0001, 1 or 'latest').")) -> None:
    """Show a version's manifest: provenance, counts and report (file hashes left out)."""
    m = DatasetStore.from_settings(get_settings()).get(version).manifest()
    m["files"] = f"{len(m['files'])} files with sha256 (see manifest.json)"
    m["added"] = f"{len(m['added'])} images added"
    console.print_json(data=m)


@dataset_app.command()
def verify(version: str = typer.Argument(..., help="Version name (v0001, 1 or 'latest').")) -> None:
    """Recompute every hash of a version and name each file that changed; exit 1 if any."""
    store = DatasetStore.from_settings(get_settings())
    v = store.get(version)
    problems = store.verify(v.name)
    for p in problems:
        console.print(f"[red]changed:[/] {p}")
    if problems:
        raise typer.Exit(1)
    console.print(f"{v.name}: intact ({len(v.manifest()['files'])} files)")


def _summary(m: dict) -> str:
    c = m["counts"]
    books = sum(c[s]["books"] for s in SPLITS)
    return ", ".join(f"{c[s]['images']} {s}" for s in SPLITS) + f" photos, {books} books"


# --- Label Studio: the server, pre-labelling, collecting ------------------------------------

labelstudio_app = typer.Typer(
    help="The Label Studio server bookcounter runs (own venv, 127.0.0.1, data under var/label-studio).",
    no_args_is_help=True,
)


@labelstudio_app.command("start")
def labelstudio_start() -> None:
    """Start Label Studio in the background and wait until it answers (cold start 30-45 s).

    SQLite under var/label-studio (PostgreSQL: set BOOKCOUNTER_LS_DATABASE_URL). The admin
    password and API token are generated on first start into var/secrets.env (mode 0600;
    BOOKCOUNTER_LS_PASSWORD/TOKEN override it). Pid file and log under var/run. The project is
    created on first start.
    """
    from annotator.labelstudio.project import ensure_project
    from annotator.labelstudio.server import server_process, start_server

    s = get_settings()
    with console.status(f"starting Label Studio on {s.ls_url} (log {server_process(s).log_file})"):
        status = start_server(s)
        project_id = ensure_project(s)
    console.print(status.line())
    console.print(f"project {s.ls_project_title!r}: {s.ls_url}/projects/{project_id}  ({s.ls_login_hint})")


@labelstudio_app.command("stop")
def labelstudio_stop() -> None:
    """Stop the Label Studio server that 'start' started (only that process)."""
    from annotator.labelstudio.server import stop_server

    stopped = stop_server(get_settings())
    console.print("Label Studio stopped" if stopped else "Label Studio was not running (no live pid file)")


@labelstudio_app.command("status")
def labelstudio_status() -> None:
    """Say whether Label Studio is running and healthy; exit 1 if it is not."""
    from annotator.labelstudio.server import server_status

    status = server_status(get_settings())
    console.print(status.line())
    if not (status.running and status.healthy):
        raise typer.Exit(1)


def prelabel_command(champion: DetectorProvider) -> Callable[..., None]:
    """The ``prelabel`` command, with the champion from ``champion`` (given where the CLI is composed)."""

    def prelabel_photos(
        inbox: Path | None = typer.Option(None, "--inbox", help="Folder of new photos (default: var/inbox)."),
        sam_checkpoint: Path | None = typer.Option(
            None, "--sam-checkpoint", help="SAM checkpoint (default: BOOKCOUNTER_SAM_CHECKPOINT, else var/models)."
        ),
    ) -> None:
        """Turn new inbox photos into Label Studio tasks with predicted masks.

        Masks come from the champion's boxes as SAM prompts, else SAM's point grid, else the
        champion's mask head, else none. A photo already imported (same sha256) gets no second
        task; processed photos move to inbox/done/, unusable ones to inbox/rejected/ with a reason.
        """
        from annotator.prelabel import prelabel

        settings = get_settings()
        report = prelabel(settings, inbox, sam_checkpoint=sam_checkpoint, champion=champion)
        for reason in report.rejected.values():
            console.print(f"[yellow]rejected:[/] {reason}")
        if not (report.imported or report.already_there or report.rejected):
            console.print(f"inbox {inbox or settings.inbox_dir} is empty: nothing to do")
            return
        console.print(report.line())

    return prelabel_photos


def collect_command(champion: DetectorProvider) -> Callable[..., None]:
    """The ``collect`` command; ``champion`` recounts the tasks it has not counted yet."""

    def collect_annotations() -> None:
        """Write the annotations submitted in Label Studio as a new dataset version.

        Only the latest submitted annotation of each task counts (not predictions, drafts or
        skipped tasks); brush masks are kept pixel for pixel. Nothing new: no new version.
        Also writes each task's count fields (predicted_count, annotated_count, count_gap) and
        records how good the pre-labels were (recall, precision) in the version's report.
        """
        from annotator.collect import collect

        result = collect(get_settings(), champion=champion)
        if result is None:
            console.print("nothing new in Label Studio: no new dataset version")
            return
        console.print(f"created [bold]{result.version.name}[/]  {_summary(result.version.manifest())}")
        q = result.report.get("prelabel_quality") or {}
        if q.get("photos"):
            console.print(f"pre-labels of {q['photos']} photo(s): {_quality_line(q)}")

    return collect_annotations


def _quality_line(q: dict) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.0f} %"

    return (
        f"recall {pct(q['recall'])} ({q['matched']} of {q['human_masks']} human masks found), "
        f"precision {pct(q['precision'])} ({q['matched']} of {q['prelabel_masks']} pre-label masks kept)"
    )


def review_command(champion: DetectorProvider) -> Callable[..., None]:
    """The ``review`` command, with the champion from ``champion``."""

    def review_counts(
        min_gap: int = typer.Option(
            2, "--min-gap", min=0, help="Show photos whose counts differ by at least this much."
        ),
    ) -> None:
        """Photos where the champion's count and the annotator's differ, largest gap first.

        Runs the champion on every annotated photo. A "likely miss" is a confident champion
        detection that no human mask overlaps (IoU < 0.3): a book the annotator may have
        skipped; such photos are listed whatever their gap. Each row links to the task in
        Label Studio; the project's tab "Review: counts disagree" shows the same tasks.
        """
        from annotator.count_review import review

        detector = champion()
        if detector is None:
            console.print(
                "[yellow]no champion yet:[/] counts and likely misses need one; showing annotated counts only"
            )
        rows = review(get_settings(), detector, min_gap)
        if not rows:
            console.print(f"no annotated photo with a count gap of {min_gap} or more, and no likely miss")
            return
        table = Table("task", "photo", "predicted", "annotated", "gap", "likely misses", "link")
        for r in rows:
            misses = ", ".join(f"{s:.2f} at x {b[0]:.0f}-{b[2]:.0f}, y {b[1]:.0f}-{b[3]:.0f}" for s, b in r.misses)
            table.add_row(
                str(r.task_id),
                r.file_name,
                "-" if r.predicted is None else str(r.predicted),
                str(r.annotated),
                "-" if r.gap is None else f"{r.gap:+d}",
                misses or "-",
                r.url,
            )
        console.print(table)

    return review_counts
