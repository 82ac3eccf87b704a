"""One conditional network for several styles (model=multi): each style follows its own loss,
adding a style trains only its γ/β (shared weights and the other styles bit-identical), the
one-file export with per-style metadata, TensorBoard per style, resume and its checks.

In-process tests use tiny networks and a random-weight VGG16; the end-to-end ones run
``train.py`` as a user does, on the synthetic layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from fast_style.core.model_io import describe, load_model, save_safetensors, style_names
from fast_style.core.network import TransformerNet
from fast_style.core.resources import config_dir
from fast_style.train.config import ConfigError, validate
from fast_style.train.multi import grow, norm_keys
from fast_style.train.run import check_resume_matches, export
from fast_style.train.system import StyleTransferSystem
from tests.conftest import DataSource, run_train

TINY = ["model.channels=[8,16,16]", "model.num_residual=1"]


def _painting(path: Path, kind: str) -> str:
    """Two very different synthetic 'paintings': fine red/green stripes, smooth blue blobs."""
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    if kind == "stripes":
        s = (np.sin(xx * 0.5 + yy * 0.2) > 0).astype(np.float32)
        arr = np.stack([s, 1 - s, 0.1 * np.ones_like(s)], -1)
    else:
        blob = 0.5 + 0.5 * np.sin(xx / 9.0) * np.cos(yy / 11.0)
        arr = np.stack([0.1 * blob, 0.3 * blob, 0.4 + 0.6 * blob], -1)
    Image.fromarray((arr * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def paintings(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("paintings")
    return {k: _painting(folder / f"{k}.png", k) for k in ("stripes", "blobs")}


def _style(name: str, image: str) -> str:
    """An inline style: shallow layers only (the loss network stops at relu2_2: fast), style
    weighted up so that a few steps show it."""
    layers = "content_layers:{relu2_2:1.0},style_layers:{relu1_2:1.0,relu2_2:1.0}"
    return f"{{name:{name},image:'{image}',size:64,style_weight:20.0,tv_weight:1.0,{layers}}}"


def _settings(vgg: Path, *overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return validate(compose("train", ["experiment=smoke", f"loss.weights={vgg}", *overrides]))


def _duo(vgg: Path, paintings: dict[str, str], *extra: str):
    styles = f"styles=[{_style('a', paintings['stripes'])},{_style('b', paintings['blobs'])}]"
    return _settings(vgg, "model=multi_slim", *TINY, styles, *extra)


def _photos(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g)  # smooth photos: upsampled noise plus detail
    up = torch.nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False)
    return (up + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def test_two_styles_in_one_network_each_follow_their_own_loss(random_vgg_file, paintings):
    torch.manual_seed(1)  # a tiny network: some seeds need more steps to split the styles
    system = StyleTransferSystem(_duo(random_vgg_file, paintings))
    net = system.net
    assert net.num_styles == 2 and len(system.nets) == 1 and system.rows == [0, 1]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(25):
        terms = system.compute_terms(_photos(2, seed=step))
        opt.zero_grad()
        torch.stack([t["total"] for t in terms]).sum().backward()
        opt.step()
    held_out = _photos(3, seed=99)
    crit_a, crit_b = system.criteria
    with torch.no_grad():
        out_a, out_b = system.stylize_all(held_out)

        def style_loss(crit, out):
            return float(crit(out, held_out)["style"])

        # each style's output is closer to its own painting than the other style's output is
        assert style_loss(crit_a, out_a) < 0.85 * style_loss(crit_a, out_b)  # measured: 0.59
        assert style_loss(crit_b, out_b) < 0.85 * style_loss(crit_b, out_a)  # 0.06
        one_hot_b = torch.tensor([[0.0, 1.0]]).expand(3, 2)
        torch.testing.assert_close(out_b, net(held_out, one_hot_b))  # the chunks line up


def test_the_one_step_shares_the_content_pass_and_sums_the_styles(random_vgg_file, paintings):
    """Each style's terms equal its criterion on its own one-hot output; the γ/β rows of a
    style get exactly the gradient of that style's loss alone."""
    torch.manual_seed(1)
    system = StyleTransferSystem(_duo(random_vgg_file, paintings))
    batch = _photos(2)
    terms = system.compute_terms(batch)
    for k, crit in enumerate(system.criteria):
        alone = crit(system.net(batch, torch.eye(2)[[k, k]]), batch)
        for key in ("content", "style", "tv", "total"):
            torch.testing.assert_close(terms[k][key], alone[key], rtol=1e-4, atol=1e-6)
    gamma = system.net.encoder.conv1.norm.weight
    torch.stack([t["total"] for t in terms]).sum().backward()
    joint = gamma.grad.clone()
    gamma.grad = None
    system.criteria[1](system.net(batch, torch.eye(2)[[1, 1]]), batch)["total"].backward()
    torch.testing.assert_close(joint[1], gamma.grad[1], rtol=1e-3, atol=1e-7)
    assert gamma.grad[0].abs().max() == 0


