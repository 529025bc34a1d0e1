"""Model sources: timm models, pretrained weights with a replaced head, torchvision weight names from
the local cache, and freezing the backbone while a new head trains."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from compressor.core.config import ModelSource
from compressor.engine import run_recipe
from compressor.errors import CheckpointError, ModelSourceError
from compressor.recipe import validate_document
from compressor.train.models import (
    build_from_meta,
    build_model,
    classifier_name,
    load_model_artifact,
    load_source_weights,
    model_meta,
    torchvision_weights_file,
)
from tests.conftest import needs_fmnist

timm = pytest.importorskip("timm")


def test_timm_source_builds_for_the_data() -> None:
    model = build_model(ModelSource(timm="test_efficientnet"), 10, 1).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert type(model).__module__.startswith("timm.")
    assert classifier_name(model) == "classifier"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"pretrained": True}, "nothing is downloaded; give the pretrained weights as a file with model.checkpoint"),
    ({"num_classes": 5}, r"model.kwargs.num_classes: set by compressor \(model.num_classes"),
])
def test_timm_refuses_downloads_and_managed_kwargs(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ModelSourceError, match=match):
        build_model(ModelSource(timm="test_resnet", kwargs=kwargs), 10, 3)


def test_timm_unknown_name_did_you_mean() -> None:
    with pytest.raises(ModelSourceError, match=r'unknown timm model "efficientnet_b00" \(did you mean "efficientnet_b0'):
        build_model(ModelSource(timm="efficientnet_b00"), 10, 3)


def _recipe(model: dict[str, Any], **data: Any) -> dict[str, Any]:
    return {"name": "t", "data": {"source": "fashion-mnist", **data}, "model": model,
            "stages": [{"name": "e", "type": "evaluate"}]}


def test_timm_pretrained_config_is_the_default_preprocess() -> None:
    recipe = validate_document(_recipe({"timm": "efficientnet_b0"}))
    pre = recipe.data.preprocess
    assert (pre.resize, pre.crop, pre.mean, pre.std) == (256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    given = validate_document(_recipe({"timm": "efficientnet_b0"}, preprocess={"channels": 1, "mean": [0.5], "std": [0.5]}))
    assert given.data.preprocess.crop is None and given.data.preprocess.mean == (0.5,)


def test_source_fields_checked_together() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="give exactly one of 'arch'.*got arch, timm"):
        ModelSource(arch="resnet18", timm="resnet18")
    with pytest.raises(ValidationError, match="head: replace needs pretrained weights"):
        ModelSource(arch="resnet18", head="replace")
    with pytest.raises(ValidationError, match="weights names torchvision weights and needs 'arch'"):
        ModelSource(timm="resnet18", weights="IMAGENET1K_V1")


# --- head: replace -------------------------------------------------------------------------------

@pytest.mark.parametrize("source", [
    ModelSource(entry_point="tests.tinynet:tiny_cnn"), ModelSource(timm="test_resnet"), ModelSource(arch="mobilenet_v3_small"),
], ids=lambda s: s.label())
def test_head_replace_keeps_the_backbone_of_another_class_count(source: ModelSource, tmp_path: Path) -> None:
    torch.manual_seed(1)
    pretrained = build_model(source, 1000 if source.arch else 7, 1)
    ckpt = tmp_path / "pretrained.pt"
    torch.save(pretrained.state_dict(), ckpt)
    with pytest.raises(CheckpointError, match=r"classes .* set head: replace to fine-tune its backbone"):
        load_source_weights(build_model(source, 10, 1), source.model_copy(update={"checkpoint": ckpt}), 10)

    model = build_model(source, 10, 1)
    record = load_source_weights(model, source.model_copy(update={"checkpoint": ckpt, "head": "replace"}), 10)
    assert record is not None and record["head"] == "replaced" and record["classes"] == 10
    assert record["checkpoint_classes"] == (1000 if source.arch else 7)
    head = record["classifier"]
    assert record["replaced_keys"] == [f"{head}.bias", f"{head}.weight"]
    from compressor.core.artifacts import sha256_file

    assert record["sha256"] == sha256_file(ckpt) and record["file"] == str(ckpt)
    theirs = pretrained.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(head + "."):
            assert value.shape[0] == 10
        else:
            assert torch.equal(value, theirs[key]), key
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_rgb_checkpoint_adapted_to_greyscale(tmp_path: Path) -> None:
    source = ModelSource(entry_point="tests.tinynet:tiny_cnn")
    rgb = build_model(source, 10, 3)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    grey = build_model(source, 10, 1)
    record = load_source_weights(grey, source.model_copy(update={"checkpoint": tmp_path / "rgb.pt"}), 10)
    assert record is not None and record["adapted"] == ["0.weight"]
    assert torch.allclose(grey[0].weight, rgb[0].weight.sum(dim=1, keepdim=True))


# --- torchvision weight names, from the local torch hub cache only ---------------------------------

def test_torchvision_weights_from_the_local_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = ModelSource(arch="shufflenet_v2_x0_5", weights="IMAGENET1K_V1", head="replace")
    with pytest.raises(CheckpointError, match=(
            r"model.weights IMAGENET1K_V1: shufflenetv2_x0.5-\w+\.pth is not in the local torch hub cache "
            r".*torch/hub/checkpoints and nothing is downloaded; put the file there \(from https://")):
        torchvision_weights_file("shufflenet_v2_x0_5", "IMAGENET1K_V1")
    with pytest.raises(CheckpointError, match=r'has no weights "IMAGENET1K_V9" \(did you mean "IMAGENET1K_V1"\?\)'):
        torchvision_weights_file("shufflenet_v2_x0_5", "IMAGENET1K_V9")
    # plant a stand-in for the real file: a randomly initialised model's state dict under the cached name
    import torchvision

    url = torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1.url
    planted = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    planted.parent.mkdir(parents=True)
    torch.manual_seed(3)
    imagenet = torchvision.models.shufflenet_v2_x0_5(num_classes=1000)
    torch.save(imagenet.state_dict(), planted)
    assert torchvision_weights_file("shufflenet_v2_x0_5", "IMAGENET1K_V1") == (planted, url)
    model = build_model(source, 10, 3)
    record = load_source_weights(model, source, 10)
    assert record is not None and record["origin"] == "torchvision shufflenet_v2_x0_5 IMAGENET1K_V1"
    assert record["file"] == str(planted) and record["url"] == url and record["checkpoint_classes"] == 1000
    assert torch.equal(model.conv1[0].weight, imagenet.conv1[0].weight) and model.fc.out_features == 10
    # the saved form rebuilds without the weight name (what rebuilds is the architecture only)
    meta = json.loads(json.dumps(model_meta(source, 10, 3)))
    assert "weights" not in meta["spec"] and "head" not in meta["spec"]
    assert type(build_from_meta(meta)) is type(model)


# --- in a recipe: the manifest says where the weights came from; the backbone can stay frozen -------------

@needs_fmnist
def test_recipe_fine_tunes_a_new_head_on_a_frozen_backbone(tiny_recipe: dict[str, Any], tmp_path: Path) -> None:
    source = ModelSource(entry_point="tests.tinynet:tiny_cnn")
    torch.manual_seed(5)
    pretrained = build_model(source, 4, 1)
    torch.save(pretrained.state_dict(), tmp_path / "four_classes.pt")
    doc = copy.deepcopy(tiny_recipe)
    doc["model"] = {"entry_point": "tests.tinynet:tiny_cnn", "checkpoint": str(tmp_path / "four_classes.pt"),
                    "head": "replace"}
    doc["stages"] = [{"name": "tuned", "type": "train", "epochs": 1, "lr": 0.05, "freeze_backbone_epochs": 1}]
    result = run_recipe(validate_document(doc), log=lambda _m: None, show_progress=False)
    manifest = json.loads(result.manifest_path.read_text())
    src = next(s for s in manifest["stages"] if s["name"] == "model")
    weights = src["metrics"]["weights"]
    assert weights["head"] == "replaced" and weights["replaced_keys"] == ["9.bias", "9.weight"]
    assert weights["checkpoint_classes"] == 4 and weights["classes"] == 10 and len(weights["sha256"]) == 64
    assert src["artifact"]["meta"]["pretrained"]["sha256"] == weights["sha256"]
    tuned = next(s for s in manifest["stages"] if s["name"] == "tuned")
    folder = result.output_dir / tuned["files"][0]["path"]
    model = load_model_artifact(tuned["artifact"]["meta"], folder)
    theirs = pretrained.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("9."):
            assert value.shape[0] == 10
        elif "running" not in key and "num_batches" not in key:
            assert torch.equal(value, theirs[key]), f"{key} changed while the backbone was frozen"


def test_pretrained_student_of_another_class_count(tmp_path: Path) -> None:
    from compressor.train.students import build_student

    source = ModelSource(arch="mobilenet_v3_small", kwargs={"width_mult": 0.5})
    torch.manual_seed(2)
    imagenet = build_model(source, 1000, 3)
    torch.save(imagenet.state_dict(), tmp_path / "student.pt")
    student_source = source.model_copy(update={"checkpoint": tmp_path / "student.pt", "head": "replace"})
    student, meta = build_student(student_source, 10, 3, stem_stride=1, seed=0)
    assert meta["pretrained"]["head"] == "replaced" and meta["pretrained"]["checkpoint_classes"] == 1000
    assert torch.equal(student.features[1].block[0][0].weight, imagenet.features[1].block[0][0].weight)
    # the stem's stride change is in the saved form; the weights are not part of the rebuild spec
    rebuilt = build_from_meta(json.loads(json.dumps(meta)))
    rebuilt.load_state_dict(student.state_dict())
    assert rebuilt.features[0][0].stride == (1, 1)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), student.eval()(x))
