"""Structural pruning: every listed architecture prunes, reloads without pickle and exports to ONNX."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from compressor.core.config import ModelSource
from compressor.engine import run_recipe
from compressor.errors import ModelSourceError, PruningError
from compressor.export.onnx import export_to_onnx
from compressor.metrics.classification import count_macs
from compressor.recipe import validate_document
from compressor.train.models import (
    build_from_meta,
    load_model_artifact,
    model_meta,
    structure_of,
    write_weights,
)
from compressor.train.pruning import PruneOptions, prune_model
from tests.conftest import needs_fmnist

TINY = ModelSource(entry_point="tests.tinynet:tiny_cnn", kwargs={"width": 16})
SIZE = 32

# Default suite: one of each family that stresses a different graph feature (plain residual,
# inverted residual + depthwise, channel shuffle + split/concat, SE + hardswish, user entry point).
# ShuffleNetV2 x0.5 has its own test below, with a MACs target.
FAST = [TINY, ModelSource(arch="mobilenet_v2"), ModelSource(arch="mobilenet_v3_small"),
        ModelSource(arch="efficientnet_b0")]
SLOW = [ModelSource(arch=a) for a in ("resnet50", "vgg11_bn", "mobilenet_v3_large", "shufflenet_v2_x1_0",
                                      "densenet121", "efficientnet_b0", "alexnet", "googlenet", "inception_v3",
                                      "resnext50_32x4d", "wide_resnet50_2")]
# Smallest inputs some architectures accept (AlexNet's stride-4 stem and three pools need 63 px,
# Inception v3's stem and reductions 75 px); GoogLeNet and Inception v3 are built without aux heads.
INPUT_SIZE = {"alexnet": 64, "inception_v3": 75}
# A 6x6/7x7 adaptive pool after a 1x1 feature map exports only through the dynamo exporter.
DYNAMO_ONLY = {"vgg11_bn", "alexnet"}


def _label(source: ModelSource) -> str:
    return source.arch or str(source.entry_point)


def _prune_reload_export(source: ModelSource, tmp_path: Path, opts: PruneOptions,
                         exporter: str = "torchscript", size: int = SIZE) -> dict[str, Any]:
    torch.manual_seed(0)
    meta = model_meta(source, 10, 3)
    model = build_from_meta(meta).eval()
    example = torch.randn(2, 3, size, size)
    report = prune_model(model, example[:1], opts)
    assert report["macs_after"] < report["macs_before"]
    assert report["macs_after"] == count_macs(model, (3, size, size))
    assert report["params_after"] < report["params_before"]
    assert report["channels"], "no layer lost channels"
    with torch.no_grad():
        expected = model(example)
    assert expected.shape == (2, 10)

    # Reload from JSON metadata and a weights-only state dict: no pickled class involved.
    pruned_meta = json.loads(json.dumps({**meta, "structure": structure_of(model, build_from_meta(meta))}))
    write_weights(model, tmp_path / "pruned.pt")
    rebuilt = load_model_artifact(pruned_meta, tmp_path / "pruned.pt")
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(example), expected, rtol=1e-4, atol=1e-4)

    import onnxruntime as ort

    path = tmp_path / "pruned.onnx"
    export_to_onnx(rebuilt, example[:1], path, {}, exporter=exporter, opset=17 if exporter == "torchscript" else 18)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": example.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-3, atol=1e-3)
    return report


@pytest.mark.parametrize("source", FAST, ids=_label)
def test_prune_reload_export_contract(source: ModelSource, tmp_path: Path) -> None:
    _prune_reload_export(source, tmp_path, PruneOptions(channel_ratio=0.3))


@pytest.mark.slow
@pytest.mark.parametrize("source", SLOW, ids=_label)
def test_prune_reload_export_contract_slow(source: ModelSource, tmp_path: Path) -> None:
    exporter = "dynamo" if source.arch in DYNAMO_ONLY else "torchscript"
    size = INPUT_SIZE.get(str(source.arch), SIZE)
    report = _prune_reload_export(source, tmp_path, PruneOptions(macs_reduction=0.5), exporter, size)
    assert report["macs_after"] <= 0.5 * report["macs_before"]


def test_shufflenet_keeps_shuffled_widths_and_prunes_branches(tmp_path: Path) -> None:
    report = _prune_reload_export(ModelSource(arch="shufflenet_v2_x0_5"), tmp_path,
                                  PruneOptions(macs_reduction=0.4))
    assert report["macs_after"] <= 0.6 * report["macs_before"]
    frozen = report["frozen"]
    # Branch outputs feed the channel shuffle: kept. Branch insides: pruned.
    assert frozen["stage2.1.branch2.5"] == "coupled through a channel shuffle/reshape"
    assert "stage2.1.branch2.5" not in report["channels"]
    assert any(name.endswith("branch2.0") for name in report["channels"])


def test_resnet18_macs_target_is_met_closely(tmp_path: Path) -> None:
    report = _prune_reload_export(ModelSource(arch="resnet18"), tmp_path,
                                  PruneOptions(macs_reduction=0.5, allocation="uniform"))
    reduction = 1 - report["macs_after"] / report["macs_before"]
    assert 0.5 <= reduction < 0.6
    widths = [kept for _, kept in report["channels"].values()]
    assert all(w % 8 == 0 for w in widths), widths


def test_unmeetable_target_says_what_is_achievable() -> None:
    model = build_from_meta(model_meta(TINY, 10, 3))
    with pytest.raises(PruningError, match=r"macs_reduction 0.95 cannot be met: .* achieves \d+\.\d% fewer MACs"):
        prune_model(model, torch.randn(1, 3, SIZE, SIZE), PruneOptions(macs_reduction=0.95))


def test_everything_ignored() -> None:
    model = build_from_meta(model_meta(TINY, 10, 3))
    with pytest.raises(PruningError, match=r"nothing to prune: every prunable layer is ignored .* achievable MACs reduction: 0%"):
        prune_model(model, torch.randn(1, 3, SIZE, SIZE), PruneOptions(channel_ratio=0.5, ignore_types=["Conv2d"]))


def test_unknown_ignore_names() -> None:
    model = build_from_meta(model_meta(TINY, 10, 3))
    with pytest.raises(PruningError, match=r"ignore_layers: the model has no module '44' \(did you mean \"4\"\?\)"):
        prune_model(model, torch.randn(1, 3, SIZE, SIZE), PruneOptions(channel_ratio=0.5, ignore_layers=["44"]))
    with pytest.raises(PruningError, match=r"ignore_types: the model has no module of type 'Conv2D' \(did you mean \"Conv2d\"\?\)"):
        prune_model(model, torch.randn(1, 3, SIZE, SIZE), PruneOptions(channel_ratio=0.5, ignore_types=["Conv2D"]))


CUSTOM = ModelSource(entry_point="tests.tinynet:custom_layers_net")


def test_custom_user_layers_survive_prune_save_rebuild_export(tmp_path: Path) -> None:
    """A Conv2d subclass with extra padding and a gain parameter, a BatchNorm2d subclass with a fused activation."""
    from tests.tinynet import BatchNormAct, PaddedConv2d

    report = _prune_reload_export(CUSTOM, tmp_path, PruneOptions(channel_ratio=0.5, round_to=None))
    assert report["channels"], "no layer lost channels"
    meta = model_meta(CUSTOM, 10, 3)
    model = build_from_meta(meta)
    prune_model(model, torch.randn(1, 3, SIZE, SIZE), PruneOptions(channel_ratio=0.5, round_to=None))
    structure = json.loads(json.dumps(structure_of(model, build_from_meta(meta))))
    rebuilt = build_from_meta({**meta, "structure": structure})
    # every module keeps its class, with the pruned shapes and attributes in place
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in model.modules()]
    assert isinstance(rebuilt[2], PaddedConv2d) and isinstance(rebuilt[3], BatchNormAct)
    assert rebuilt[2].groups == rebuilt[2].in_channels == rebuilt[2].out_channels == model[2].out_channels < 16
    assert rebuilt[0].gain.shape == (model[0].out_channels, 1, 1) and rebuilt[0].extra_pad == 1
    assert rebuilt[3].num_features == model[3].num_features
    assert structure["2"]["attrs"]["groups"] == model[2].groups
    assert structure["3"]["buffers"]["running_mean"] == [model[3].num_features]


def test_module_that_breaks_after_pruning_named_with_ignore_option() -> None:
    from tests.tinynet import hard_coded_net

    with pytest.raises(PruningError, match=r"cannot prune layer '3' \(HardCodedScale\): .* ignore_layers: \['3'\]"):
        prune_model(hard_coded_net(), torch.randn(1, 3, SIZE, SIZE), PruneOptions(channel_ratio=0.5))
    model = hard_coded_net()
    report = prune_model(model, torch.randn(1, 3, SIZE, SIZE), PruneOptions(channel_ratio=0.5, ignore_layers=["3"]))
    assert model[3].scale.shape == (16,) and model[0].out_channels == 16  # kept whole
    assert report["frozen"]["0"] == "feeds an ignored layer"
    assert model[4].out_channels < 32


def test_split_failure_names_the_block_that_splits_not_the_conv_inside() -> None:
    """The Conv2d that fails gets channels from its caller's fixed split: the block to leave whole is the caller."""
    from tests.tinynet import split_paths_net

    with pytest.raises(PruningError, match=r"cannot prune layer '2\.paths\.0\.0' \(Conv2d\) inside SplitPaths '2': "
                       r".* ignore_layers: \['2'\] \(or ignore_types: \[SplitPaths\]\)"):
        prune_model(split_paths_net(), torch.randn(1, 3, SIZE, SIZE), PruneOptions(channel_ratio=0.5, round_to=None))
    model = split_paths_net()
    prune_model(model, torch.randn(1, 3, SIZE, SIZE), PruneOptions(channel_ratio=0.5, round_to=None, ignore_layers=["2"]))
    assert model[0].out_channels == 16 and model[3].out_channels < 32  # the split's input kept whole


