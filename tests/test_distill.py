"""The distill stage: losses, config checks, students, the teacher-logit cache and the scratch baseline."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from compressor.engine import run_recipe
from compressor.errors import RecipeError, StageError
from compressor.recipe import validate_document
from compressor.train.losses import dkd_loss, hint_loss
from compressor.train.models import load_model_artifact
from tests.conftest import needs_fmnist


def test_dkd_loss_terms() -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 10)
    labels = torch.randint(0, 10, (16,))
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(dkd_loss(logits, torch.randn(16, 10), labels, alpha=0, beta=0), ce)
    assert dkd_loss(logits, logits, labels, ce_weight=0).abs() < 1e-5
    tckd_only = dkd_loss(logits, -logits, labels, alpha=1, beta=0, ce_weight=0)
    nckd_only = dkd_loss(logits, -logits, labels, alpha=0, beta=1, ce_weight=0)
    assert tckd_only > 0.01 and nckd_only > 0.01
    # NCKD ignores the target logit: changing only the teacher's target logit leaves it unchanged.
    teacher = torch.randn(16, 10)
    bumped = teacher + 5 * torch.nn.functional.one_hot(labels, 10)
    nckd = [dkd_loss(logits, t, labels, alpha=0, beta=1, ce_weight=0) for t in (teacher, bumped)]
    assert torch.allclose(nckd[0], nckd[1], atol=1e-4)


def test_hint_loss_resizes_student_map() -> None:
    teacher = torch.ones(2, 4, 4, 4)
    assert hint_loss(torch.ones(2, 4, 8, 8), teacher) < 1e-6
    assert hint_loss(torch.zeros(2, 4, 2, 2), teacher) == pytest.approx(1.0)


def _doc(tmp_path: Path, tiny_recipe: dict[str, Any], stages: list[dict[str, Any]], **data: Any) -> dict[str, Any]:
    doc = copy.deepcopy(tiny_recipe)
    doc["output"] = str(tmp_path / "run")
    doc["data"].update(augment=False, **data)
    doc["model"]["kwargs"] = {"width": 16}
    doc["stages"] = [{"name": "teacher", "type": "train", "epochs": 2, "optimizer": "adamw", "lr": 0.01}, *stages]
    return doc


@pytest.mark.parametrize(("stage", "match"), [
    ({"student": "input"}, r"stages\[1\]: student: input distills into the input model, so 'teacher' must name"),
    ({"feature": {"teacher_layer": "4", "student_layer": "4"}, "cache_teacher_logits": True},
     r"cache_teacher_logits skips the teacher's forward pass"),
    ({"loss": {"type": "dkd", "alpha": 1, "betta": 2}}, r"stages\[1\]\.loss\.dkd\.betta: unknown key \(did you mean \"beta\"\?\)"),
    ({"teacher": "techer"}, r'stages\[1\]\.teacher: "techer" names no stage \(did you mean "teacher"\?\)'),
])
def test_config_errors(tmp_path: Path, tiny_recipe: dict[str, Any], stage: dict[str, Any], match: str) -> None:
    doc = _doc(tmp_path, tiny_recipe, [{"name": "s", "type": "distill", **stage}])
    with pytest.raises(RecipeError, match=match):
        validate_document(doc)


def _run(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = run_recipe(validate_document(copy.deepcopy(doc)), log=lambda _m: None, show_progress=False)
    return {s["name"]: s for s in json.loads(result.manifest_path.read_text())["stages"]}


@needs_fmnist
def test_distill_students_baseline_and_cache(tmp_path: Path, tiny_recipe: dict[str, Any]) -> None:
    tiny_student = {"entry_point": "tests.tinynet:tiny_cnn", "kwargs": {"width": 4}}
    doc = _doc(tmp_path, tiny_recipe, [
        {"name": "kd", "type": "distill", "epochs": 1, "baseline": True, "stem_stride": 1,
         "student": {"arch": "shufflenet_v2_x0_5"}},
        {"name": "dkd", "type": "distill", "teacher": "teacher", "epochs": 1, "loss": {"type": "dkd"},
         "student": tiny_student, "feature": {"teacher_layer": "4", "student_layer": "5", "weight": 0.5}},
        {"name": "self", "type": "distill", "input": "dkd", "teacher": "teacher", "student": "input",
         "epochs": 1, "lr": 0.001},
    ])
    stages = _run(doc)
    kd = stages["kd"]["metrics"]
    assert {"teacher_top1", "scratch_top1", "student_top1", "gain_over_scratch", "gap_to_teacher"} <= set(kd)
    assert kd["gain_over_scratch"] == pytest.approx(kd["student_top1"] - kd["scratch_top1"], abs=1e-3)
    assert kd["teacher_logits_cached"] and kd["teacher_cache_hit_rate"] == 1.0
    assert kd["teacher_top1"] == stages["teacher"]["metrics"]["val_top1"]
    # The student is rebuilt from its metadata alone, stem stride included.
    art = stages["kd"]["artifact"]
    student = load_model_artifact(art["meta"], tmp_path / "run" / stages["kd"]["files"][0]["path"])
    assert student.conv1[0].stride == (1, 1) and student.conv1[0].in_channels == 1
    assert art["meta"]["spec"]["arch"] == "shufflenet_v2_x0_5"
    dkd = stages["dkd"]["metrics"]
    assert dkd["loss"] == "dkd" and not dkd["teacher_logits_cached"]  # a feature hint needs the teacher
    assert stages["self"]["artifact"]["meta"]["params"] == stages["dkd"]["artifact"]["meta"]["params"]


@needs_fmnist
@pytest.mark.parametrize(("stage", "augment", "match"), [
    ({"cache_teacher_logits": True}, True, r"stage 's': cache_teacher_logits: true needs data.augment: false"),
    ({"feature": {"teacher_layer": "4", "student_layer": "features.30"}}, False,
     r"stage 's': feature.student_layer: the student has no layer named 'features.30' \(did you mean "),
])
def test_run_time_errors(tmp_path: Path, tiny_recipe: dict[str, Any], stage: dict[str, Any], augment: bool,
                         match: str) -> None:
    doc = _doc(tmp_path, tiny_recipe, [{"name": "s", "type": "distill", "epochs": 1,
                                        "student": {"arch": "mobilenet_v3_small"}, **stage}])
    doc["data"]["augment"] = augment
    doc["stages"][0]["epochs"] = 1
    with pytest.raises(StageError, match=match):
        _run(doc)
