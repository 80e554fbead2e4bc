"""Where SAM weights come from: official sources, the local cache, and the one download step.

Resolution order for a model type: an explicit path (``--sam-checkpoint``), else
``BOOKCOUNTER_SAM_CHECKPOINT`` (``settings.sam_checkpoint``), else the official file name in
``settings.models_dir``. Nothing downloads at run time: only :func:`download` does, called by
``bookcounter setup-models``, which records the sha256 next to the file.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bookcounter.errors import UserError
from bookcounter.images import sha256_file
from bookcounter.settings import Settings

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A SAM checkpoint that is missing, unreadable, corrupt or for another model type."""


@dataclass(frozen=True)
class OfficialCheckpoint:
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# sha256 values as published alongside these files by many independent users of them; the
# official pages give none (SAM's file names carry an md5 prefix).
OFFICIAL: dict[str, OfficialCheckpoint] = {
    "vit_t": OfficialCheckpoint(
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
    ),
    "vit_b": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "vit_l": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}


def cached_path(settings: Settings, model_type: str) -> Path:
    """Where ``setup-models`` keeps the official checkpoint of ``model_type``."""
    return settings.models_dir / "sam" / OFFICIAL[model_type].filename


def resolve_checkpoint(settings: Settings, model_type: str, explicit: Path | None = None) -> Path | None:
    """The checkpoint to load, or None when there is none; a named file that is missing is an error."""
    for named in (explicit, settings.sam_checkpoint):
        if named is not None:
            if not Path(named).is_file():
                raise CheckpointError(f"SAM checkpoint {named} not found")
            return Path(named)
    path = cached_path(settings, model_type)
    return path if path.is_file() else None


def read_state_dict(path: Path) -> dict:
    """``torch.load(weights_only=True)`` of a checkpoint; one clear error if it is not one.

    An official file (by name) whose sha256 differs from the published one is reported as
    corrupt, so a truncated download never loads half-way.
    """
    import torch

    official = {c.filename: c for c in OFFICIAL.values()}.get(path.name)
    if official is not None and sha256_file(path) != official.sha256:
        raise CheckpointError(
            f"{path}: sha256 differs from the official {path.name}; delete it and run `bookcounter setup-models`"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a usable checkpoint"
        raise CheckpointError(f"{path}: not a readable SAM checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a SAM state_dict (a mapping of tensor names to tensors)")
    return state


def download(settings: Settings, model_type: str) -> Path:
    """Fetch the official checkpoint into the cache with a progress bar; verify and record its sha256.

    :func:`torch.hub.download_url_to_file` writes a temp file, checks its sha256 and only then
    moves it into place (as for the torchvision weights). Raises :class:`CheckpointError` with
    one line when the file cannot be fetched or does not match.
    """
    from torch.hub import download_url_to_file

    if model_type not in OFFICIAL:
        raise CheckpointError(f"unknown SAM model type {model_type!r}; choose one of {', '.join(OFFICIAL)}")
    official = OFFICIAL[model_type]
    target = cached_path(settings, model_type)
    if target.is_file() and sha256_file(target) == official.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        download_url_to_file(official.url, str(target), hash_prefix=official.sha256, progress=True)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CheckpointError(f"cannot download {model_type} from {official.url} ({reason})") from None
    except RuntimeError as e:  # "invalid hash value (expected ..., got ...)"
        raise CheckpointError(f"download of {official.url}: {e}") from None
    target.with_name(target.name + ".sha256").write_text(f"{official.sha256}  {target.name}\n")
    log.info("downloaded %s to %s (sha256 %s)", model_type, target, official.sha256)
    return target