def test_a_failure_inside_torch_pruning_is_a_pruning_error_naming_the_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-pruning's importance estimate indexing past a layer's channels (timm dpn48b's dual paths) is exit 2
    with the layer and the block to leave whole, not torch-pruning's traceback."""
    import compressor.train.pruning as pruning
    from tests.tinynet import custom_layers_net

    real = pruning._importance

    def failing(tp: Any, kind: Any) -> Any:
        importance = real(tp, kind)

        def estimate(group: Any) -> Any:
            if len(group) > 3:  # the group through the depthwise layer
                msg = "index 512 is out of bounds for dimension 0 with size 64"
                raise IndexError(msg)
            return importance(group)
        return estimate

    monkeypatch.setattr(pruning, "_importance", failing)
    with pytest.raises(PruningError, match=r"torch-pruning failed on the channel group of layer '\d' \(IndexError: "
                       r"index 512 is out of bounds .*\): .* prune\.ignore_layers: \['\d'\] \(or prune\.ignore_types: "
                       r"\[PaddedConv2d\]\)"):
        prune_model(custom_layers_net(), torch.randn(1, 3, SIZE, SIZE), PruneOptions(channel_ratio=0.5, round_to=None))


def test_structure_refuses_a_module_the_source_lacks() -> None:
    meta = model_meta(TINY, 10, 3)
    model = build_from_meta(meta)
    model.add_module("extra", nn.Identity())
    with pytest.raises(ModelSourceError, match=r"module 'extra' \(Identity\) cannot be saved: the architecture rebuilt"):
        structure_of(model, build_from_meta(meta))


def test_options_take_one_target() -> None:
    assert PruneOptions().macs_reduction == 0.5
    assert PruneOptions(channel_ratio=0.3).macs_reduction is None
    with pytest.raises(ValueError, match="give one target, not both"):
        PruneOptions(macs_reduction=0.5, channel_ratio=0.5)


def test_group_norm_sparsity_needs_magnitude_importance() -> None:
    from compressor.stages.prune import PruneConfig

    with pytest.raises(ValueError, match="sparsity.method group_norm .* needs importance l1 or l2 \\(got taylor\\)"):
        PruneConfig(name="p", macs_reduction=0.5, importance="taylor", sparsity={"method": "group_norm"})


@needs_fmnist
def test_prune_stage_in_a_recipe(tiny_recipe: dict[str, Any]) -> None:
    doc = copy.deepcopy(tiny_recipe)
    doc["model"]["kwargs"] = {"width": 16}
    doc["stages"] = [
        {"name": "teacher", "type": "train", "epochs": 1, "lr": 0.05},
        {"name": "pruned", "type": "prune", "importance": "taylor", "macs_reduction": 0.3, "steps": 2,
         "finetune": {"epochs": 1, "lr": 0.01}, "distill": {"alpha": 0.5},
         "sparsity": {"method": "bn_l1", "epochs": 1}},
        {"name": "onnx", "type": "export_onnx", "exporter": "torchscript", "opset": 17, "verify_images": 32},
    ]
    result = run_recipe(validate_document(doc), log=lambda _m: None, show_progress=False)
    manifest = json.loads(result.manifest_path.read_text())
    stage = next(s for s in manifest["stages"] if s["name"] == "pruned")
    m = stage["metrics"]
    assert m["macs_after"] <= 0.7 * m["macs_before"] and m["params_after"] < m["params_before"]
    for key in ("top1_before", "top1_after_sparsity", "top1_pruned", "top1_finetuned"):
        assert 0 <= m[key] <= 100
    assert [s["step"] for s in m["steps"]] == [1, 2]
    assert m["channels_kept"] and m["ignored"] == {"9": "classifier"}
    meta = stage["artifact"]["meta"]
    for name, (_, kept) in m["channels_kept"].items():
        assert meta["structure"][name]["attrs"]["out_channels"] == kept
    onnx = next(s for s in manifest["stages"] if s["name"] == "onnx")
    assert onnx["metrics"]["top1_agreement"] == 100.0


@pytest.mark.parametrize("method", ["group_norm", "bn_l1"])
def test_sparsity_regularizer_terms(method: str) -> None:
    from compressor.train.pruning import ChannelPruner

    model = build_from_meta(model_meta(TINY, 10, 3))
    pruner = ChannelPruner(model, torch.randn(1, 3, SIZE, SIZE), PruneOptions(channel_ratio=0.5, importance="l2"),
                           sparsity=method, reg=1e-3)  # type: ignore[arg-type]
    terms = pruner.regularization_terms()
    assert terms and all(torch.isfinite(g).all() for _, g in terms)
    bn = model[1].weight
    assert any(p is bn for p, _ in terms)  # both regularizers push BatchNorm scales towards zero
    assert all(p.grad is None for p in model.parameters())  # gradients left as they were
