import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fast_style.core.network import TransformerNet
from fast_style.core.resources import config_dir, paintings_dir, resolve_data_path
from fast_style.train.config import ConfigError, validate
from fast_style.train.system import build_criterion
from tests.conftest import run_train

CONF = config_dir()
STYLES = sorted(p.stem for p in (CONF / "style").glob("*.yaml") if p.stem != "custom")
PUBLIC_DOMAIN = {
    "starry_night",
    "great_wave",
    "the_scream",
    "composition_vii",
    "udnie",
    "shipwreck_of_the_minotaur",
    "water_lilies",
    "woman_with_hat",
}


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_the_eight_public_domain_styles_ship():
    assert set(STYLES) == PUBLIC_DOMAIN
    shipped = {p.stem for p in paintings_dir().iterdir()}
    assert shipped == PUBLIC_DOMAIN  # only public-domain paintings are in the repo


@pytest.mark.parametrize("style", STYLES)
def test_every_style_composes_and_instantiates(style):
    cfg = compose_train(f"style={style}", "loss.weights=random", "style.size=64")
    s = validate(cfg)
    assert s.style.name == style
    assert resolve_data_path(s.style.image).is_file()
    assert s.style.style_weight > 0 and set(s.style.style_layers) == {
        "relu1_2",
        "relu2_2",
        "relu3_3",
        "relu4_3",
    }
    crit, style_img = build_criterion(s)
    assert style_img.shape[:2] == (1, 3) and max(style_img.shape[-2:]) == 64
    assert all(hasattr(crit, f"gram_{t}") for t in s.style.style_layers)
    net = TransformerNet(s.model.channels, s.model.num_residual)
    assert net.config.channels == (32, 64, 128)


@pytest.mark.parametrize(
    ("group", "option", "expected"),
    [
        ("model", "slim", [16, 32, 64]),
        ("model", "johnson", [32, 64, 128]),
    ],
)
def test_model_widths(group, option, expected):
    assert validate(compose_train(f"{group}={option}")).model.channels == expected


@pytest.mark.parametrize(
    ("trainer", "accelerator", "precision", "strategy"),
    [
        ("cpu", "cpu", "32-true", None),
        ("cpu_bf16", "cpu", "bf16-mixed", None),
        ("gpu", "gpu", "bf16-mixed", None),
        ("ddp", "auto", "auto", "ddp"),
        ("auto", "auto", "auto", None),
    ],
)
def test_trainer_groups(trainer, accelerator, precision, strategy):
    s = validate(compose_train(f"trainer={trainer}"))
    assert s.trainer["max_steps"] == 40000
    assert s.trainer["accelerator"] == accelerator and s.trainer["precision"] == precision
    assert s.trainer.get("strategy") == strategy


def test_smoke_experiment_is_small_and_on_cpu():
    s = validate(compose_train("experiment=smoke"))
    assert s.trainer["accelerator"] == "cpu" and s.trainer["max_steps"] <= 10
    assert s.data.image_size <= 64 and s.model.name == "slim"
    assert s.train.checkpoint_every_n_steps < s.trainer["max_steps"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "style.contnt_weight",
            "unknown key 'style.contnt_weight' (did you mean 'content_weight'?)",
        ),
        ("trainer.max_step", "unknown key 'trainer.max_step'"),
        ("model.width", "unknown key 'model.width'"),
        ("lossy", "unknown key 'lossy'"),
    ],
)
def test_typo_in_a_config_file_names_the_key(override, expected):
    cfg = compose_train()
    OmegaConf.set_struct(cfg, False)
    OmegaConf.update(cfg, override, 1.0, force_add=True)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert expected in str(err.value)


def test_wrong_type_and_bad_layer_are_reported():
    cfg = compose_train("data.image_size=big")
    with pytest.raises(ConfigError, match=r"data\.image_size"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"style\.style_layers\.relu9_1"):
        validate(compose_train("+style.style_layers.relu9_1=1.0"))


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (  # Hydra's own error, with its hint
            ["data.imge_size=64"],
            1,
            "Could not override 'data.imge_size'.\nTo append to your config use +data.imge_size=64",
        ),
        (["style=starry_nite"], 1, "In 'train': Could not find 'style/starry_nite'"),
        (  # appended with +: fast_style's validation names it and the nearest key
            ["+style.contnt_weight=2"],
            2,
            "unknown key 'style.contnt_weight' (did you mean 'content_weight'?)",
        ),
    ],
)
def test_mistyped_key_on_the_command_line_fails_at_once(args, code, expected):
    proc = run_train(args, timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert expected in proc.stderr
    if code == 2:
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and last.endswith(expected), last
        assert "Traceback" not in proc.stderr
    assert "Epoch" not in proc.stderr  # failed before any training


def test_missing_data_folder_is_one_clear_line(tmp_path):
    proc = run_train(
        [
            "experiment=smoke",
            f"data.root={tmp_path / 'nothing'}",
            "loss.weights=random",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        timeout=120,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: data.root: image folder not found: {tmp_path / 'nothing'}")
    assert not (tmp_path / "run" / "checkpoints").exists()
