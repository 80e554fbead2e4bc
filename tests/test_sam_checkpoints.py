"""SAM weights: resolution order, strict loading, clear errors, setup-models, the bounded disk cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from annotator.sam import CheckpointError, checkpoints, load_segmenter
from annotator.sam.embedding_cache import EmbeddingCache
from bookcounter.errors import UserError
from bookcounter.images import sha256_file
from flows.main import app


@pytest.fixture(scope="module")
def vit_t_checkpoint(vit_t_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "my_mobile_sam.pt"
    torch.save(vit_t_model.state_dict(), path)
    return path


def test_a_checkpoint_loads_strictly_and_names_the_cache_by_its_hash(settings, vit_t_checkpoint, vit_t_model):
    seg = load_segmenter(settings, "vit_t", checkpoint=vit_t_checkpoint)
    assert seg is not None and seg.namespace == f"vit_t-{sha256_file(vit_t_checkpoint)[:12]}"
    for k, v in vit_t_model.state_dict().items():
        assert torch.equal(seg.sam.state_dict()[k], v), k


def test_checkpoint_from_settings_when_none_is_given(settings, vit_t_checkpoint, monkeypatch):
    monkeypatch.setattr(settings, "sam_checkpoint", vit_t_checkpoint)
    assert checkpoints.resolve_checkpoint(settings, "vit_t") == vit_t_checkpoint
    monkeypatch.setattr(settings, "sam_checkpoint", vit_t_checkpoint.with_name("missing.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        checkpoints.resolve_checkpoint(settings, "vit_t")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"garbage, not a torch file" * 10, "not a readable SAM checkpoint"),
        (None, "not a vit_t checkpoint"),  # a real state_dict of another model
    ],
)
def test_a_corrupt_or_foreign_checkpoint_is_one_clear_user_error(settings, tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"image_encoder.patch_embed.seq.0.c.weight": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        load_segmenter(settings, "vit_t", checkpoint=path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_an_official_file_with_the_wrong_hash_is_reported_corrupt(settings, vit_t_checkpoint):
    cached = checkpoints.cached_path(settings, "vit_t")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(vit_t_checkpoint.read_bytes()[:1000])  # a truncated download
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_segmenter(settings, "vit_t")


def test_setup_models_downloads_verifies_and_records_then_load_finds_it(settings, vit_t_checkpoint, monkeypatch):
    fake = checkpoints.OfficialCheckpoint(vit_t_checkpoint.as_uri(), sha256_file(vit_t_checkpoint))
    monkeypatch.setitem(checkpoints.OFFICIAL, "vit_t", fake)
    result = CliRunner().invoke(app, ["setup-models", "--sam-model-type", "vit_t"])
    assert result.exit_code == 0, result.output
    target = settings.models_dir / "sam" / vit_t_checkpoint.name
    assert sha256_file(target) == fake.sha256
    assert (target.parent / (target.name + ".sha256")).read_text().split()[0] == fake.sha256
    assert load_segmenter(settings, "vit_t") is not None


def test_setup_models_without_internet_says_so_in_one_line_and_continues(settings, tmp_path, monkeypatch):
    unreachable = checkpoints.OfficialCheckpoint((tmp_path / "nowhere" / "mobile_sam.pt").as_uri(), "0" * 64)
    monkeypatch.setitem(checkpoints.OFFICIAL, "vit_t", unreachable)
    result = CliRunner().invoke(app, ["setup-models"])
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if "vit_t" in line]
    assert len(lines) == 1 and "not available" in lines[0]
    assert not list((settings.models_dir / "sam").glob("*.pt"))


def test_a_download_with_the_wrong_sha256_is_not_kept(settings, vit_t_checkpoint, monkeypatch):
    wrong = checkpoints.OfficialCheckpoint(vit_t_checkpoint.as_uri(), "0" * 64)
    monkeypatch.setitem(checkpoints.OFFICIAL, "vit_t", wrong)
    with pytest.raises(CheckpointError, match="invalid hash value"):
        checkpoints.download(settings, "vit_t")
    assert not (settings.models_dir / "sam").exists() or not list((settings.models_dir / "sam").iterdir())


def _record(n: int) -> dict:
    return {"features": torch.zeros(n), "original_size": torch.tensor([1, 1]), "input_size": torch.tensor([1, 1])}


def test_disk_cache_evicts_least_recently_used_over_its_bound(tmp_path):
    one = len(_dumps(_record(25_000)))
    cache = EmbeddingCache(tmp_path, max_bytes=3 * one + one // 2)
    for age, key in enumerate("abc"):
        cache.put("vit_t-random", key * 8, _record(25_000))
        used = (1_000 + age) * 10**9  # last used in this order, long ago (the cache orders by mtime)
        os.utime(tmp_path / "vit_t-random" / f"{key * 8}.pt", ns=(used, used))
    assert cache.get("vit_t-random", "a" * 8) is not None  # a is now the most recently used
    cache.put("vit_t-random", "d" * 8, _record(25_000))
    assert not cache.contains("vit_t-random", "b" * 8)  # the least recently used went
    assert all(cache.contains("vit_t-random", k * 8) for k in "acd")
    assert cache.total_bytes() <= cache.max_bytes
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # atomic writes leave no temp files


def test_a_torn_cache_file_is_a_miss_not_an_error(tmp_path):
    cache = EmbeddingCache(tmp_path, 1 << 20)
    cache.put("vit_t-random", "a" * 8, _record(10))
    path = tmp_path / "vit_t-random" / ("a" * 8 + ".pt")
    path.write_bytes(path.read_bytes()[:20])
    assert cache.get("vit_t-random", "a" * 8) is None and not path.exists()
    with pytest.raises(ValueError):
        cache.get("vit_t-random", "../../etc/passwd")


def _dumps(record: dict) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(record, buf)
    return buf.getvalue()


def test_cache_bound_zero_disables_the_disk_cache(tmp_path):
    cache = EmbeddingCache(tmp_path, 0)
    cache.put("vit_t-random", "a" * 8, _record(10))
    assert not cache.contains("vit_t-random", "a" * 8)
    assert not os.listdir(tmp_path)
