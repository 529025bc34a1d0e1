"""Training edges users hit: a last batch of one image (BatchNorm), and a loss that becomes NaN.

A data set of 13 images with ``batch_size: 4`` leaves a last batch of one; BatchNorm cannot train on it,
so that batch is dropped in training (evaluation still sees every image). A NaN loss is exit 2 naming the
likely causes in order (weights, data, learning rate) with the values seen, never an internal error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

from compressor.core.data import TrainBatches
from tests.test_bad_inputs import _cli, _doc, _manifest, run_refused


@pytest.mark.parametrize(("count", "batch", "sizes"), [
    (13, 4, [4, 4, 4]), (12, 4, [4, 4, 4]), (14, 4, [4, 4, 4, 2]), (1, 4, [1]), (3, 1, [1, 1, 1]), (5, 2, [2, 2]),
])
def test_train_batches_drop_only_a_last_batch_of_one(count: int, batch: int, sizes: list[int]) -> None:
    batches = TrainBatches(SequentialSampler(range(count)), batch)
    assert [len(b) for b in batches] == sizes
    assert len(batches) == len(sizes)


def _thirteen_images(tmp_path: Path, **model: Any) -> dict[str, Any]:
    doc = _doc(tmp_path, [{"name": "teacher", "type": "train", "epochs": 2, "lr": 0.05}], **model)
    Image.new("RGB", (12, 12), (90, 90, 90)).save(tmp_path / "data/train/class_1/extra.png")  # 12 + 1 images
    doc["data"]["batch_size"] = 4
    return doc


def test_last_batch_of_one_image_does_not_crash_batchnorm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import write_recipe

    doc = _thirteen_images(tmp_path, entry_point="tests.tinynet:tiny_cnn_bn_head")
    doc["stages"].append({"name": "evaluate", "type": "evaluate"})
    code, _out, err = _cli(capsys, "run", str(write_recipe(tmp_path / "r.yaml", doc)), "--quiet")
    assert code == 0, err
    manifest = _manifest(tmp_path)
    assert manifest["data"]["train_images"] == 13
    evaluate = next(s for s in manifest["stages"] if s["name"] == "evaluate")
    # evaluation stays complete: every validation image is scored
    assert evaluate["metrics"]["images"] == manifest["data"]["val_images"] == 12


def test_a_batch_of_one_image_really_breaks_batchnorm_in_training() -> None:
    """The reason for dropping it (so that the test above can fail)."""
    from tests.tinynet import tiny_cnn_bn_head

    model = tiny_cnn_bn_head(num_classes=3).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        model(torch.zeros(1, 1, 12, 12))


def test_model_source_with_a_nan_weight_is_refused_before_training(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    doc = _thirteen_images(tmp_path, entry_point="tests.tinynet:tiny_cnn_nan")
    run_refused(capsys, tmp_path, doc, r"model source (entry_point )?tests\.tinynet:tiny_cnn_nan builds weights holding NaN/Inf: "
                                       r"tensor '0\.weight' holds 1 NaN and 0 Inf of 72 values")


def test_divergence_report_puts_nan_weights_first() -> None:
    from compressor.train.fit import TrainOptions, divergence_report
    from tests.tinynet import tiny_cnn_nan

    report = divergence_report(tiny_cnn_nan(num_classes=3), torch.zeros(4, 1, 12, 12), torch.tensor([0, 1, 2, 0]),
                               0.05, TrainOptions(), 3, started_finite=False)
    assert report.startswith("likely causes, in order: 1) weights: '0.weight' holds 1 NaN/Inf of 72 values already "
                             "before training started: the checkpoint or the input stage brought them in; "
                             "2) data: this batch is finite (largest |x| 0, labels 0..2 of 3 classes); "
                             "3) learning rate: 0.05 at this step"), report


def test_nan_loss_from_the_data_names_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _thirteen_images(tmp_path)
    doc["data"]["preprocess"]["std"] = [1e-40]  # positive, so valid, but every pixel overflows to Inf
    run_refused(capsys, tmp_path, doc, r"loss became nan", r"1\) weights: all finite",
                r"2\) data: this batch holds \d+ NaN/Inf input values", r"3\) learning rate")


def test_nan_loss_from_a_huge_learning_rate_names_the_update(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _thirteen_images(tmp_path, entry_point="tests.tinynet:tiny_cnn_plain")
    doc["stages"][0].update(lr=10, momentum=0.9, epochs=20, weight_decay=0)
    run_refused(capsys, tmp_path, doc, r"loss became (nan|inf)", r"1\) weights: .*an update blew up \(see 3\)",
                r"2\) data: this batch is finite",
                r"3\) learning rate: .* \(lr 10, warmup_epochs 0, grad_clip None\); try lr 1 or grad_clip: 1\.0")


def test_train_loader_draws_the_same_batches_as_a_plain_shuffled_loader() -> None:
    """Dropping only a last batch of one changes nothing else: same order, and the global RNG untouched."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, TensorDataset

    from compressor.core.data import DataModule

    data = TensorDataset(torch.arange(20))
    module = SimpleNamespace(seed=3, train=data, config=SimpleNamespace(batch_size=6, workers=0))
    torch.manual_seed(0)
    plain = [b[0].tolist() for b in DataLoader(data, batch_size=6, shuffle=True,
                                               generator=torch.Generator().manual_seed(3 * 1000 + 1))]
    after_plain = torch.rand(1)
    torch.manual_seed(0)
    ours = [b[0].tolist() for b in DataModule.train_loader(module, epoch=1)]  # type: ignore[arg-type]
    assert ours == plain and torch.equal(torch.rand(1), after_plain)


