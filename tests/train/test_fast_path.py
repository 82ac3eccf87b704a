"""The GPU fast path's pieces, on the CPU: the device-resident image bank, early-stopping
loss-network taps, several styles sharing one loss-network pass, fine-tuning from shipped
models, the time budget and the throughput report."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from fast_style.core.model_io import load_model
from fast_style.core.resources import config_dir
from fast_style.loss import LossWeights, PerceptualLoss
from fast_style.loss.vgg import VGGFeatures
from fast_style.train.callbacks import TimeBudget
from fast_style.train.config import ConfigError, validate
from fast_style.train.data import DeviceBatches, GPUImageBank
from fast_style.train.system import StyleTransferSystem
from tests.conftest import DataSource, run_train


def _settings(*overrides: str):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return validate(compose("train", ["experiment=smoke", "loss.weights=random", *overrides]))


@pytest.fixture
def photo_files(tmp_path: Path) -> list[Path]:
    files = []
    for i in range(5):
        g = torch.Generator().manual_seed(i)
        arr = (torch.rand(40, 48 + 4 * i, 3, generator=g) * 255).byte().numpy()
        f = tmp_path / f"p{i}.png"
        Image.fromarray(arr).save(f)
        files.append(f)
    return files


def test_image_bank_crops_and_flips_come_from_the_stored_images(photo_files):
    bank = GPUImageBank(photo_files, size=32)
    assert bank.images.shape == (5, 3, 32, 32) and bank.images.dtype == torch.uint8
    torch.manual_seed(0)
    idx = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    out = bank.batch(idx, 24)
    assert out.shape == (8, 3, 24, 24) and out.min() >= 0 and out.max() <= 1
    flipped = 0
    for b, i in enumerate(idx.tolist()):
        src = bank.images[i].float() / 255
        # the crop (or its mirror image) must occur somewhere in the stored image
        windows = src.unfold(1, 24, 1).unfold(2, 24, 1)  # (3, 9, 9, 24, 24)
        plain = (windows - out[b][:, None, None]).abs().amax(dim=(0, 3, 4)).min()
        mirror = (windows - out[b].flip(-1)[:, None, None]).abs().amax(dim=(0, 3, 4)).min()
        assert min(plain, mirror) < 1e-6
        flipped += bool(mirror < 1e-6 and plain > 1e-6)
    assert 0 < flipped < 8  # random flips: some, not all (seeded)


def test_device_batches_cover_an_epoch_without_replacement(photo_files):
    bank = GPUImageBank(photo_files, size=16)
    batches = list(DeviceBatches(bank, batch_size=2))
    assert len(batches) == 2 and all(b.dtype == torch.int64 and len(b) == 2 for b in batches)
    seen = torch.cat(batches).tolist()
    assert len(set(seen)) == 4 and set(seen) <= set(range(5))


def test_loss_network_stops_at_the_deepest_requested_tap():
    net = VGGFeatures({"relu1_2", "relu2_2", "relu4_3"}, weights="random")
    ran: list[str] = []
    for name, layer in zip(net.names, net.layers, strict=True):
        layer.register_forward_hook(lambda *_a, name=name: ran.append(name))
    x = torch.rand(1, 3, 32, 32)
    full = net(x)
    assert ran == net.names and ran[-1] == "relu4_3"
    ran.clear()
    part = net(x, taps=("relu2_2",))
    assert list(part) == ["relu2_2"]
    assert ran == net.names[: net.names.index("relu2_2") + 1]  # nothing after relu2_2 ran
    torch.testing.assert_close(part["relu2_2"], full["relu2_2"])


def test_terms_from_shared_features_equal_the_plain_forward():
    crit = PerceptualLoss.build(LossWeights(), vgg_weights="random")
    crit.set_style(torch.rand(1, 3, 40, 40))
    out, content = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    a = crit(out, content)
    b = crit.terms(crit.network(out), crit.content_targets(content), out)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_styles_list_validates_names_and_duplicates():
    s = _settings("styles=[starry_night,the_scream]")
    assert [st.name for st in s.styles] == ["starry_night", "the_scream"]
    assert s.style.name == "starry_night" and s.for_style(1).styles[0].name == "the_scream"
    with pytest.raises(ConfigError, match="did you mean 'the_scream'"):
        _settings("styles=[starry_night,the_scram]")
    with pytest.raises(ConfigError, match="unique"):
        _settings("styles=[udnie,udnie]")


def test_two_styles_share_one_pass_and_get_their_own_gradients():
    torch.manual_seed(0)
    settings = _settings("styles=[starry_night,the_scream]", "model=slim")
    system = StyleTransferSystem(settings)
    batch = torch.rand(2, 3, 32, 32)
    shared = system.compute_terms(batch)
    assert len(shared) == 2 and len(system.nets) == 2
    # each style's terms equal its own criterion applied to its own network's output
    for k, (crit, net) in enumerate(zip(system.criteria, system.nets, strict=True)):
        alone = crit(net(batch), batch)
        for key in ("content", "style", "tv", "total"):
            torch.testing.assert_close(shared[k][key], alone[key], rtol=1e-4, atol=1e-6)
    assert system.criteria[0].network is system.criteria[1].network  # one loss network
    # the summed loss gives network 1 exactly the gradient of style 1's loss alone
    total = torch.stack([t["total"] for t in system.compute_terms(batch)]).sum()
    total.backward()
    g_shared = [p.grad.clone() for p in system.nets[1].parameters()]
    system.zero_grad()
    system.criteria[1](system.nets[1](batch), batch)["total"].backward()
    for a, b in zip(g_shared, (p.grad for p in system.nets[1].parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-7)


def test_time_budget_lowers_max_steps_and_never_raises_it():
    class FakeTrainer:  # what TimeBudget reads and writes of a pl.Trainer
        global_step = 0
        fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(max_steps=10_000))

        @property
        def max_steps(self) -> int:
            return self.fit_loop.epoch_loop.max_steps

    trainer = FakeTrainer()
    module = SimpleNamespace(device=torch.device("cpu"))

    def run(budget_min: float, start_s: float, step_s: float) -> None:
        clock = iter([0.0, start_s, start_s + 4 * step_s])  # start, after warm-up, after probe
        cb = TimeBudget(budget_min, warmup=2, probe=4, clock=lambda: next(clock))
        trainer.global_step = 0
        cb.on_train_start(trainer, module)
        for step in range(1, 7):
            trainer.global_step = step
            cb.on_train_batch_end(trainer, module)

    run(1.0, start_s=10.0, step_s=0.5)  # 0.95 * (60 - 12) - 30 = 15.6 s left: 31 more steps
    assert trainer.max_steps == 6 + 31
    run(1000.0, start_s=10.0, step_s=0.5)  # a roomy budget never raises max_steps
    assert trainer.max_steps == 37


def test_two_style_run_with_gpu_cache_then_fine_tune(tmp_path, synthetic_source: DataSource):
    """End to end on the CPU (synthetic layer): two styles, the device-resident data path, one
    export each, the throughput report; then a fine-tune from those exports records where it
    started and starts from their weights."""
    run1 = tmp_path / "run1"
    proc = run_train(
        synthetic_source.train_args(
            run1,
            "styles=[starry_night,udnie]",
            "data.gpu_cache=true",
            "data.cache_size=72",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run1 / "throughput.json").read_text())
    assert report["styles"] == 2 and report["steps"] == 4 and report["samples_per_s"] > 0
    for name in ("starry_night", "udnie"):
        _, meta = load_model(run1 / f"{name}.safetensors")
        assert meta["style"] == name and meta["training"]["style"]["name"] == name
        assert meta["training"]["styles"] == [meta["training"]["style"]]
    run2 = tmp_path / "run2"
    proc = run_train(
        synthetic_source.train_args(
            run2,
            "styles=[starry_night,udnie]",
            f"train.init_dir={run1}",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
        )
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, meta = load_model(run2 / "udnie.safetensors")
    assert meta["fine_tuned_from"]["global_step"] == 4
    assert meta["fine_tuned_from"]["style"] == "udnie"
    # and it started from those exports' weights, each style from its own
    system = StyleTransferSystem(_settings("styles=[starry_night,udnie]", f"train.init_dir={run1}"))
    for name, net in zip(("starry_night", "udnie"), system.nets, strict=True):
        exported, _ = load_model(run1 / f"{name}.safetensors")
        for key, value in exported.state_dict().items():
            torch.testing.assert_close(net.state_dict()[key], value, msg=f"{name}: {key}")


def test_fine_tune_from_a_different_width_is_one_clear_error(tmp_path, synthetic_smoke_run):
    """The smoke model is slim; fine-tuning a full-width (johnson) network from it fails."""
    (tmp_path / "init").mkdir()
    (tmp_path / "init" / "starry_night.safetensors").write_bytes(
        (synthetic_smoke_run / "starry_night.safetensors").read_bytes()
    )
    settings = _settings(f"train.init_dir={tmp_path / 'init'}", "model=johnson")
    from fast_style.core.model_io import ModelFileError

    with pytest.raises(
        ModelFileError, match=r"starry_night\.safetensors: its network .* is not model=johnson"
    ):
        StyleTransferSystem(settings)
