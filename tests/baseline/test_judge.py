"""Issue 16's independent judge (``fast_style.baseline.judge``, ``scripts/judge_styles.py``):
the measure's fixed points, a hand computation of it, and the script on tiny inputs. Fast, on
the CPU, with a random-weight VGG16 (no ../shared needed)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import vgg as tv_vgg

from fast_style.baseline import judge
from fast_style.core.imaging import pil_to_tensor
from fast_style.core.model_io import describe, read_metadata, save_safetensors
from tests._stylize_helpers import photo, tiny_net
from tests.conftest import REPO, random_vgg16_state

# torchvision's VGG16 features: relu1_2, relu2_2, relu3_3, relu4_3 are features[3, 8, 15, 22].
HAND_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}


@pytest.fixture(scope="module")
def vgg(random_vgg_file):
    return judge.judge_network(random_vgg_file)


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    return pil_to_tensor(photo(w, h, seed=seed)).unsqueeze(0)


def test_the_judge_taps_the_four_style_layers_and_relu3_3():
    assert judge.JUDGE_LAYERS == ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    assert judge.CONTENT_LAYER == "relu3_3"


def test_the_photo_itself_reduces_nothing_and_keeps_all_content(vgg):
    x = _image(40, 48, seed=1)
    grams = judge.painting_grams(vgg, _image(64, 56, seed=2))
    s = judge.judge_pair(vgg, x, x.clone(), grams)
    assert s.gram_reduction == pytest.approx(0.0, abs=1e-9)
    assert s.content_kept == pytest.approx(1.0, abs=1e-9)
    assert s.d_photo > 0 and s.d_output == pytest.approx(s.d_photo)


def test_an_output_that_is_the_painting_reduces_everything(vgg):
    x, painting = _image(40, 48, seed=1), _image(40, 48, seed=7)
    s = judge.judge_pair(vgg, x, painting, judge.painting_grams(vgg, painting))
    assert s.d_photo > 0.01  # the photo's Grams differ from the painting's
    assert s.gram_reduction == pytest.approx(1.0, abs=1e-6)
    assert s.d_output == pytest.approx(0.0, abs=1e-6)
    assert -1.0 <= s.content_kept < 1.0


def test_a_photo_that_is_the_painting_has_no_measure(vgg):
    x = _image(40, 48, seed=1)
    with pytest.raises(ValueError, match="no reduction to measure"):
        judge.judge_pair(vgg, x, x, judge.painting_grams(vgg, x))


def test_cosine_is_scale_invariant_and_within_minus_one_and_one():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a, b = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
        c = judge.cosine(a, b)
        assert -1.0 <= c <= 1.0
        assert judge.cosine(3.5 * a, 0.01 * b) == pytest.approx(c, abs=1e-6)
    assert judge.cosine(a, a) == pytest.approx(1.0)
    assert judge.cosine(a, -2 * a) == pytest.approx(-1.0)
    assert judge.cosine(a, torch.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="different shapes"):
        judge.cosine(a, b[:2])


def test_gram_is_f_ft_over_c_h_w():
    f = torch.randn(1, 6, 5, 4, generator=torch.Generator().manual_seed(3))
    flat = f[0].reshape(6, 20)
    torch.testing.assert_close(judge.gram(f), flat @ flat.T / (6 * 5 * 4))
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        judge.gram(f.expand(2, -1, -1, -1))


def _hand_maps(image: torch.Tensor) -> dict[str, np.ndarray]:
    """The four layers' maps (C, H·W), float64, by torchvision's VGG16 and the ImageNet
    normalisation written out, with the weights of ``random_vgg_file`` (the same seed)."""
    layers = tv_vgg.make_layers(tv_vgg.cfgs["D"])[:23].eval()
    state = {k.removeprefix("features."): v.float() for k, v in random_vgg16_state().items()}
    layers.load_state_dict({k: state[k] for k in layers.state_dict()})
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h, out = (image - mean) / std, {}
    with torch.no_grad():
        for i, layer in enumerate(layers):
            h = layer(h)
            for name, idx in HAND_LAYERS.items():
                if i == idx:
                    out[name] = h[0].reshape(h.shape[1], -1).double().numpy().copy()
    return out


def _hand_distance(a: dict, p: dict, per_pixel: bool = True) -> float:
    def g(f: np.ndarray) -> np.ndarray:
        return f @ f.T / (f.shape[0] * f.shape[1] if per_pixel else f.shape[0])

    return float(np.mean([np.linalg.norm(g(a[k]) - g(p[k])) / np.linalg.norm(g(p[k])) for k in a]))


def test_the_measure_matches_a_hand_computation(vgg):
    """Layers, Gram normalisation and the content cosine, against numpy on torchvision's
    layers; the painting is larger than the photo, so a Gram not divided by H·W would fail."""
    x, y, painting = _image(40, 48, seed=1), _image(40, 48, seed=4), _image(72, 64, seed=2)
    hx, hy, hp = _hand_maps(x), _hand_maps(y), _hand_maps(painting)
    grams = judge.painting_grams(vgg, painting)
    one = judge.features(vgg, x)
    k = "relu3_3"  # one layer, written out in full
    gx, gp = hx[k] @ hx[k].T / hx[k].size, hp[k] @ hp[k].T / hp[k].size
    assert judge.gram(torch.from_numpy(hx[k]).view(1, *hx[k].shape, 1)).numpy() == pytest.approx(
        gx, rel=1e-5, abs=1e-9
    )
    np.testing.assert_allclose(one.grams[k].numpy(), gx, rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(grams[k].numpy(), gp, rtol=2e-4, atol=1e-7)
    d_photo = judge.gram_distance(one.grams, grams)
    assert d_photo == pytest.approx(_hand_distance(hx, hp), rel=1e-4)
    assert abs(_hand_distance(hx, hp, per_pixel=False) - d_photo) > 0.01 * d_photo
    s = judge.judge_pair(vgg, x, y, grams)
    assert s.gram_reduction == pytest.approx(
        1 - _hand_distance(hy, hp) / _hand_distance(hx, hp), rel=1e-4, abs=1e-6
    )
    a, b = hy[k].ravel(), hx[k].ravel()
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    assert s.content_kept == pytest.approx(cos, rel=1e-5)


def test_photos_are_never_upscaled_unless_asked(tmp_path):
    photo(80, 60, seed=0).save(tmp_path / "p.png")
    assert judge.photo_tensor(tmp_path / "p.png", 512).shape[-2:] == (60, 80)
    assert judge.photo_tensor(tmp_path / "p.png", 64).shape[-2:] == (48, 64)
    assert judge.photo_tensor(tmp_path / "p.png", 512, upscale=True).shape[-2:] == (384, 512)


def test_the_painting_is_the_styles_at_its_training_size(tmp_path):
    single = read_metadata(REPO / "checkpoints" / "starry_night.safetensors")
    path, size = judge.painting_for(single)
    assert (path.name, size, path.is_file()) == ("starry_night.jpg", 512, True)
    multi = read_metadata(REPO / "checkpoints" / "multi.safetensors")
    for style in ("starry_night", "great_wave"):
        path, size = judge.painting_for(multi, style)
        assert (path.name, size) == (f"{style}.jpg", 256)
    Image.new("RGB", (100, 50), (200, 30, 30)).save(tmp_path / "red.png")
    training = {"style": {"image": str(tmp_path / "red.png"), "size": 40}}
    meta = describe(tiny_net(), "red", width="tiny", training=training)
    assert judge.load_painting(meta).shape == (1, 3, 20, 40)


def test_the_default_models_are_the_full_single_style_ones():
    found = judge.shipped_style_models()
    names = {p.stem for p in found}
    assert "starry_night" in names
    assert not {"starry_night_nano", "starry_night_cpu_demo", "multi"} & names
    assert all(read_metadata(p).get("num_styles", 1) == 1 for p in found)


def _script():
    spec = importlib.util.spec_from_file_location(
        "judge_styles", REPO / "scripts" / "judge_styles.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _photos(folder, n: int, seed: int):
    folder.mkdir()
    for i in range(n):
        photo(80, 60, seed=seed + i).save(folder / f"p{i}.jpg", quality=92)
    return folder


def test_the_script_prints_one_row_per_style_and_photo_set(tmp_path, random_vgg_file, capsys):
    """A one-style nano and the two-style demo on two sets of tiny photos (the per-set
    --limit), at 64 px, with a random VGG16: the table, the JSON and the grids."""
    a, b = _photos(tmp_path / "a", 2, seed=10), _photos(tmp_path / "b", 2, seed=20)
    tiny = save_safetensors(tiny_net(), tmp_path / "tiny.safetensors", describe(
        tiny_net(), "tiny", width="tiny", training={"style": {"image": "udnie.jpg", "size": 64}}
    ))  # fmt: skip
    argv = [
        "--models", "starry_night_nano", "multi", str(tiny), "--photos", str(a), "--limit", "2",
        "--photos", str(b), "--limit", "1", "--size", "64", "--vgg", str(random_vgg_file),
        "--grid", str(tmp_path / "grids"), "--json", str(tmp_path / "j.json"),
    ]  # fmt: skip
    assert _script().main(argv) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| model | style | photos | Gram reduction | content kept |")
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    styles = [("starry_night_nano", "starry_night"), ("multi", "starry_night")]
    styles += [("multi", "great_wave"), ("tiny", "tiny")]
    sets = ("a (2, 64 px)", "b (1, 64 px)")
    assert [(r[0], r[1], r[2]) for r in rows] == [(m, s, p) for m, s in styles for p in sets]
    for r in rows:
        g, c = float(r[3]), float(r[4])
        assert g <= 1 and -1 <= c <= 1
        assert r[7] == ("yes" if g >= judge.GOAL and c >= judge.GOAL else "**no**")
    results = json.loads((tmp_path / "j.json").read_text())["results"]
    assert [len(r["per_photo"]) for r in results] == [2, 1] * 4
    assert [f"{r['content_kept']:.3f}" for r in results] == [r[4] for r in rows]
    assert results[-1]["painting_size"] == 64
    grids = sorted(p.name for p in (tmp_path / "grids").iterdir())
    assert grids == ["multi__great_wave.jpg", "multi__starry_night.jpg",
                     "starry_night_nano__starry_night.jpg", "tiny.jpg"]  # fmt: skip
    with Image.open(tmp_path / "grids" / "tiny.jpg") as im:  # 1 photo of set b: photo + output
        assert im.width >= 64 and im.height > 2 * 48


def test_the_script_wants_one_limit_or_one_per_set(tmp_path, random_vgg_file):
    a, b = _photos(tmp_path / "a", 1, seed=1), _photos(tmp_path / "b", 1, seed=2)
    argv = ["--models", "starry_night_nano", "--photos", str(a), "--photos", str(b)]
    argv += ["--vgg", str(random_vgg_file)]
    with pytest.raises(SystemExit, match="once per --photos"):
        _script().main([*argv, "--limit", "1", "--limit", "1", "--limit", "1"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_judge_on_cuda_gives_the_cpus_figures(random_vgg_file):
    """The GPU run (scripts/gpu_run.py) judges on CUDA: float32 without TF32, as on the CPU."""
    x, y, painting = _image(64, 80, seed=1), _image(64, 80, seed=3), _image(96, 72, seed=5)
    scores = []
    for device in ("cpu", "cuda"):
        vgg = judge.judge_network(random_vgg_file, device)
        grams = judge.painting_grams(vgg, painting.to(device))
        scores.append(judge.judge_pair(vgg, x.to(device), y.to(device), grams))
    cpu, cuda = scores
    assert cuda.gram_reduction == pytest.approx(cpu.gram_reduction, abs=1e-4)
    assert cuda.content_kept == pytest.approx(cpu.content_kept, abs=1e-5)
