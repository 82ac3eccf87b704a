"""Style specs (``--style``): one style, a convex mix, two styles to paint; every error is one
line naming the problem and the styles there are. Painting captions and demo models."""

from __future__ import annotations

import pytest
import torch

from fast_style.infer import styles
from fast_style.infer.styles import (
    DEFAULT_STYLE,
    StyleSpecError,
    is_demo,
    painting_info,
    parse_style_spec,
)

NAMES = ["starry_night", "great_wave", "the_scream"]
AVAILABLE = "available: starry_night, great_wave, the_scream"


def test_one_style_is_a_one_hot_row():
    choice = parse_style_spec("great_wave", NAMES)
    assert choice.names == ("great_wave",) and choice.label == "great_wave"
    assert not choice.painted
    assert torch.equal(choice.weights, torch.tensor([0.0, 1.0, 0.0]))
    assert choice.weights.dtype == torch.float32


@pytest.mark.parametrize(
    ("spec", "expected", "label"),
    [
        ("starry_night=0.7,great_wave=0.3", [0.7, 0.3, 0.0], "starry_night=0.7+great_wave=0.3"),
        ("great_wave=2, the_scream = 6", [0.0, 0.25, 0.75], "great_wave=0.25+the_scream=0.75"),
        ("starry_night=1,great_wave=1,the_scream=2", [0.25, 0.25, 0.5], None),
        ("the_scream=0.4", [0.0, 0.0, 1.0], "the_scream=1"),  # one weight: normalised to 1
        ("starry_night=0,great_wave=1e-3", [0.0, 1.0, 0.0], None),
    ],
)
def test_a_mix_is_normalised_to_convex_weights(spec, expected, label):
    choice = parse_style_spec(spec, NAMES)
    torch.testing.assert_close(choice.weights, torch.tensor(expected))
    assert choice.weights.shape == (3,) and not choice.painted
    assert float(choice.weights.sum()) == pytest.approx(1.0)
    if label is not None:
        assert choice.label == label


def test_two_names_with_a_mask_are_the_two_rows_to_paint():
    choice = parse_style_spec("the_scream, starry_night", NAMES, masked=True)
    assert choice.painted and choice.names == ("the_scream", "starry_night")
    # Row 0 where the mask is white (the first name), row 1 where it is black.
    assert torch.equal(choice.weights, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert choice.label == "the_scream|starry_night"


@pytest.mark.parametrize(
    ("spec", "masked", "message"),
    [
        (
            "starry_nite",
            False,
            f"unknown style 'starry_nite' (did you mean 'starry_night'?); {AVAILABLE}",
        ),
        (
            "Great_Wave",
            False,
            f"unknown style 'Great_Wave' (did you mean 'great_wave'?); {AVAILABLE}",
        ),
        ("mosaic=1,great_wave=1", False, f"unknown style 'mosaic'; {AVAILABLE}"),
        ("great_wave=0.5,starry_night=abc", False, "starry_night=abc: 'abc' is not a number"),
        (
            "great_wave=-1,starry_night=2",
            False,
            "great_wave=-1: a weight must be a finite number ≥ 0",
        ),
        ("great_wave=inf", False, "great_wave=inf: a weight must be a finite number ≥ 0"),
        ("great_wave=nan", False, "great_wave=nan: a weight must be a finite number ≥ 0"),
        (
            "great_wave=0,the_scream=0",
            False,
            "the weights are all 0: at least one must be positive",
        ),
        ("great_wave=0.5,great_wave=0.5", False, "'great_wave' is named twice"),
        ("great_wave,great_wave", True, "'great_wave' is named twice"),
        ("great_wave=0.5,,the_scream=0.5", False, "item 2 of the spec is empty (a stray comma?)"),
        ("great_wave,", False, "item 2 of the spec is empty (a stray comma?)"),
        ("=0.5,great_wave=1", False, "item 1 of the spec is a weight without a style name"),
        ("great_wave=", False, "great_wave=: the weight is missing"),
        ("", False, "empty style spec: name a style, e.g. starry_night"),
        ("  ", True, "empty style spec: name a style, e.g. starry_night"),
        (
            "great_wave=0.5,the_scream",
            False,
            "'the_scream' has no weight: give every style of a mix a weight",
        ),
        (
            "starry_night,great_wave",
            False,
            "2 styles without weights: mix them (starry_night=0.5,great_wave=0.5) or paint the "
            "two with a style mask (--style-mask FILE)",
        ),
        (
            "starry_night,great_wave,the_scream",
            False,
            "3 styles without weights: mix them "
            "(starry_night=0.33,great_wave=0.33,the_scream=0.33)",
        ),
        (
            "great_wave",
            True,
            "a style mask paints two styles: give two names without weights, e.g. "
            "great_wave,starry_night (white: the first, black: the second)",
        ),
        (
            "great_wave=0.5,the_scream=0.5",
            True,
            "a style mask paints two styles: give two names without weights, e.g. "
            "great_wave,the_scream (white: the first, black: the second)",
        ),
    ],
)
def test_a_bad_spec_is_one_clear_line(spec, masked, message):
    with pytest.raises(StyleSpecError) as e:
        parse_style_spec(spec, NAMES, masked=masked)
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def test_a_style_of_another_model_lists_what_this_one_has():
    with pytest.raises(StyleSpecError, match=r"^unknown style 'udnie'; available: a, b$"):
        parse_style_spec("udnie", ["a", "b"])


def test_the_default_style_is_the_readmes():
    assert DEFAULT_STYLE == "starry_night"
    from fast_style.infer import cli

    assert cli.DEFAULT_MODEL == DEFAULT_STYLE  # one constant: stylize.py and the web page


# --- captions and demos ----------------------------------------------------------------------


def test_the_caption_comes_from_the_metadata_first():
    entry = {"painting": {"title": "Composition VII", "artist": "Kandinsky", "year": 1913}}
    info = painting_info("composition_vii", entry)
    assert info == {
        "title": "Composition VII",
        "artist": "Kandinsky",
        "year": "1913",
        "label": "Composition VII — Kandinsky, 1913",
    }


def test_without_metadata_the_shipped_config_gives_the_caption():
    # The eight shipped paintings: conf/style/<name>.yaml holds title, artist and year (one
    # place for training and the page). No naive title-casing: "VII", "with a Hat".
    assert painting_info("composition_vii")["label"] == "Composition VII — Wassily Kandinsky, 1913"
    assert painting_info("woman_with_hat", {"painting": {}})["title"] == "Woman with a Hat"
    assert painting_info("great_wave")["year"] == "c. 1831"


def test_an_unknown_painting_keeps_its_name_readable():
    assert painting_info("my_cat") == {
        "title": "My cat",
        "artist": None,
        "year": None,
        "label": "My cat",
    }
    assert painting_info("x", {"painting": {"title": "Sunset"}})["label"] == "Sunset"
    assert painting_info("../../etc/passwd")["title"] == "../../etc/passwd"  # never read as a path


def test_partial_metadata_is_completed_from_the_config():
    info = painting_info("the_scream", {"painting": {"title": "", "artist": None, "year": "1893"}})
    assert info["label"] == "The Scream — Edvard Munch, 1893"


def test_demo_models():
    assert is_demo("starry_night_cpu_demo", {})
    assert is_demo("tiny", {"demo": True})
    assert not is_demo("starry_night", {"demo": False}) and not is_demo("demo", {})
    assert styles.DEMO_SUFFIX == "_cpu_demo"
