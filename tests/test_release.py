"""``compressor release`` and ``compressor verify`` on the tiny recipe (stages run once, then reused)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from compressor.cli import main
from compressor.errors import VerifyFailed
from compressor.release.verify import verify_bundle
from tests.conftest import TINY_RECIPE, needs_fmnist, write_recipe

pytestmark = [needs_fmnist, pytest.mark.integration]

PASSING_GATES: dict[str, Any] = {"teacher": "teacher", "checks": [
    {"type": "max_top1_drop", "artifacts": ["onnx"], "min_retained_pct": 99},
    {"type": "min_accuracy", "artifacts": ["onnx"], "min": 1},
    {"type": "max_latency", "artifacts": ["onnx"], "max_ms": 1000, "target": "local", "format": "onnx"},
    {"type": "max_size", "artifacts": ["onnx"], "max_mb": 5},
    {"type": "max_regression", "artifacts": ["onnx"], "max_latency_increase_pct": 50},
]}


def recipe_with(root: Path, name: str, gates: dict[str, Any]) -> Path:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["output"] = str(root / "run")  # one run folder: later releases reuse the cached stages
    doc["gates"] = gates
    return write_recipe(root / name, doc)


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("release")
    path = recipe_with(root, "pass.yaml", PASSING_GATES)
    assert main(["release", str(path), "--version", "1.0.0", "--quiet"]) == 0
    return root, root / "run/releases/1.0.0"


def manifest_of(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def test_passing_release_writes_a_bundle_that_verify_accepts(released: tuple[Path, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    _, bundle = released
    manifest = manifest_of(bundle)
    assert manifest["releasable"] is True and manifest["version"] == "1.0.0"
    assert [g["status"] for g in manifest["gates"]] == ["pass", "pass", "pass", "pass", "skipped"]
    assert manifest["decide"] == {"default": "confident", "confidence": 0.95, "over_seeds": "worst"}
    retained = manifest["gates"][0]
    assert retained["decide"] == "confident" and retained["n"] == 100 and retained["low"] <= retained["value"]
    assert {f["path"] for f in manifest["files"]} == {
        "artifacts/onnx/model.onnx", "benchmark.json", "benchmark.md", "gates.md", "model_card.md", "recipe.yaml"}
    card = (bundle / "model_card.md").read_text()
    assert "**onnx**: model (source) → teacher (train) → onnx (export_onnx)" in card
    for section in ("## Intended use", "## Preprocessing", "## Classes", "## Accuracy and latency per target",
                    "## Known limitations", "## Release gates"):
        assert section in card
    capsys.readouterr()
    assert main(["verify", str(bundle)]) == 0
    out = capsys.readouterr()
    assert "6 files match the manifest; 1 accuracy check(s) reproduce" in out.out
    assert f"(recorded {manifest['accuracy_checks'][0]['top1']:.2f}%)" in out.err


def test_tampered_file_fails_verify_naming_it(released: tuple[Path, Path], tmp_path: Path) -> None:
    copy_ = shutil.copytree(released[1], tmp_path / "bundle")
    with open(copy_ / "artifacts/onnx/model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(VerifyFailed, match=r"artifacts/onnx/model.onnx: sha256 differs from the manifest"):
        verify_bundle(copy_, accuracy=False)
    assert main(["verify", str(copy_), "--hashes-only"]) == 1
    with pytest.raises(VerifyFailed, match=r"manifest.json of .* has sha256 \w+, not the expected 00ff"):
        verify_bundle(copy_, expect_sha256="00ff")


def test_gate_just_above_measured_accuracy_fails_release(released: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root, bundle = released
    measured = next(r["top1"] for r in manifest_of(bundle)["measurements"] if r["stage"] == "onnx")
    # decided on the estimate alone: within the noise of 100 images, the default (confident) would pass it
    strict = {"checks": [{"type": "min_accuracy", "artifacts": ["onnx"], "min": measured + 0.5, "decide": "point"}]}
    capsys.readouterr()
    assert main(["release", str(recipe_with(root, "strict.yaml", strict)), "--version", "1.0.1", "--quiet"]) == 1
    out = capsys.readouterr()
    line = f"| min_accuracy | onnx | onnx/fp32 onnxruntime local | top1 >= {measured + 0.5:g}% | {measured:.2f} ± "
    assert line in out.out and "| 100 | point | **FAIL** |" in out.out
    assert "1 gate check(s) failed" in out.err
    failed = root / "run/releases/1.0.1"
    assert manifest_of(failed)["releasable"] is False
    assert line in (failed / "gates.md").read_text()
    with pytest.raises(VerifyFailed, match="is marked not releasable: gate.s. failed: min_accuracy on onnx"):
        verify_bundle(failed)


def test_baseline_with_better_latency_flags_a_regression(released: tuple[Path, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root, bundle = released
    baseline = shutil.copytree(bundle, tmp_path / "baseline")
    manifest = manifest_of(baseline)
    for r in manifest["measurements"]:
        r["median_ms"] /= 10  # the last release was ten times faster
        r["median_ci_ms"] = [v / 10 for v in r["median_ci_ms"]]
    (baseline / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    path = recipe_with(root, "pass.yaml", PASSING_GATES)
    assert main(["release", str(path), "--version", "1.1.0", "--baseline", str(baseline), "--quiet"]) == 1
    out = capsys.readouterr().out
    # The benchmark stage is reused from the cache, so the rows are the baseline's times ten exactly.
    line = next(x for x in out.splitlines() if "| median +<= 50% vs baseline | +900.0 ± " in x)
    assert "| confident | **FAIL** |" in line
    regressions = [g for g in manifest_of(root / "run/releases/1.1.0")["gates"] if g["type"] == "max_regression"]
    assert [(g["threshold"].split(" ")[0], g["status"]) for g in regressions] == [
        ("top-1", "pass"), ("median", "fail"), ("size", "pass")]


def test_run_prints_the_gate_table(released: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = released
    capsys.readouterr()
    assert main(["run", str(recipe_with(root, "pass.yaml", PASSING_GATES)), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| gate | artifact | measured on | threshold | measured (± 95%) | n | decide | result | note |" in out
    assert "gates: 4 passed, 0 failed, 1 skipped (advisory here" in out
    assert (root / "run/gates.md").is_file()


def test_verify_names_the_extra_of_a_missing_backend(released: tuple[Path, Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from compressor.errors import CompressorError
    from compressor.runtime.backends import BACKENDS

    entry = BACKENDS["onnxruntime"]
    backends = {**BACKENDS, "onnxruntime": dataclasses.replace(entry, requires="no_such_runtime_module")}
    with pytest.raises(CompressorError, match=r"cannot re-run onnx \(onnx/fp32\) on onnxruntime: the onnxruntime "
                                              r"backend needs .*pip install 'compressor\[onnx\]'"):
        verify_bundle(released[1], log=lambda _m: None, backends=backends)
