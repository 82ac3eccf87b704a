"""The flicker report: rows on a clip (DIS flow), the synthetic benchmark (exact flow), the JSON,
Markdown and strip it writes, and the command line with a shipped model."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from fast_style.baseline.video_eval import main
from fast_style.core.resources import shipped_models_dir
from fast_style.video.evaluate import (
    evaluate_rows,
    identity,
    synthetic_benchmark,
    write_report,
)


class Flicker:
    """Random brightness per frame: the worst a per-frame method can do."""

    def __init__(self) -> None:
        self.gen = torch.Generator().manual_seed(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        gain = 1 + 0.4 * (torch.rand(x.shape[0], 1, 1, 1, generator=self.gen) - 0.5)
        return (x * gain).clamp(0, 1)


def test_rows_on_a_clip_and_the_report(mp4_clip, tmp_path):
    seen = []

    def losses(x, y):
        seen.append(x.shape[0])
        return {"content": float((x - y).abs().mean())}

    rows = {"input": identity, "flicker": Flicker(), "stable": lambda x: x**0.5}
    res = evaluate_rows(mp4_clip.path, rows, batch=6, losses_fn=losses)
    by = {r["name"]: r for r in res["rows"]}
    assert res["frames"] == 20 and res["size"] == [33, 21] and sum(seen) == 3 * 20
    assert by["flicker"]["e_warp"] > 5 * by["input"]["e_warp"]
    assert by["stable"]["e_warp"] < by["flicker"]["e_warp"]
    assert by["input"]["losses"]["content"] == 0 and by["flicker"]["fps"] > 0
    res["synthetic"] = synthetic_benchmark(rows, size=(40, 24), frames=4, photos=None)
    syn = {r["name"]: r["e_warp"] for r in res["synthetic"]["rows"]}
    assert syn["input"]["mean"] < 1e-4 < syn["flicker"]["mean"]
    paths = write_report(res, tmp_path / "eval")
    data = json.loads(paths["json"].read_text())
    assert [r["name"] for r in data["rows"]] == ["input", "flicker", "stable"]
    md = paths["md"].read_text()
    assert "| flicker |" in md and "| pan | zoom | rotate | mean |" in md and "content" in md
    with Image.open(paths["strip"]) as strip:  # clip + 2 rows (identity repeats the clip)
        assert strip.height == 3 * 160 and strip.width > 4 * 160


def test_the_command_line_with_a_shipped_model(mp4_clip, tmp_path, capsys, random_vgg_file):
    model = shipped_models_dir() / "starry_night_cpu_demo.safetensors"
    out = tmp_path / "eval"
    argv = ["--model", str(model), "--input", str(mp4_clip.path), "--out", str(out)]
    argv += ["--max-frames", "8", "--device", "cpu", "--synthetic-frames", "3"]
    argv += ["--vgg-weights", str(random_vgg_file), "--momentum", "0.8", "--blend", "0.6"]
    assert main([*argv, "--synthetic-size", "32x20"]) == 0
    data = json.loads((out / "results.json").read_text())
    by = {r["name"]: r for r in data["rows"]}
    both = "temporal (m=0.8) + flow (α=0.6)"
    assert data["frames"] == 8
    assert set(by) == {"input", "per-frame", "temporal (m=0.8)", "flow (α=0.6)", both}
    assert by["per-frame"]["e_warp"] > by["input"]["e_warp"]
    assert set(by["per-frame"]["losses"]) == {"content", "style"}
    assert by["input"]["losses"]["content"] == 0.0  # the input is its own content
    assert by["flow (α=0.6)"]["e_warp"] < by["per-frame"]["e_warp"]
    assert f"| {both} |" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["input", "model"])
def test_the_command_line_fails_with_one_line(mp4_clip, tmp_path, capsys, bad):
    model = shipped_models_dir() / "starry_night_cpu_demo.safetensors"
    args = {"input": str(mp4_clip.path), "model": str(model)}
    args[bad] = str(tmp_path / "missing.mp4")
    argv = ["--model", args["model"], "--input", args["input"], "--out", str(tmp_path)]
    code = main([*argv, "--no-losses"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "missing.mp4" in err


def test_fast_style_evaluate_video_dispatches(capsys):
    from fast_style.cli import main as cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(["evaluate", "video", "--help"])
    assert e.value.code == 0
    assert "--momentum" in capsys.readouterr().out  # the video report's options, not the photo one