def _base_file(tmp_path: Path) -> tuple[TransformerNet, Path]:
    """A two-style tiny slim-layout model file with distinct γ/β rows."""
    torch.manual_seed(3)
    net = TransformerNet((8, 16, 16), 1, num_styles=2)
    with torch.no_grad():
        for key in norm_keys(net):
            p = net.get_parameter(key)
            p.uniform_(0.5, 1.5) if key.endswith("weight") else p.uniform_(-0.3, 0.3)
    entries = [
        {"name": n, "painting": {"title": n}, "image": "x.jpg", "size": 64, "loss": {},
         "training": {"steps": 5, "mode": "joint"}}
        for n in ("old_a", "old_b")
    ]  # fmt: skip
    meta = describe(net, "old_a", width="multi_slim", styles=entries, global_step=5)
    return net, save_safetensors(net, tmp_path / "duo.safetensors", meta)


def _fit(system: StyleTransferSystem, steps: int) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    data = DataLoader(list(_photos(2 * steps)), batch_size=2)
    trainer.fit(system, train_dataloaders=data)
    return trainer


def test_adding_a_style_trains_only_its_rows(random_vgg_file, paintings, tmp_path):
    base, path = _base_file(tmp_path)
    add = f"train.add_styles=[{_style('new', paintings['stripes'])}]"
    settings = _settings(random_vgg_file, f"train.init_dir={path}", add, "optim.lr=0.05")
    system = StyleTransferSystem(settings)
    net = system.net
    # model= is not needed: the network is the init file's
    assert system.settings.model.name == "multi_slim" and system.settings.model.conditional
    assert net.num_styles == 3 and system.rows == [2]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trainer = _fit(system, steps=3)
    trained = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert trained == {id(net.get_parameter(k)) for k in norm_keys(net)}  # only γ/β tensors
    after, norms = net.state_dict(), norm_keys(net)
    for key, old in before.items():
        if key in norms:
            assert torch.equal(after[key][:2], old[:2]), key  # the old styles: bit for bit
            assert not torch.equal(after[key][2], old[2]), key  # the new row trained
            assert torch.equal(old[:2], base.state_dict()[key])
        else:
            assert torch.equal(after[key], old), key  # every shared weight: bit for bit
    out = export(system, system.settings, tmp_path / "run")[0]
    assert out.name == "duo.safetensors"  # the init file's name
    loaded, meta = load_model(out)
    _, base_meta = load_model(path)
    assert style_names(meta) == ["old_a", "old_b", "new"] and loaded.num_styles == 3
    assert meta["styles"][:2] == base_meta["styles"]  # old entries as the base stored them
    new = meta["styles"][2]
    assert new["training"]["mode"] == "added" and new["training"]["steps"] == 3
    assert new["training"]["added_to"]["file"] == "duo.safetensors"
    x = _photos(1, size=20)
    with torch.no_grad():  # the old styles paint exactly as before
        for i in range(2):
            row = torch.eye(3)[[i]]
            torch.testing.assert_close(loaded(x, row), base(x, torch.eye(2)[[i]]))