def test_slow_batchnorm_statistics_are_re_estimated_before_validation(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A TF-style BatchNorm (momentum 0.01) lags a short fine-tune by far (the ImageNet EfficientNet-Lite0
    fine-tuned at 112 px: 66.4% top-1 with its running statistics, 77.2% re-estimated, after one epoch).
    auto re-estimates them; a torch-default momentum is left alone; 0 turns it off."""
    import torch

    from compressor.train.models import load_model_artifact
    from tests.conftest import write_recipe

    def run(entry: str, **train: Any) -> tuple[dict[str, Any], torch.nn.Module]:
        base = tmp_path / f"{entry.split(':')[1]}-{len(train)}"
        base.mkdir()
        doc = _doc(tmp_path, [{"name": "teacher", "type": "train", "epochs": 1, "lr": 0.05, **train}],
                   entry_point=entry)
        doc["output"] = str(base / "run")
        code, _out, err = _cli(capsys, "run", str(write_recipe(base / "r.yaml", doc)), "--quiet")
        assert code == 0, err
        stage = next(s for s in _manifest(base)["stages"] if s["name"] == "teacher")
        return stage["metrics"], load_model_artifact(stage["artifact"]["meta"], base / "run" / stage["files"][0]["path"])

    metrics, model = run("tests.tinynet:tiny_cnn_tf_bn")
    assert metrics["bn_recalibration_batches"] == 20
    bn = model[1]
    assert bn.momentum == 0.01 and int(bn.num_batches_tracked) <= 2  # re-estimated: a count of its batches
    metrics_off, model_off = run("tests.tinynet:tiny_cnn_tf_bn", bn_recalibration=0)
    assert metrics_off["bn_recalibration_batches"] == 0
    assert int(model_off[1].num_batches_tracked) >= 1
    assert not torch.allclose(model_off[1].running_mean, bn.running_mean)
    metrics_default, _ = run("tests.tinynet:tiny_cnn_bn_head")  # momentum 0.1: left alone
    assert metrics_default["bn_recalibration_batches"] == 0


def test_recalibrate_bn_gives_the_exact_statistics_of_its_batches() -> None:
    from types import SimpleNamespace

    import torch

    from compressor.train.fit import TrainOptions, recalibrate_bn, recalibration_batches
    from tests.tinynet import tiny_cnn_tf_bn

    torch.manual_seed(0)
    model = tiny_cnn_tf_bn(3)
    batches = [(torch.randn(4, 1, 12, 12) * 3 + 1, torch.zeros(4, dtype=torch.long)) for _ in range(5)]
    ctx = SimpleNamespace(data=SimpleNamespace(train_loader=lambda size, epoch: iter(batches)),
                          device=torch.device("cpu"))
    assert recalibration_batches(model, TrainOptions()) == 20
    assert recalibration_batches(model, TrainOptions(bn_recalibration=3)) == 3
    model.eval()
    recalibrate_bn(model, ctx, 4, 0, 3)  # type: ignore[arg-type]
    with torch.no_grad():
        features = torch.cat([model[0](x) for x, _ in batches[:3]])
    torch.testing.assert_close(model[1].running_mean, features.mean((0, 2, 3)))
    assert not model.training  # its mode kept
