"""Distillation (``distill.teacher=``): the teacher cache, aligned crops, the loss terms, the
config checks and a run of ``train.py model=nano distill.teacher=…`` on synthetic photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fast_style.core.model_io import describe, load_model, save_safetensors
from fast_style.core.network import TransformerNet
from fast_style.train import distill
from fast_style.train.config import ConfigError, DistillConfig, validate
from fast_style.train.distill import DistillDataset, TeacherCache, distill_terms
from tests.conftest import run_train
from tests.train.test_config import compose_train


def compose_settings(overrides: list[str]):
    return validate(compose_train(*overrides))


@pytest.fixture
def teacher_file(tmp_path: Path) -> Path:
    """A tiny random single-style model file (the teacher)."""
    torch.manual_seed(0)
    net = TransformerNet((8, 16, 16), 1).eval()
    path = tmp_path / "teacher.safetensors"
    save_safetensors(net, path, describe(net, style="starry_night", width="tiny"))
    return path


def test_cache_holds_the_teachers_outputs_and_is_built_once(
    tmp_path, teacher_file, synthetic_photos, monkeypatch
):
    teacher, _ = load_model(teacher_file)
    files = sorted(synthetic_photos.glob("*.jpg"))[:5]
    cache = TeacherCache.build(teacher, teacher_file, files, 48, tmp_path / "cache")
    assert cache.content.shape == cache.target.shape == (5, 3, 48, 48)
    with torch.no_grad():
        want = teacher(torch.from_numpy(np.array(cache.content[:2])).float() / 255)
    got = torch.from_numpy(np.array(cache.target[:2])).float() / 255
    assert (got - want).abs().max() <= 0.5 / 255 + 1e-6  # uint8 rounding only

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(distill, "_fill", no_rebuild)
    again = TeacherCache.build(teacher, teacher_file, files, 48, tmp_path / "cache")
    assert again.folder == cache.folder
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache.folder.name]  # no temp


def test_cache_key_follows_the_teacher_the_photos_and_the_size(
    tmp_path, teacher_file, synthetic_photos
):
    files = sorted(synthetic_photos.glob("*.jpg"))[:3]
    key = distill.cache_key(teacher_file, files, 48)
    assert distill.cache_key(teacher_file, files, 64) != key
    assert distill.cache_key(teacher_file, files[:2], 48) != key
    other = tmp_path / "other.safetensors"
    net = TransformerNet((8, 16, 16), 1)
    save_safetensors(net, other, describe(net, style="starry_night"))
    assert distill.cache_key(other, files, 48) != key


def test_an_interrupted_build_leaves_no_cache(
    tmp_path, teacher_file, synthetic_photos, monkeypatch
):
    teacher, _ = load_model(teacher_file)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(distill, "_fill", interrupted)
    files = sorted(synthetic_photos.glob("*.jpg"))[:2]
    with pytest.raises(KeyboardInterrupt):
        TeacherCache.build(teacher, teacher_file, files, 32, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def _fake_cache(folder: Path, n: int = 3, size: int = 20) -> TeacherCache:
    """A cache whose target is 255 − content: any misalignment of a crop pair shows."""
    folder.mkdir()
    content = np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    np.save(folder / "content.npy", content)
    np.save(folder / "target.npy", 255 - content)
    (folder / "info.json").write_text(json.dumps({"images": n}))
    return TeacherCache(folder)


def test_pairs_are_cropped_and_flipped_together(tmp_path):
    data = DistillDataset(_fake_cache(tmp_path / "c"), crop=8, flip=True)
    torch.manual_seed(0)
    seen = set()
    for i in range(30):
        x, t = data[i % 3]
        assert x.shape == t.shape == (3, 8, 8)
        torch.testing.assert_close(t, 1 - x)
        seen.add(tuple(x[0, 0, :2].tolist()))
    assert len(seen) > 3  # the crops do move
    with pytest.raises(ValueError, match="exceeds the cached size"):
        DistillDataset(data.cache, crop=21)


def test_distill_terms():
    cfg = DistillConfig(teacher="x", pixel_weight=2.0, feature_weight=0.0, feature_layers={})
    t = torch.rand(2, 3, 8, 8)
    zero = distill_terms(t.clone(), t, {}, None, cfg)  # type: ignore[arg-type]
    assert zero["distill"] == 0
    y = (t + 0.1).clamp(0, 1)
    terms = distill_terms(y, t, {}, None, cfg)  # type: ignore[arg-type]
    torch.testing.assert_close(terms["distill/pixel"], (y - t).abs().mean())
    torch.testing.assert_close(terms["distill"], 2 * terms["distill/pixel"])


def test_the_pixel_term_teaches_a_nano_network_the_teachers_output():
    torch.manual_seed(1)
    teacher = TransformerNet((8, 16, 16), 1).eval()
    student = TransformerNet((8, 16, 16), 1, block="dwsep", kernels=(5, 5))
    x = torch.rand(4, 3, 24, 24)
    with torch.no_grad():
        t = teacher(x)
    cfg = DistillConfig(teacher="x", feature_layers={})
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = distill_terms(student(x), t, {}, None, cfg)["distill"]  # type: ignore[arg-type]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["distill.teacher=starry_night", "model=multi", "styles=[starry_night,great_wave]"],
         "one single-style network"),
        (["distill.teacher=starry_night", "distill.cache_size=64", "data.image_size=128"],
         "must be >= data.image_size"),
        (["distill.teacher=starry_night", "+distill.feature_layers.relu9_9=1"],
         "not a vgg16 layer"),
        (["distill.teacher=starry_night", "distill.pixel_weight=-1"], "must be >= 0"),
        (["model=nano", "model.kernels=[4,5]"], "odd sizes"),
    ],
)  # fmt: skip
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_settings(overrides)


def test_nano_config_composes():
    s = compose_settings(["experiment=cpu_nano"])
    assert s.model.block == "dwsep" and s.model.kernels == [5, 5]
    assert s.distill.teacher == "starry_night" and s.distill.cache_size == 256
    net = s.model.network()
    assert net.config.block == "dwsep" and net.config.channels == (8, 16, 32)


@pytest.mark.slow
def test_train_nano_by_distillation(tmp_path, teacher_file, synthetic_source):
    """The issue's command on synthetic photos: the file is a nano network that names its
    teacher, and the run logged the distillation term."""
    run_dir = tmp_path / "run"
    args = synthetic_source.train_args(
        run_dir,
        "model=nano",
        f"distill.teacher={teacher_file}",
        "distill.cache_size=80",
        f"distill.cache_dir={tmp_path / 'cache'}",
    )
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_dir / "starry_night.safetensors"
    with safe_open(str(out), framework="pt") as f:
        meta = json.loads(f.metadata()["fast_style"])
    assert meta["block"] == "dwsep" and meta["channels"] == [8, 16, 32]
    assert meta["distilled_from"]["file"] == "teacher.safetensors"
    assert meta["training"]["distill"]["teacher"] == str(teacher_file)
    assert "train/distill" in proc.stdout + proc.stderr
    net, _ = load_model(out)
    assert net.config.kernels == (5, 5)
