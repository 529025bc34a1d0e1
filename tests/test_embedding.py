"""Embedding models: retrieval metrics, the P x K sampler, metric and distillation losses, the embedding
net, recipe options, and a tiny embedding recipe through every stage."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from compressor.core.config import EmbeddingConfig, EmbeddingLoss
from compressor.core.data import PKBatchSampler
from compressor.errors import RecipeError
from compressor.metrics.evaluation import Task
from compressor.metrics.retrieval import (
    average_precision,
    cosine_agreement,
    distances,
    query_gallery_split,
    ranked_matches,
    retrieval_metrics,
)
from compressor.recipe import validate_document
from compressor.release.gates import GateSet, evaluate_gates
from compressor.train.embedding import EmbeddingNet, MarginHead, embedding_net, embedding_spec
from compressor.train.losses import embedding_distill_loss, relational_loss, triplet_batch_hard
from compressor.train.models import build_from_meta
from tests.conftest import TINY_RECIPE, needs_fmnist
from tests.tinynet import tiny_cnn

# -- metrics ---------------------------------------------------------------------------------------


def test_average_precision_of_known_rankings() -> None:
    # relevant at ranks 1 and 3 of 4: AP = (1/1 + 2/3) / 2
    ap = average_precision(np.array([[True, False, True, False], [False, False, False, True],
                                     [False, False, False, False]]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    assert ap[1] == pytest.approx(1 / 4)
    assert np.isnan(ap[2])


def test_retrieval_metrics_hand_computed() -> None:
    # Two identities on a line; the query split (seeded) is checked, then the metrics by hand.
    emb = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [0.15]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1])
    q, g = query_gallery_split(labels, 0.34, seed=3)
    assert len(q) == 2 and len(g) == 4 and not set(q) & set(g)
    assert sorted(labels[q].tolist()) == [0, 1]  # one query per identity
    result = retrieval_metrics(emb, labels, "euclidean", 0.34, seed=3)
    matches = ranked_matches(distances(emb[q], emb[g], "euclidean"), labels[q], labels[g])
    expected_map = float(np.nanmean(average_precision(matches))) * 100
    assert result["map"] == pytest.approx(round(expected_map, 3))
    assert result["rank1"] == pytest.approx(100 * matches[:, 0].mean())
    assert result["queries"] == 2 and result["gallery"] == 4


def test_permuted_gallery_gives_known_map() -> None:
    # one query, gallery of 4 with distances fixed: relevant items at ranks 2 and 4 -> AP = (1/2 + 2/4) / 2
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    matches = ranked_matches(dist, np.array([7]), np.array([1, 7, 2, 7]))
    assert matches.tolist() == [[False, True, False, True]]
    assert average_precision(matches)[0] == pytest.approx(0.5)


def test_perfect_and_cosine_vs_euclidean() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 10
    labels = np.repeat(np.arange(5), 6)
    emb = centers[labels] + rng.normal(size=(30, 16)) * 0.01
    for distance in ("cosine", "euclidean"):
        r = retrieval_metrics(emb, labels, distance, 0.2, 0)  # type: ignore[arg-type]
        assert r["rank1"] == r["rank5"] == r["map"] == 100.0
    shuffled = retrieval_metrics(emb, rng.permutation(labels), "cosine", 0.2, 0)
    assert shuffled["map"] < 60


def test_single_image_identity_is_gallery_only() -> None:
    q, g = query_gallery_split(np.array([0, 0, 0, 1]), 0.5, 0)
    assert 3 in g and 3 not in q


def test_cosine_agreement() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    out = cosine_agreement(a, np.array([[1.0, 0.0], [0.0, -1.0]]))
    assert out["mean_cosine"] == pytest.approx(0.0) and out["min_cosine"] == pytest.approx(-1.0)


# -- sampler and losses -------------------------------------------------------------------------------


def test_pk_sampler_batches() -> None:
    labels = np.repeat(np.arange(6), [10, 10, 10, 10, 10, 1])
    sampler = PKBatchSampler(labels, p=4, k=3, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 51 // 12
    for batch in batches:
        ids, counts = np.unique(labels[batch], return_counts=True)
        assert len(ids) == 4 and (counts == 3).all()
    assert batches == list(PKBatchSampler(labels, 4, 3, 0))  # seeded
    assert batches != list(PKBatchSampler(labels, 4, 3, 1))


def test_triplet_batch_hard_picks_hardest_pairs() -> None:
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [1.5, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1])
    loss = triplet_batch_hard(emb, labels, margin=0.5)
    # anchor 0: farthest positive 3.0, nearest negative 1.5 -> 2.0; anchor 1: 2.0 vs 0.5 -> 2.0
    # anchor 2: 3.0 vs 1.5 -> 2.0; anchor 3 has no positive
    assert loss.item() == pytest.approx((2.0 + 2.0 + 2.0) / 3)
    loss.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert triplet_batch_hard(torch.tensor([[0.0], [5.0]]), torch.tensor([0, 1])).item() == 0.0


@pytest.mark.parametrize("kind", ["ce", "cosface", "arcface"])
def test_margin_head_gradients_and_margin(kind: str) -> None:
    torch.manual_seed(0)
    head = MarginHead(4, 3, kind, scale=10.0, margin=0.0 if kind == "ce" else 0.3)
    emb = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = head(emb, labels)
    nn.functional.cross_entropy(logits, labels).backward()
    assert emb.grad is not None and head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    plain = MarginHead(4, 3, "ce", 10.0, 0.0)
    plain.weight = head.weight
    with torch.no_grad():
        diff = plain(emb, labels) - head(emb, labels)
    target = nn.functional.one_hot(labels, 3).bool()
    assert torch.allclose(diff[~target], torch.zeros_like(diff[~target]))
    if kind == "ce":
        assert torch.allclose(diff, torch.zeros_like(diff))
    else:
        assert (diff[target] > 0).all()  # the margin lowers the true identity's logit


def test_distill_losses() -> None:
    t = torch.randn(5, 8)
    assert embedding_distill_loss(t * 3, t).item() == pytest.approx(0.0, abs=1e-6)  # cosine ignores scale
    assert embedding_distill_loss(t * 3, t, "mse").item() > 0
    s = torch.randn(5, 4, requires_grad=True)  # other size: relational still compares
    loss = relational_loss(s, t)
    loss.backward()
    assert loss.item() > 0 and s.grad is not None and s.grad.abs().sum() > 0
    assert relational_loss(t * 2, t).item() == pytest.approx(0.0, abs=1e-6)


# -- the embedding net and recipe options ------------------------------------------------------------


def test_embedding_net_drops_head_projects_normalises_and_rebuilds() -> None:
    torch.manual_seed(0)
    cfg = EmbeddingConfig(dim=5)
    model = tiny_cnn(num_classes=10, in_channels=1)
    spec = embedding_spec(cfg, model, (1, 12, 12))
    assert spec["feature_dim"] == 16
    net = embedding_net(model, spec)
    assert isinstance(net, EmbeddingNet) and not any(isinstance(m, nn.Linear) and m.out_features == 10
                                                     for m in net.modules())
    out = net.eval()(torch.randn(3, 1, 12, 12))
    assert out.shape == (3, 5) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    meta = {"spec": {"entry_point": "tests.tinynet:tiny_cnn"}, "num_classes": 10, "in_channels": 1,
            "structure": {}, "embedding": spec}
    rebuilt = build_from_meta(meta)
    rebuilt.load_state_dict(net.state_dict())


def test_embedding_net_cut_at_layer() -> None:
    cfg = EmbeddingConfig(output="layer", layer="6", normalize=False)
    model = tiny_cnn(num_classes=10, in_channels=1)
    spec = embedding_spec(cfg, model, (1, 12, 12))
    net = embedding_net(model, spec)
    assert net.eval()(torch.randn(2, 1, 12, 12)).shape == (2, 16)
    with pytest.raises(Exception, match=r"embedding.layer: the model has no module 'nope'"):
        embedding_net(tiny_cnn(), {**spec, "layer": "nope"})


def test_recipe_embedding_options() -> None:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["task"] = "embedding"
    recipe = validate_document(doc)
    assert recipe.settings.embedding == EmbeddingConfig()
    doc["embedding"] = {"output": "layer"}
    with pytest.raises(RecipeError, match=r"embedding: .*output: layer needs 'layer'"):
        validate_document(doc)
    doc["embedding"] = {"loss": {"head": "none"}}
    with pytest.raises(RecipeError, match=r"head: none with triplet: 0 trains nothing"):
        validate_document(doc)
    doc["embedding"] = {"distanse": "cosine"}
    with pytest.raises(RecipeError, match=r'embedding.distanse: unknown key \(did you mean "distance"\?\)'):
        validate_document(doc)
    doc = copy.deepcopy(TINY_RECIPE)
    doc["embedding"] = {}
    with pytest.raises(RecipeError, match=r"embedding options need task: embedding"):
        validate_document(doc)


def test_task_scores_and_agreement() -> None:
    task = Task(kind="embedding", embedding=EmbeddingConfig(metric="map"))
    assert task.primary == "map" and task.label == "mAP"
    emb = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2, 2]]
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert task.value(emb, labels) == 100.0
    assert task.agreement(emb, emb)["agreement"] == pytest.approx(100.0)
    assert EmbeddingLoss(head="arcface").resolved_margin() == 0.3


def test_gates_on_retrieval_metrics() -> None:
    rows = [{"bench": "b", "stage": s, "format": "onnx", "precision": p, "backend": "onnxruntime", "batch": 1,
             "status": "ok", "rank1": r1, "rank5": 99.0, "map": mp, "median_ms": 1.0, "p90_ms": 1.0, "size_bytes": 10}
            for s, p, r1, mp in (("teacher", "fp32", 90.0, 70.0), ("int8", "int8", 88.5, 69.0))]
    gates = GateSet.model_validate({"teacher": "teacher", "checks": [
        {"type": "max_top1_drop", "metric": "rank1", "artifacts": ["int8"], "max_drop": 1.0},
        {"type": "min_accuracy", "metric": "map", "artifacts": ["int8"], "min": 60},
        {"type": "min_accuracy", "artifacts": ["int8"], "min": 60}]})
    results = evaluate_gates(gates, rows, {})
    assert [r.status for r in results] == ["fail", "pass", "fail"]
    assert "rank1 drop <= 1 pt" in results[0].threshold
    assert "the row has no top1; it has rank1, rank5, map" in results[2].note


# -- a tiny embedding recipe through every stage ------------------------------------------------------


def _tiny_embedding_recipe(tmp_path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "tiny-embedding", "seed": 0, "threads": 1, "output": str(tmp_path / "run"), "task": "embedding",
        "embedding": {"dim": 8, "metric": "map", "loss": {"head": "cosface", "triplet": 1.0,
                                                           "sampler": {"identities": 5, "images": 4}}},
        "data": {"source": "fashion-mnist", "train_per_class": 12, "val_per_class": 6, "batch_size": 20,
                 "augment": False, "preprocess": {"channels": 1, "mean": [0.286], "std": [0.353]}},
        "model": {"entry_point": "tests.tinynet:tiny_cnn"},
        "stages": [
            {"name": "teacher", "type": "train", "epochs": 2, "lr": 0.05},
            {"name": "evaluate", "type": "evaluate"},
            {"name": "pruned", "type": "prune", "macs_reduction": 0.3, "importance": "taylor", "taylor_batches": 1,
             "finetune": {"epochs": 1, "lr": 0.01}, "distill": {"alpha": 0.5}},
            {"name": "student", "type": "distill", "teacher": "teacher", "student": {"entry_point": "tests.tinynet:tiny_cnn",
                                                                 "kwargs": {"width": 4}},
             "loss": {"type": "embedding", "relational": 1.0}, "epochs": 1, "lr": 0.05},
            {"name": "onnx", "type": "export_onnx", "verify_images": 20},
            {"name": "openvino", "type": "export_openvino", "input": "pruned", "verify_images": 20},
            {"name": "tflite", "type": "export_tflite", "input": "student", "verify_images": 20},
            {"name": "int8", "type": "quantize", "input": "onnx", "calibration_images": 16, "eval_images": 40,
             "min_agreement": 50, "max_accuracy_drop": 100},
            {"name": "bench", "type": "benchmark", "inputs": ["teacher", "pruned", "student", "onnx", "openvino",
                                                             "tflite", "int8"],
             "min_iters": 3, "warmup": 1, "time_budget_s": 0.02},
        ],
        "gates": {"teacher": "teacher", "checks": [
            {"type": "min_accuracy", "metric": "map", "artifacts": ["onnx", "int8"], "min": 1},
            {"type": "max_top1_drop", "metric": "rank1", "artifacts": ["int8"], "max_drop": 100}]},
    }
    return doc


@needs_fmnist
def test_tiny_embedding_recipe_end_to_end(tmp_path: Path) -> None:
    from compressor.engine import run_recipe
    from compressor.release.bundle import benchmark_rows
    from compressor.release.gates import GateSet as Gates
    from compressor.release.verify import verify_bundle
    from compressor.releasing import make_release

    recipe = validate_document(_tiny_embedding_recipe(tmp_path))
    result = run_recipe(recipe, log=lambda _m: None, show_progress=False)
    stages = {r.name: r for r in result.records}
    teacher = stages["teacher"].metrics
    assert "val_map" in teacher and teacher["history"][0].keys() >= {"val_map", "loss"}
    ev = stages["evaluate"].metrics
    assert ev.keys() >= {"rank1", "rank5", "map", "queries", "gallery"} and "top1" not in ev
    assert ev["map"] == teacher["val_map"]  # same split, same model
    assert stages["teacher"].artifact.meta["embedding"]["dim"] == 8
    pruned = stages["pruned"].metrics
    assert pruned["metric"] == "map" and pruned["macs_after"] < pruned["macs_before"]
    assert stages["pruned"].artifact.meta["structure"]  # rebuilt from recorded shapes, embedding head included
    for name in ("openvino", "tflite"):
        assert stages[name].metrics["mean_cosine"] > 0.999
    distill = stages["student"].metrics
    assert distill.keys() >= {"teacher_map", "student_map", "teacher_cosine"}
    onnx = stages["onnx"].metrics
    assert onnx["mean_cosine"] > 0.9999 and onnx["agreement"] >= 99.9
    int8 = stages["int8"].metrics
    assert int8.keys() >= {"fp32_map", "int8_map", "mean_cosine", "int8_retrieval"}
    rows = stages["bench"].metrics["rows"]
    assert {r["stage"] for r in rows} == {"teacher", "pruned", "student", "onnx", "openvino", "tflite", "int8"}
    for r in rows:
        assert r["status"] == "ok" and r.keys() >= {"rank1", "rank5", "map", "mean_cosine", "median_ms"}
    by = {r["stage"]: r for r in rows}
    assert by["onnx"]["map"] == pytest.approx(by["student"]["map"], abs=1e-6)
    assert by["student"]["teacher_cosine"] is not None  # both 8-d: comparable with the teacher's embeddings
    manifest = json.loads(result.manifest_path.read_text())
    report = result.report_path.read_text()
    assert "rank-1 | rank-5 | mAP" in report and "mAP at most" in report
    gate_rows = benchmark_rows(manifest["stages"])
    gates = Gates.model_validate(_tiny_embedding_recipe(tmp_path)["gates"])
    assert all(g.status == "pass" for g in evaluate_gates(gates, gate_rows, {}))
    # a release (every stage reused from the cache) re-checks mAP of what it ships
    release = make_release(recipe, "1.0.0", log=lambda _m: None, show_progress=False)
    assert release.releasable
    checks = json.loads((release.bundle / "manifest.json").read_text())["accuracy_checks"]
    assert {c["stage"] for c in checks} == {"onnx", "int8"} and all(c["metric"] == "map" for c in checks)
    report_ = verify_bundle(release.bundle, log=lambda _m: None)
    assert len(report_.accuracy) == 2 and all(" map " in line for line in report_.accuracy)
    # the exported graph outputs unit vectors named "embedding"
    import onnx as onnx_lib

    model_path = result.output_dir / next(f["path"] for s in manifest["stages"] if s["name"] == "onnx"
                                          for f in s["files"])
    graph = onnx_lib.load(str(model_path)).graph
    assert graph.output[0].name == "embedding"


def test_open_set_validation_identities(tmp_path: Path) -> None:
    from compressor.core.config import DataConfig
    from compressor.core.data import load_data
    from compressor.errors import DataError
    from tests.conftest import make_image_folder

    root = make_image_folder(tmp_path / "data", classes=3, per_class=3, size=8)
    (root / "train" / "class_2").rename(tmp_path / "moved")  # class_2 only in val: an unseen identity
    cfg = DataConfig(source="imagefolder", path=root, preprocess={"crop": 8})
    with pytest.raises(DataError, match=r"has class folder\(s\) class_2 that the training split"):
        load_data(cfg, 0)
    data = load_data(cfg, 0, open_set=True)
    assert data.classes == ["class_0", "class_1"]
    assert sorted(set(data.val_arrays()[1].tolist())) == [0, 1, 2]


def test_distill_loss_must_match_task(tmp_path: Path) -> None:
    from compressor.engine import run_recipe
    from compressor.errors import StageError

    doc = _tiny_embedding_recipe(tmp_path)
    doc.pop("gates")
    doc["stages"] = [{"name": "teacher", "type": "train", "epochs": 1},
                     {"name": "student", "type": "distill", "loss": {"type": "kd"}, "epochs": 1}]
    doc["data"]["train_per_class"] = 4
    with pytest.raises(StageError, match=r"an embedding recipe distills with loss: \{type: embedding\}"):
        run_recipe(validate_document(doc), log=lambda _m: None, show_progress=False)


def test_accuracy_control_measures_the_retrieval_metric() -> None:
    from compressor.errors import AccuracyGoalError
    from compressor.quant.accuracy_control import restore_until_within

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    clean = np.eye(8)[labels] + rng.normal(size=(40, 8)) * 0.05
    task = Task(kind="embedding", embedding=EmbeddingConfig(metric="rank1"))

    def quantize(excluded: Any) -> Any:
        noise = 3.0 / (1 + 4 * len(excluded))  # each layer back in float makes the embeddings cleaner
        return lambda x: clean[x[:, 0].astype(int)] + np.random.default_rng(1).normal(size=(len(x), 8)) * noise

    images = np.arange(40, dtype=np.float32)[:, None]
    fp32 = task.value(clean, labels)
    result = restore_until_within(quantize, ["a", "b", "c"], images, labels, fp32, 1.0, 3, "onnx",
                                  scorer=task.value, metric=task.label)
    assert result.excluded and result.top1 >= fp32 - 1.0
    assert "rank1" in result.attempts[0] and "top1" not in result.attempts[0]
    with pytest.raises(AccuracyGoalError, match=r"(?s)max_accuracy_drop 0.0 pt of FP32 rank-1 .*rank-1 %"):
        restore_until_within(lambda ex: quantize([]), ["a"], images, labels, fp32, 0.0, 1, "onnx",
                             scorer=task.value, metric=task.label)


def test_entry_point_returning_embeddings_is_used_as_is() -> None:
    model = tiny_cnn(num_classes=6, in_channels=1)  # its 6 outputs stand for a 6-d embedding
    spec = embedding_spec(EmbeddingConfig(output="model"), model, (1, 12, 12))
    assert spec["feature_dim"] == 6
    net = embedding_net(model, spec)
    assert isinstance(net.backbone[-1], nn.Linear)  # nothing dropped
    out = net.eval()(torch.randn(2, 1, 12, 12))
    assert out.shape == (2, 6) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
