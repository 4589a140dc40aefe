"""The recipe overlays (``reclf_pretrain/configs/recipes/*.yaml``): every key they set is a key of
train.yaml (an overlay cannot smuggle in a typo), and each one runs, as its header says, with a
real pretrained text tower, then also with ``--objective reclf`` (the fair counterpart)."""

from __future__ import annotations

import glob
import json
import os

import pytest
import yaml

from conftest import PRETRAIN_CONFIGS

RECIPES = sorted(glob.glob(os.path.join(PRETRAIN_CONFIGS, "recipes", "*.yaml")))


def _yaml(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def test_there_are_recipes_for_the_anchor_papers():
    names = {os.path.basename(p)[:-5] for p in RECIPES}
    assert {"gloria", "convirt", "reclf"} <= names, names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: os.path.basename(p))
def test_recipe_sets_known_keys_only(recipe):
    base = _yaml(os.path.join(PRETRAIN_CONFIGS, "train.yaml"))
    unknown = sorted(set(_yaml(recipe)) - set(base))
    assert not unknown, f"{os.path.basename(recipe)} sets keys train.yaml does not have: {unknown}"
    for key, value in _yaml(recipe).items():  # YAML 1.1: 1e-5 would be a string
        assert not (isinstance(value, str) and value.replace(".", "").replace("e-", "").isdigit()), (key, value)


def test_reclf_recipe_is_gloria_with_the_objective_changed():
    """The fair comparison: recipes/reclf.yaml may differ from recipes/gloria.yaml in the objective only."""
    gloria, reclf = (_yaml(os.path.join(PRETRAIN_CONFIGS, "recipes", f"{n}.yaml")) for n in ("gloria", "reclf"))
    assert (gloria.pop("objective"), reclf.pop("objective")) == ("gloria", "reclf")
    assert gloria == reclf


@pytest.fixture(scope="module")
def eight_pairs(tiny_datalist, tmp_path_factory) -> str:
    with open(tiny_datalist, encoding="utf-8") as f:
        content = json.load(f)
    small = {"training": content["training"][:8], "validation": content["validation"][:4], "test": []}
    path = str(tmp_path_factory.mktemp("recipes") / "datalist.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(small, f)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: os.path.basename(p))
def test_recipe_runs_with_a_pretrained_text_tower(recipe, eight_pairs, minilm, tmp_path):
    """One epoch of the recipe at a tiny size (64 px, micro-batches of 4) with all-MiniLM-L6-v2."""
    from conftest import run_bundle

    out = str(tmp_path)
    run_bundle(["train.yaml", recipe], text_encoder=minilm, dataset_dir=os.path.dirname(eight_pairs),
               datalist=eight_pairs, output_dir=out, image_size=64, batch_size=4, epochs=1, device="cpu",
               amp=False, num_workers=0)
    with open(os.path.join(out, "models", "model.json"), encoding="utf-8") as f:
        meta = json.load(f)
    recipe_values = _yaml(recipe)
    assert meta["image_encoder"] == recipe_values["image_encoder"]
    assert meta["model"]["objective"] == recipe_values["objective"]
    assert meta["model"]["embed_dim"] == recipe_values["embed_dim"]
    assert meta["model"]["learn_scales"] is False
    with open(os.path.join(out, "logs", "loss_history.json"), encoding="utf-8") as f:
        assert json.load(f)["epochs"][0]["loss"] > 0
