"""The one registry mechanism: backbones, heads, methods and dataset formats by name, and their listings."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from weakseg.cli import build_parser, main
from weakseg.config import ConfigError, load_config
from weakseg.data.formats import DATASETS, create_dataset, dataset_splits
from weakseg.data.synthetic import make_synthetic_dataset
from weakseg.io import UserError
from weakseg.methods import (
    METHODS,
    AdaptsEvaluation,
    BuildsModel,
    FitsDataset,
    Method,
    TrainsOwnLayers,
    create_method,
    get_method_class,
    model_kind,
)
from weakseg.models import BACKBONES, HEADS, create_head
from weakseg.registry import Registry, UnknownNameError


def test_registry_registers_creates_lists_and_describes() -> None:
    shapes: Registry = Registry("shape", hint="(or a polygon)")

    @shapes.register("square")
    def square(side: int = 1) -> int:
        """A ``square``: side squared.

        More text that is not part of the description."""
        return side * side

    shapes.add("circle", lambda radius: 3 * radius**2, description="roughly a circle")
    assert shapes.names() == ["circle", "square"] and len(shapes) == 2 and "square" in shapes
    assert shapes.create("square", side=3) == 9 and shapes["square"] is square
    assert shapes.descriptions() == {"circle": "roughly a circle", "square": "A square: side squared."}
    with pytest.raises(ValueError, match="shape 'square' is already registered"):
        shapes.add("square", square)
    with pytest.raises(UnknownNameError) as info:
        shapes.create("sqare")
    assert str(info.value) == (
        "unknown shape 'sqare'; available: circle, square (or a polygon); did you mean 'square'?"
    )
    # one line for the CLI (a UserError: exit status 2), and a KeyError / ValueError for older callers
    assert isinstance(info.value, UserError) and isinstance(info.value, KeyError)
    assert isinstance(info.value, ValueError)


def test_every_registry_describes_each_entry_in_one_line() -> None:
    for registry in (BACKBONES, HEADS, METHODS, DATASETS):
        descriptions = registry.descriptions()
        assert list(descriptions) == registry.names() and registry.names()
        assert all(text and "\n" not in text for text in descriptions.values()), registry


def test_unknown_names_list_the_registered_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown head 'deeplab3plus'; available: .*did you mean 'deeplabv3plus'"
    ):
        create_head("deeplab3plus", [8], [16], 2)
    with pytest.raises(KeyError, match="unknown method 'pcee'; available: aal, cam"):
        get_method_class("pcee")
    with pytest.raises(ConfigError, match="method.name: unknown method 'pcee'"):
        load_config(None, ["method.name=pcee"])
    with pytest.raises(ConfigError, match="'data.format' is 'vocc'; expected one of coco, folder, voc"):
        load_config(None, ["data.format=vocc"])


def test_methods_declare_their_capabilities_as_protocols() -> None:
    """The base class holds what every method needs; the rest is an explicit, checkable capability."""
    assert {name for name, cls in METHODS.items() if isinstance(cls, BuildsModel)} == {"aal", "cam", "sfc"}
    assert {model_kind(cls) for cls in METHODS.values()} == {"segmentor", "classifier", "single_stage"}
    pce = create_method("pce", num_classes=3)
    assert isinstance(pce, Method) and model_kind(pce) == "segmentor"
    assert not isinstance(pce, (FitsDataset, AdaptsEvaluation, TrainsOwnLayers))
    assert isinstance(create_method("cam", num_classes=3, bg_threshold=0.2), AdaptsEvaluation)
    assert isinstance(create_method("dfr", num_classes=3), TrainsOwnLayers)
    assert create_method("cam", num_classes=3, bg_threshold=0.2).params.bg_threshold == 0.2


def test_datasets_open_by_format_name(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "syn", num_train=2, num_val=1, size=(16, 16), seed=0)
    assert dataset_splits("folder", root) == ["train", "val"]
    full = create_dataset("folder", root, "train")
    assert full.has("mask") and full.has("scribble") and len(full) == 2
    bare = create_dataset("folder", root, "train", load_masks=False, scribbles="off", tags_source="none")
    assert not bare.has("mask") and not bare.has("scribble") and not bare.has("tags")
    with pytest.raises(
        UnknownNameError, match="unknown dataset format 'pascal'; available: coco, folder, voc"
    ):
        create_dataset("pascal", root, "train")


def _format_choices(parser: argparse.ArgumentParser, path: str = "weakseg") -> dict[str, list[str]]:
    """``{command path: choices}`` of every ``--format`` option under ``parser``."""
    found = {}
    for action in parser._actions:
        if "--format" in action.option_strings:
            found[path] = list(action.choices or [])
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action._name_parser_map.items():
                found.update(_format_choices(sub, f"{path} {name}"))
    return found


def test_command_line_format_choices_are_the_registered_formats() -> None:
    """Every ``--format`` that picks a dataset format (not ``data import``'s annotation tools) offers the
    registered ones (written out so ``weakseg --help`` needs no torch)."""
    choices = {k: v for k, v in _format_choices(build_parser()).items() if k != "weakseg data import"}
    assert len(choices) == 3 and all(sorted(v) == DATASETS.names() for v in choices.values()), choices


@pytest.mark.parametrize(
    "command, expected",
    [
        ("models", ["backbones (model.backbone):", "efficientnet_lite0", "heads (model.head):", "upernet"]),
        ("datasets", ["dataset formats (data.format):", "folder", "voc", "coco"]),
        ("methods", ["pce ", "needs: scribble", "sfc ", "needs: tags"]),
    ],
)
def test_listing_commands(command: str, expected: list[str], capsys) -> None:
    assert main([command]) == 0
    out = capsys.readouterr().out
    assert all(text in out for text in expected), out
