"""Model sources and checkpoint errors: each names the file and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compressor.core.config import ModelSource
from compressor.errors import CheckpointError, ModelSourceError
from compressor.train.models import (
    build_from_meta,
    build_model,
    load_state,
    model_meta,
    read_state_dict,
    structure_of,
)
from tests.tinynet import tiny_cnn

TINY = ModelSource(entry_point="tests.tinynet:tiny_cnn")


def test_torchvision_adapted_to_greyscale() -> None:
    model = build_model(ModelSource(arch="resnet18"), num_classes=7, in_channels=1)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_unknown_arch_did_you_mean() -> None:
    with pytest.raises(ModelSourceError, match='unknown torchvision architecture "resnet81" \\(did you mean "resnet18"\\?\\)'):
        build_model(ModelSource(arch="resnet81"), 10, 3)


@pytest.mark.parametrize("entry, match", [
    ("tests.no_such_module:f", "cannot import module 'tests.no_such_module'"),
    ("tests.tinynet:missing", "has no callable 'missing'"),
    ("tests.tinynet:not_a_module", "returned str, not a torch.nn.Module"),
    ("tests.tinynet:broken_factory", "raised RuntimeError: factory failed on purpose"),
])
def test_entry_point_errors(entry: str, match: str) -> None:
    with pytest.raises(ModelSourceError, match=match):
        build_model(ModelSource(entry_point=entry), 10, 1)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint .*nope.pt does not exist"):
        read_state_dict(tmp_path / "nope.pt")


def test_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save(tiny_cnn().state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"t.pt is not a readable PyTorch checkpoint \(truncated or corrupt\?\)"):
        read_state_dict(path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint"):
        read_state_dict(path)


def test_pickled_full_model_refused(tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    torch.save(tiny_cnn(), path)
    with pytest.raises(CheckpointError, match=r"holds pickled Python objects .* refused under weights_only=True"):
        read_state_dict(path)


def test_checkpoint_of_other_architecture(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not match the architecture: key '0.weight' is missing"):
        load_state(tiny_cnn(), read_state_dict(path), str(path))


def test_checkpoint_class_count_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "five.pt"
    torch.save(tiny_cnn(num_classes=5).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"has 5 classes .* but the model is built for 10"):
        load_state(tiny_cnn(num_classes=10), read_state_dict(path), str(path))


def test_wrapped_and_ddp_prefixed_state_dict(tmp_path: Path) -> None:
    model = tiny_cnn()
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    load_state(tiny_cnn(), read_state_dict(path), str(path))


def test_structure_round_trip_without_pickled_class() -> None:
    """A model whose layer widths changed (as pruning does) rebuilds from JSON-able metadata."""
    reference = tiny_cnn()
    changed = tiny_cnn(width=4)
    structure = structure_of(changed, reference)
    assert structure["0"]["attrs"]["out_channels"] == 4 and structure["0"]["params"]["weight"] == [4, 1, 3, 3]
    rebuilt = build_from_meta(model_meta(TINY, 10, 1, structure))
    rebuilt.load_state_dict(changed.state_dict())
    x = torch.randn(2, 1, 12, 12)
    changed.eval()
    rebuilt.eval()
    assert torch.allclose(rebuilt(x), changed(x))


def test_weights_reload_into_modules_that_read_their_version(tmp_path: Path) -> None:
    """torchvision's MNASNet reads its state-dict version when loading; a saved plain dict has none."""
    from compressor.train.models import load_model_artifact, write_weights

    meta = model_meta(ModelSource(arch="mnasnet0_5"), 10, 3)
    model = build_from_meta(meta)
    write_weights(model, tmp_path / "w.pt")
    rebuilt = load_model_artifact(meta, tmp_path / "w.pt")
    assert torch.equal(rebuilt.layers[0].weight, model.layers[0].weight)