def test_a_single_style_model_grows_into_row_zero():
    torch.manual_seed(4)
    single = TransformerNet((8, 16, 16), 1).eval()
    with torch.no_grad():
        single.encoder.conv1.norm.weight.uniform_(0.5, 1.5)
    for init in ("mean", "identity"):
        grown = grow(single, 2, init).eval()
        assert grown.num_styles == 3
        gamma = grown.encoder.conv1.norm.weight
        torch.testing.assert_close(gamma[0], single.encoder.conv1.norm.weight)
        expected = gamma[0] if init == "mean" else torch.ones_like(gamma[0])
        torch.testing.assert_close(gamma[2], expected)
        x = torch.rand(1, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(grown(x, torch.eye(3)[[0]]), single(x))


def test_add_styles_settings_are_checked(random_vgg_file, tmp_path):
    _, path = _base_file(tmp_path)
    with pytest.raises(ConfigError, match=r"needs train\.init_dir"):
        _settings(random_vgg_file, "train.add_styles=[udnie]")
    with pytest.raises(ConfigError, match="not both"):
        _settings(random_vgg_file, f"train.init_dir={path}", "train.add_styles=[udnie]",
                  "styles=[udnie]")  # fmt: skip
    with pytest.raises(ConfigError, match="weight_decay=0"):
        _settings(random_vgg_file, f"train.init_dir={path}", "train.add_styles=[udnie]",
                  "optim.weight_decay=0.01")  # fmt: skip
    with pytest.raises(ConfigError, match=r"duo\.safetensors already has old_b"):
        StyleTransferSystem(
            _settings(random_vgg_file, f"train.init_dir={path}",
                      "train.add_styles=[{name:old_b,image:udnie.jpg}]")
        )  # fmt: skip
    s = _settings(random_vgg_file, "styles=[{name:great_wave,size:96},udnie]")
    wave = s.styles[0]  # an inline mapping naming a shipped style overrides its YAML
    assert wave.size == 96 and wave.style_weight == 2.0 and wave.title.startswith("The Great")


# --- end to end: train.py --------------------------------------------------------------------


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, synthetic_source: DataSource) -> Path:
    """``train.py model=multi_slim 'styles=[starry_night,udnie]'``, 4 steps (synthetic)."""
    run = tmp_path_factory.mktemp("multi") / "run"
    proc = run_train(
        synthetic_source.train_args(
            run, "model=multi_slim", "styles=[starry_night,udnie]", "trainer.max_steps=4",
            "trainer.val_check_interval=2", "train.image_every_n_steps=2",
            "train.checkpoint_every_n_steps=2",
        )
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_a_conditional_run_writes_one_file_with_every_style(multi_run: Path):
    assert sorted(p.name for p in multi_run.glob("*.safetensors")) == ["multi.safetensors"]
    net, meta = load_model(multi_run / "multi.safetensors")
    assert net.num_styles == 2 and meta["width"] == "multi_slim" and meta["global_step"] == 4
    assert style_names(meta) == ["starry_night", "udnie"] and meta["style"] == "starry_night"
    night = meta["styles"][0]
    assert night["painting"] == {
        "title": "The Starry Night", "artist": "Vincent van Gogh", "year": "1889",
        "file": "starry_night.jpg",
    }  # fmt: skip
    assert night["loss"]["style_weight"] == 2.5 and meta["styles"][1]["loss"]["style_weight"] == 1.5
    assert night["training"]["mode"] == "joint" and night["training"]["steps"] == 4
    ckpt_net, ckpt_meta = load_model(multi_run / "checkpoints" / "last.ckpt")
    assert style_names(ckpt_meta) == style_names(meta)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, ckpt_net.state_dict()[key])


