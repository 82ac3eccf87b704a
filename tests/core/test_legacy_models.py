"""Model files of format version 1 (positional nn.Sequential keys) keep loading unchanged: the
shipped models, .safetensors and Lightning .ckpt files, single- and multi-style, and the
checkpoint hook that Lightning's strict resume goes through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fast_style.core.model_io import (
    FORMAT_VERSION,
    ModelFileError,
    check_shapes,
    describe,
    expected_shapes,
    load_model,
)
from fast_style.core.network import (
    TransformerConfig,
    TransformerNet,
    upgrade_key,
    upgrade_state_dict,
)
from fast_style.core.resources import shipped_models_dir

# Computed with the code of format version 1 on
# torch.manual_seed(0); x = torch.rand(1, 3, 37, 29); y = net(x):
# (mean, std, y[0, :, 5, 7], y[0, :, 30, 20])
GOLDEN = {
    "starry_night_cpu_demo": (
        0.450025,
        0.167853,
        [0.27898, 0.45006, 0.52662],
        [0.28369, 0.37173, 0.60862],
    ),
    "great_wave": (
        0.597603,
        0.193532,
        [0.87057, 0.80052, 0.70024],
        [0.33629, 0.30487, 0.37565],
    ),
}


def positional_keys(num_residual: int) -> list[str]:
    """Format 1's parameter names, in its module registration order (written out here
    independently of ``upgrade_key``)."""
    wb = ("weight", "bias")
    keys = [f"encoder.{i}.{j}.{p}" for i in range(3) for j in (1, 2) for p in wb]
    for r in range(num_residual):
        keys += [f"residuals.{r}.body.{j}.{p}" for j in ("0.1", "0.2", "2", "3") for p in wb]
    keys += [f"decoder.{i}.1.{j}.{p}" for i in range(2) for j in (1, 2) for p in wb]
    return keys + [f"decoder.2.1.{p}" for p in wb]


def legacy_state(net: TransformerNet) -> dict[str, torch.Tensor]:
    """``net``'s weights under format 1's names."""
    values = list(net.state_dict().values())
    return dict(zip(positional_keys(net.config.num_residual), values, strict=True))


def _check_golden(net: TransformerNet, style: str) -> None:
    mean, std, p1, p2 = GOLDEN[style]
    torch.manual_seed(0)
    x = torch.rand(1, 3, 37, 29)
    with torch.no_grad():
        y = net(x)
    assert abs(y.mean().item() - mean) < 1e-5 and abs(y.std().item() - std) < 1e-5
    torch.testing.assert_close(y[0, :, 5, 7], torch.tensor(p1), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[0, :, 30, 20], torch.tensor(p2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("style", sorted(GOLDEN))
def test_shipped_models_give_the_values_of_before(style):
    net, _ = load_model(shipped_models_dir() / f"{style}.safetensors")
    _check_golden(net, style)


@pytest.mark.parametrize("num_residual", [0, 1, 5])
def test_old_names_map_onto_new_ones_in_parameter_order(num_residual):
    """A bijection that keeps the order: Adam states of old checkpoints (kept by parameter
    index) still belong to the same tensors."""
    net = TransformerNet((8, 16, 24), num_residual)
    old = positional_keys(num_residual)
    assert [upgrade_key(k) for k in old] == list(net.state_dict())
    assert upgrade_key("decoder.2.1.bias") == "output.conv.bias"
    assert upgrade_key("residuals.3.body.0.2.weight") == "residuals.res4.conv1.norm.weight"
    new = upgrade_state_dict(dict.fromkeys(old, 0))
    assert upgrade_state_dict(new) == new  # idempotent
    with pytest.raises(ValueError, match="both"):
        upgrade_state_dict({"encoder.0.1.weight": 0, "encoder.conv1.conv.weight": 1})


def _demo(tmp_path):
    """The slim shipped model's network and a format-1 .safetensors copy of it."""
    from safetensors.torch import save_file

    net, meta = load_model(shipped_models_dir() / "starry_night_cpu_demo.safetensors")
    path = tmp_path / "old.safetensors"
    old_meta = {**meta, "format_version": 1}
    save_file(legacy_state(net), str(path), metadata={"fast_style": json.dumps(old_meta)})
    return net, old_meta, path


def test_format_1_safetensors_loads_unchanged(tmp_path):
    _, _, path = _demo(tmp_path)
    net, meta = load_model(path)
    assert meta["format_version"] == 1 and FORMAT_VERSION == 2
    _check_golden(net, "starry_night_cpu_demo")


def test_format_1_checkpoint_loads_unchanged(tmp_path):
    net, meta, _ = _demo(tmp_path)
    old = legacy_state(net)
    state = {f"net.{k}": v for k, v in old.items()} | {
        f"extra_nets.0.{k}": v for k, v in old.items()
    }
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "fast_style": meta, "global_step": 3}, path)
    loaded, _ = load_model(path)
    _check_golden(loaded, "starry_night_cpu_demo")


def test_header_checks_work_on_both_layouts():
    cfg = TransformerConfig((8, 16, 24), 2)
    new = expected_shapes(cfg)
    old = dict(zip(positional_keys(2), new.values(), strict=True))
    for shapes in (new, old):
        check_shapes(shapes, cfg, Path("x"))
    bad = {**old, "encoder.0.1.weight": (8, 3, 3, 3)}
    with pytest.raises(ModelFileError, match=r"encoder\.conv1\.conv\.weight is \(8, 3, 3, 3\)"):
        check_shapes(bad, cfg, Path("x"))
    del old["decoder.2.1.bias"]
    with pytest.raises(ModelFileError, match=r"missing \['output\.conv\.bias'\]"):
        check_shapes(old, cfg, Path("x"))


def test_new_files_are_written_in_the_new_layout(tmp_path):
    from safetensors import safe_open

    from fast_style.core.model_io import save_safetensors

    net = TransformerNet((8, 16, 16), 1)
    path = save_safetensors(net, tmp_path / "new.safetensors", describe(net, "new"))
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["fast_style"])
    assert keys == set(net.state_dict()) and "output.conv.weight" in keys
    assert meta["format_version"] == FORMAT_VERSION


def test_lightning_resume_hook_renames_every_network(tmp_path):
    """``StyleTransferSystem.on_load_checkpoint`` runs before Lightning's strict
    ``load_state_dict`` (``Trainer.fit(ckpt_path=...)``, ``load_from_checkpoint``)."""
    from hydra import compose, initialize_config_dir

    from fast_style.core.resources import config_dir
    from fast_style.train.config import validate
    from fast_style.train.system import StyleTransferSystem

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        overrides = ["experiment=smoke", "loss.weights=random", "model=slim"]
        settings = validate(compose("train", [*overrides, "styles=[starry_night,the_scream]"]))
    system = StyleTransferSystem(settings)
    net, _, _ = _demo(tmp_path)
    old = legacy_state(net)
    state = {f"net.{k}": v for k, v in old.items()}
    state |= {f"extra_nets.0.{k}": v.clone() for k, v in old.items()}
    ckpt = {"state_dict": state}
    system.on_load_checkpoint(ckpt)
    system.load_state_dict(ckpt["state_dict"], strict=True)
    for n in system.nets:
        _check_golden(n.eval(), "starry_night_cpu_demo")
