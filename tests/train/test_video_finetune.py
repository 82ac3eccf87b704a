"""The flow-free temporal regulariser in training (Wang et al. 2020; ``loss.temporal``) and
``experiment=video_finetune``: the config and its checks, the term in the training step (off at
weight 0, its gradient, the same style rows for a conditional network) and a fine-tune run of
``train.py`` from a model file, on the synthetic layer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from fast_style.core.model_io import describe, load_model, save_safetensors
from fast_style.core.network import TransformerNet
from fast_style.core.resources import config_dir, shipped_models_dir
from fast_style.loss.temporal import temporal_loss
from fast_style.train.config import ConfigError, validate
from fast_style.train.multi import norm_keys
from fast_style.train.system import StyleTransferSystem, resolve_init_dir
from tests.conftest import DataSource, run_train

TINY = ["model.channels=[8,16,16]", "model.num_residual=1"]
# The loss network stops at relu2_2 (fast); the style image is a small synthetic painting.
SHALLOW = "content_layers:{relu2_2:1.0},style_layers:{relu1_2:1.0,relu2_2:1.0}"


def _compose(*overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", list(overrides))


@pytest.fixture(scope="module")
def painting(tmp_path_factory) -> str:
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    s = (np.sin(xx * 0.5 + yy * 0.2) > 0).astype(np.float32)
    arr = np.stack([s, 1 - s, 0.1 * np.ones_like(s)], -1)
    path = tmp_path_factory.mktemp("painting") / "stripes.png"
    Image.fromarray((arr * 255).astype(np.uint8)).save(path)
    return str(path)


def _style(name: str, image: str) -> str:
    return f"{{name:{name},image:'{image}',size:64,style_weight:20.0,tv_weight:1.0,{SHALLOW}}}"


def _system(vgg: Path, painting: str, *overrides: str, styles: int = 1) -> StyleTransferSystem:
    names = ["a", "b"][:styles]
    spec = f"styles=[{','.join(_style(n, painting) for n in names)}]"
    settings = validate(
        _compose("experiment=smoke", f"loss.weights={vgg}", *TINY, spec, *overrides)
    )
    return StyleTransferSystem(settings)


def _photos(n: int = 2, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(n, 3, 4, 4, generator=g)
    up = torch.nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False)
    return (up + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


# --- config ---------------------------------------------------------------------------------------


def test_video_finetune_composes_and_is_a_short_low_lr_fine_tune():
    default = validate(_compose())
    assert default.loss.temporal.weight == 0  # off unless asked for
    s = validate(_compose("experiment=video_finetune"))
    assert s.loss.temporal.weight > 0
    assert s.train.init_dir == "checkpoints"
    assert s.optim.lr < default.optim.lr and s.trainer["max_steps"] < default.trainer["max_steps"]
    assert s.model.name == "johnson"  # the shipped models' width
    # the default init_dir is the shipped models (./checkpoints in a clone), one per style
    folder = resolve_init_dir(s.train.init_dir)
    assert (folder / f"{s.style.name}.safetensors").is_file()
    shipped, meta = load_model(folder / f"{s.style.name}.safetensors")
    assert list(meta["channels"]) == s.model.channels
    system = StyleTransferSystem(s)  # starts from it
    for key, value in shipped.state_dict().items():
        torch.testing.assert_close(system.net.state_dict()[key], value.float(), msg=key)
    assert system.metadata()["fine_tuned_from"]["file"] == f"{s.style.name}.safetensors"


def test_checkpoints_without_a_local_folder_is_the_shipped_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an installed package: no ./checkpoints
    assert resolve_init_dir("checkpoints") == shipped_models_dir()
    (tmp_path / "checkpoints").mkdir()  # a user's own folder of that name wins
    assert resolve_init_dir("checkpoints") == Path("checkpoints")


def test_temporal_settings_are_overridable_and_stored_in_the_settings():
    s = validate(
        _compose(
            "experiment=video_finetune", "loss.temporal.weight=7.5",
            "loss.temporal.max_shift=8", "loss.temporal.flow_grid=3",
        )
    )  # fmt: skip
    t = s.loss.temporal
    assert (t.weight, t.max_shift, t.flow_grid, t.noise_std) == (7.5, 8.0, 3, 0.02)
    assert s.to_dict()["loss"]["temporal"]["weight"] == 7.5  # what model files store
    assert validate(_compose("loss.temporal.weight=3", "loss=vgg19")).loss.temporal.weight == 3


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("loss.temporal.weight=-1", "loss.temporal.weight must be >= 0, got -1.0"),
        ("loss.temporal.noise_std=-0.1", "loss.temporal.noise_std must be >= 0, got -0.1"),
        ("loss.temporal.flow_std=nan", "loss.temporal.flow_std must be >= 0, got nan"),
        ("loss.temporal.max_zoom=1.5", "loss.temporal.max_zoom must be < 1, got 1.5"),
        ("loss.temporal.flow_grid=0", "loss.temporal.flow_grid must be >= 1, got 0"),
        ("loss.temporal.weight=lots", "loss.temporal.weight"),
        ("+loss.temporal.wieght=1", "unknown key 'loss.temporal.wieght' (did you mean 'weight'?)"),
    ],
)
def test_a_bad_temporal_value_is_a_one_line_config_error(override, expected):
    with pytest.raises(ConfigError) as err:
        validate(_compose("experiment=video_finetune", override))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_bad_temporal_value_on_the_command_line_fails_at_once(tmp_path):
    proc = run_train(
        ["experiment=video_finetune", "loss.temporal.weight=-2", f"hydra.run.dir={tmp_path}"],
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: config error: loss.temporal.weight must be >= 0, got -2.0", last
    assert "Traceback" not in proc.stderr


# --- the training step ------------------------------------------------------------------------


def test_weight_zero_has_no_temporal_term_and_a_weight_adds_it(random_vgg_file, painting):
    torch.manual_seed(0)
    batch = _photos()
    off = _system(random_vgg_file, painting)
    terms = off.compute_terms(batch, temporal=True)[0]
    assert "temporal" not in terms and "temporal/mse" not in terms
    torch.testing.assert_close(terms["total"], terms["content"] + terms["style"] + terms["tv"])
    on = _system(random_vgg_file, painting, "loss.temporal.weight=40")
    on.net.load_state_dict(off.net.state_dict())
    terms = on.compute_terms(batch, temporal=True)[0]
    mse = terms["temporal/mse"]
    assert math.isfinite(mse.item()) and mse.item() > 0
    torch.testing.assert_close(terms["temporal"], 40 * mse)
    perceptual = terms["content"] + terms["style"] + terms["tv"]
    torch.testing.assert_close(terms["total"], perceptual + 40 * mse)
    assert "temporal" not in on.compute_terms(batch)[0]  # validation: no warps


def test_the_temporal_gradient_reaches_every_parameter_as_the_reference_loss(
    random_vgg_file, painting
):
    """The step's term is ``temporal_loss`` (same warps under the same seed) and its gradient,
    through both S(W(x) + n) and S(x), reaches every parameter of the network."""
    torch.manual_seed(0)
    system = _system(random_vgg_file, painting, "loss.temporal.weight=10")
    net, batch = system.net, _photos()
    system.criteria  # noqa: B018 - built (its random init drawn) before the seed
    torch.manual_seed(5)
    term = system.compute_terms(batch, temporal=True)[0]["temporal"]
    ours = torch.autograd.grad(term, list(net.parameters()))
    assert all(g.abs().sum() > 0 for g in ours)
    torch.manual_seed(5)
    reference = 10 * temporal_loss(net, batch, system.settings.loss.temporal, net(batch))
    torch.testing.assert_close(term, reference)
    theirs_all = torch.autograd.grad(reference, list(net.parameters()))
    for mine, theirs in zip(ours, theirs_all, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_a_conditional_network_warps_each_style_with_its_own_rows(random_vgg_file, painting):
    """Multi-style: each style's temporal term reaches the shared convolutions and that
    style's γ/β rows only (its second pass ran with the batch's style input)."""
    torch.manual_seed(0)
    system = _system(
        random_vgg_file, painting, "model=multi_slim", *TINY, "loss.temporal.weight=10", styles=2
    )
    net = system.net
    all_terms = system.compute_terms(_photos(), temporal=True)
    norms = norm_keys(net)
    names = [n for n, _ in net.named_parameters()]
    for k, terms in enumerate(all_terms):
        grads = torch.autograd.grad(terms["temporal"], list(net.parameters()), retain_graph=True)
        for name, g in zip(names, grads, strict=True):
            if name in norms:
                rows = g.reshape(2, -1).abs().sum(1)
                assert rows[k] > 0 and rows[1 - k] == 0, name
            else:
                assert g.abs().sum() > 0, name


def test_a_multi_style_step_logs_the_term_per_style_and_their_mean(random_vgg_file, painting):
    torch.manual_seed(0)
    system = _system(
        random_vgg_file, painting, "model=multi_slim", *TINY, "loss.temporal.weight=10", styles=2
    )
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(system, train_dataloaders=DataLoader(list(_photos(2)), batch_size=2))
    m = trainer.callback_metrics
    assert {"train/a/temporal", "train/b/temporal", "train/temporal"} <= set(m)
    assert {"train/a_layers/temporal/mse", "train/b_layers/temporal/mse"} <= set(m)
    mean = (m["train/a/temporal"] + m["train/b/temporal"]) / 2
    torch.testing.assert_close(m["train/temporal"], mean)
    assert float(m["train/temporal"]) > 0


# --- end to end: train.py experiment=video_finetune --------------------------------------------


def test_video_finetune_runs_from_a_model_file(synthetic_source: DataSource, tmp_path: Path):
    torch.manual_seed(0)
    init = tmp_path / "init"
    init.mkdir()
    tiny = TransformerNet((8, 16, 16), 1)
    save_safetensors(tiny, init / "starry_night.safetensors", describe(tiny, "starry_night"))
    run = tmp_path / "run"
    proc = run_train(
        [
            "experiment=video_finetune", "style=starry_night", "trainer=cpu", *TINY,
            f"train.init_dir={init}", f"data.root={synthetic_source.data_root}",
            f"loss.weights={synthetic_source.weights}", "data.image_size=32",
            "data.batch_size=2", "data.num_workers=0", "data.num_val=2", "data.val_size=32",
            "style.size=64", "trainer.max_steps=3", "trainer.val_check_interval=3",
            "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false",
            "train.image_every_n_steps=0", "train.checkpoint_every_n_steps=3",
            "train.num_grid_images=1", f"hydra.run.dir={run}",
        ]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    net, meta = load_model(run / "starry_night.safetensors")
    assert (
        meta["global_step"] == 3 and meta["fine_tuned_from"]["file"] == "starry_night.safetensors"
    )
    weight = meta["training"]["loss"]["temporal"]["weight"]
    assert weight == validate(_compose("experiment=video_finetune")).loss.temporal.weight > 0
    start = {k: v.half().float() for k, v in tiny.state_dict().items()}  # as exported: fp16
    assert any(not torch.equal(v.float(), start[k]) for k, v in net.state_dict().items())
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert "train/temporal" in scalars and "train_layers/temporal/mse" in scalars
    assert "val/temporal" not in scalars
    values = [e.value for e in acc.Scalars("train/temporal")]
    assert len(values) == 3 and all(math.isfinite(v) and v > 0 for v in values)
    mse = [e.value for e in acc.Scalars("train_layers/temporal/mse")]
    parts = [[e.value for e in acc.Scalars(f"train/{k}")] for k in ("content", "style", "tv")]
    totals = [e.value for e in acc.Scalars("train/total")]
    assert totals == pytest.approx([sum(p) for p in zip(*parts, values, strict=True)], rel=1e-4)
    assert values == pytest.approx([weight * m for m in mse], rel=1e-4)