def test_tensorboard_has_curves_per_style_and_a_grid_row_per_style(multi_run: Path):
    acc = EventAccumulator(str(multi_run / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for style in ("starry_night", "udnie"):
        for term in ("content", "style", "tv", "total"):
            assert f"train/{style}/{term}" in scalars and f"val/{style}/{term}" in scalars
    assert {"train/total", "val/total"} <= scalars
    image = acc.Images("val/stylized")[-1]
    size, pad = 64, 2  # val_size; image_grid's padding
    assert image.height == 3 * (size + pad) + pad  # the contents, then one row per style
    assert image.width == 3 * (size + pad) + pad  # thumbnail + two grid images


def test_conditional_resume_and_mismatched_resumes(
    multi_run: Path, synthetic_source: DataSource, tmp_path: Path
):
    last = multi_run / "checkpoints" / "last.ckpt"
    proc = run_train(
        synthetic_source.train_args(
            tmp_path / "resumed", "model=multi_slim", "styles=[starry_night,udnie]",
            f"ckpt_path={last}", "trainer.max_steps=6",
        )
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {last} at step 4" in proc.stderr
    _, meta = load_model(tmp_path / "resumed" / "multi.safetensors")
    assert meta["global_step"] == 6
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    three = _settings(synthetic_source.weights, "model=multi_slim",
                      "styles=[starry_night,udnie,the_scream]")  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"one network of 2 styles\) but this run has .* of 3 styles"
    ):
        check_resume_matches(ckpt, three, last)
    swapped = _settings(synthetic_source.weights, "model=multi_slim", "styles=[udnie,starry_night]")
    with pytest.raises(ConfigError, match=r"trained on styles \['starry_night', 'udnie'\]"):
        check_resume_matches(ckpt, swapped, last)
    proc = run_train(
        synthetic_source.train_args(
            tmp_path / "r2", "model=slim", "styles=[starry_night,udnie]", f"ckpt_path={last}"
        )
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ckpt_path: ") and "one network of 2 styles" in line, line
    assert "resume with model=multi_slim" in line


def test_adding_a_style_from_the_command_line(
    multi_run: Path, synthetic_source: DataSource, tmp_path: Path
):
    base_file = multi_run / "multi.safetensors"
    run = tmp_path / "added"
    proc = run_train(
        synthetic_source.train_args(
            run, f"train.init_dir={base_file}", "train.add_styles=[the_scream]",
            "trainer.max_steps=2", "trainer.val_check_interval=2",
        )
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    base, base_meta = load_model(base_file)
    grown, meta = load_model(run / "multi.safetensors")
    assert style_names(meta) == ["starry_night", "udnie", "the_scream"]
    assert meta["styles"][:2] == base_meta["styles"] and meta["width"] == "multi_slim"
    norms = norm_keys(grown)
    for key, value in grown.state_dict().items():
        old = base.state_dict()[key]
        assert torch.equal(value[:2] if key in norms else value, old), key


def test_select_styles_keeps_the_chosen_rows_bit_for_bit_renamed(tmp_path):
    from fast_style.train.multi import select_styles

    torch.manual_seed(0)
    net = TransformerNet(channels=(8, 16, 16), num_residual=1, num_styles=3)
    for key in norm_keys(net):  # distinct rows, so a wrong row shows
        p = dict(net.named_parameters())[key]
        p.data.normal_()
    entries = [{"name": n, "loss": {"style_weight": w}} for n, w in (("a", 1), ("b", 2), ("c", 3))]
    meta = describe(net, style="a", width="multi", styles=entries)
    small, new_meta = select_styles(net, meta, {"wave": "c", "night": "a"})
    path = save_safetensors(small, tmp_path / "m.safetensors", new_meta)
    loaded, stored = load_model(path)
    assert style_names(stored) == ["wave", "night"]
    assert [e["selected_from"] for e in stored["styles"]] == ["c", "a"]
    assert stored["styles"][0]["loss"]["style_weight"] == 3
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        for new_row, old_row in ((0, 2), (1, 0)):
            want = net.eval()(x, torch.eye(3)[[old_row]])
            got = loaded(x, torch.eye(2)[[new_row]])
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="no style"):
        select_styles(net, meta, {"x": "missing"})
