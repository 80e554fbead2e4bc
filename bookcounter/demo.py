"""The demo loop on the sample photos (``make demo``)."""

from __future__ import annotations

from pathlib import Path

import typer

from annotator.cli import import_coco
from annotator.dataset_store import SPLITS
from bookcounter.errors import UserError
from bookcounter.settings import get_settings


def demo() -> None:
    """Run the loop on the sample photos (open-shelves): import them as the first dataset version."""
    s = get_settings()
    sample: Path = s.sample_dir
    files = [sample / f"{split}.json" for split in SPLITS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"sample not found: {', '.join(missing)} (set BOOKCOUNTER_SAMPLE_DIR)")
    typer.echo(f"1/1 importing the sample {sample} as a dataset version")
    import_coco(
        files,
        images=sample,
        split=None,
        source="open-shelves",
        licence="CC BY 4.0",
        credit='"Open Shelves" by capjamesg, Roboflow Universe (https://creativecommons.org/licenses/by/4.0/)',
    )
