"""Bad inputs, second round: every file a user passes goes through its reader (compressor/core/readers.py).

Decode failures, files of another kind, truncated files and missing companions (.bin beside .xml, the
external data of an ONNX file) are exit 2 naming the path and what was expected; so are recipes with a
key given twice, checkpoints holding NaN/Inf, and ``--out`` naming a file. Through ``cli.main`` in this
process, like tests/test_bad_inputs.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from compressor.core import readers
from compressor.errors import CheckpointError, CompressorError, InputFileError, RecipeError
from tests.conftest import make_image_folder, write_recipe
from tests.test_bad_inputs import TEACHER, _doc, refused, run_refused, validate_refused
from tests.tinynet import tiny_cnn

FAST = ["--min-iters", "1", "--warmup", "0", "--time-budget-s", "0", "--max-iters", "1"]


def bench_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, path: Path, *patterns: str,
                  extra: tuple[str, ...] = ()) -> str:
    return refused(capsys, ["bench", str(path), *FAST, "--out", str(tmp_path / "bench"), *extra], *patterns)


# -- compressor bench: ONNX ----------------------------------------------------------------------------

def test_bench_of_a_text_file_named_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("these are my notes, not a model\n" * 20)
    bench_refused(capsys, tmp_path, path, re.escape(str(path)), "does not decode as ONNX", "expected an ONNX model")


def test_bench_of_a_truncated_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], model_files: Any) -> None:
    path = model_files.copy("onnx", tmp_path / "m")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    bench_refused(capsys, tmp_path, path, re.escape(str(path)), "truncated, or another kind of file")


def test_bench_of_an_empty_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    bench_refused(capsys, tmp_path, path, "holds no ONNX graph")


def test_bench_of_onnx_whose_external_data_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      model_files: Any) -> None:
    path = model_files.copy("onnx_external", tmp_path / "m")
    (path.parent / f"{path.name}.data").unlink()
    bench_refused(capsys, tmp_path, path, r"in the external data file .*tiny\.onnx\.data, which is missing",
                  r"expected tiny\.onnx\.data beside tiny\.onnx")


def test_bench_of_onnx_whose_external_data_is_truncated(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        model_files: Any) -> None:
    path = model_files.copy("onnx_external", tmp_path / "m")
    data = path.parent / f"{path.name}.data"
    data.write_bytes(data.read_bytes()[:100])
    bench_refused(capsys, tmp_path, path, r"tiny\.onnx\.data is truncated: tensor '.*' needs bytes up to \d+")


# -- compressor bench: OpenVINO IR ---------------------------------------------------------------------

def test_bench_of_an_ir_without_its_bin(tmp_path: Path, capsys: pytest.CaptureFixture[str], model_files: Any) -> None:
    path = model_files.copy("openvino", tmp_path / "m")
    path.with_suffix(".bin").unlink()
    bench_refused(capsys, tmp_path, path, r"needs its weights file tiny\.bin, which is missing",
                  r"expected tiny\.bin beside tiny\.xml")


def test_bench_of_an_ir_with_a_truncated_bin(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             model_files: Any) -> None:
    path = model_files.copy("openvino", tmp_path / "m")
    weights = path.with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:64])
    bench_refused(capsys, tmp_path, path, r"tiny\.bin is truncated: tiny\.xml reads weights up to byte \d+, the file has 64")


def test_bench_of_a_truncated_ir_xml(tmp_path: Path, capsys: pytest.CaptureFixture[str], model_files: Any) -> None:
    path = model_files.copy("openvino", tmp_path / "m")
    path.write_bytes(path.read_bytes()[:500])
    bench_refused(capsys, tmp_path, path, "is not well-formed XML", "expected an OpenVINO IR")


def test_bench_of_xml_that_is_not_an_ir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "page.xml"
    path.write_text("<html><body>hello</body></html>")
    bench_refused(capsys, tmp_path, path, r"is XML but not an OpenVINO IR \(root <html>")


def test_bench_of_the_ir_bin_instead_of_its_xml(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                model_files: Any) -> None:
    path = model_files.copy("openvino", tmp_path / "m").with_suffix(".bin")
    bench_refused(capsys, tmp_path, path, r"unknown model suffix '\.bin'; pass the IR's \.xml \(tiny\.xml\)")


# -- compressor bench: TFLite and the rest ------------------------------------------------------------

def test_bench_of_a_file_named_tflite_that_is_not_one(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      model_files: Any) -> None:
    path = tmp_path / "model.tflite"
    shutil.copy(model_files.get("onnx"), path)
    bench_refused(capsys, tmp_path, path, "has no TFLite file identifier", "expected a TFLite flatbuffer")


def test_bench_of_a_truncated_tflite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], model_files: Any) -> None:
    path = model_files.copy("tflite", tmp_path / "m")
    path.write_bytes(path.read_bytes()[:2000])
    bench_refused(capsys, tmp_path, path, r"does not load as TFLite \(.*\); truncated or damaged")


def test_bench_of_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.pt"
    torch.save(tiny_cnn().state_dict(), path)
    bench_refused(capsys, tmp_path, path, r"unknown model suffix '\.pt'", r"expected \.onnx, \.tflite or OpenVINO \.xml")


def test_bench_of_a_missing_file_and_of_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench_refused(capsys, tmp_path, tmp_path / "nope.onnx", r"nope\.onnx does not exist")
    (tmp_path / "folder.onnx").mkdir()
    bench_refused(capsys, tmp_path, tmp_path / "folder.onnx", r"folder\.onnx is not a regular file")


def test_bench_out_naming_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], model_files: Any) -> None:
    (tmp_path / "results").write_text("keep me")
    refused(capsys, ["bench", str(model_files.get("onnx")), *FAST, "--out", str(tmp_path / "results")],
            r"--out .*results is an existing file, not a folder; pass a folder path")
    assert (tmp_path / "results").read_text() == "keep me"


def test_bench_data_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], model_files: Any) -> None:
    (tmp_path / "images.zip").write_bytes(b"PK\x03\x04")
    bench_refused(capsys, tmp_path, model_files.get("onnx"), r"--data .*images\.zip is a file, not a folder",
                  extra=("--data", str(tmp_path / "images.zip"), "--preprocess", '{"resize": 12, "channels": 1, "mean": [0.5], "std": [0.5]}'))


def test_bench_targets_file_with_a_key_given_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   model_files: Any) -> None:
    targets = tmp_path / "targets.yaml"
    targets.write_text("- type: local\n  threads: 1\n  threads: 2\n")
    bench_refused(capsys, tmp_path, model_files.get("onnx"), r'key "threads" is given twice \(lines 2 and 3\)',
                  extra=("--targets-file", str(targets)))


# -- compressor run: recipes with a key given twice ----------------------------------------------------

def _recipe_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_recipe_stage_option_given_twice_names_key_and_both_lines(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe_text(tmp_path, "name: dup\nmodel: {arch: resnet18}\nstages:\n"
                                  "  - name: teacher\n    type: train\n    epochs: 1\n    epochs: 2\n")
    refused(capsys, ["validate", str(path)],
            r'stages\[0\]\.epochs: key "epochs" is given twice \(lines 6 and 7\); YAML would keep only the last')


def test_recipe_with_two_name_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe_text(tmp_path, "name: one\nname: two\nmodel: {arch: resnet18}\nstages:\n  - {name: t, type: train}\n")
    refused(capsys, ["validate", str(path)], r'name: key "name" is given twice \(lines 1 and 2\)')


def test_recipe_duplicate_deep_inside_a_flow_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe_text(tmp_path, "name: dup\nmodel: {arch: resnet18}\ndata:\n  preprocess: {channels: 1, channels: 3}\n"
                                  "stages:\n  - {name: t, type: train, name: u}\n")
    message = refused(capsys, ["validate", str(path)])
    assert re.search(r'data\.preprocess\.channels: key "channels" is given twice \(lines 4 and 4\)', message), message
    assert re.search(r'stages\[0\]\.name: key "name" is given twice \(lines 6 and 6\)', message), message


def test_recipe_merge_key_override_is_not_a_duplicate(tmp_path: Path) -> None:
    text = ("name: merged\nmodel: {arch: resnet18}\nbase: &base {type: train, epochs: 1}\n"
            "stages:\n  - {<<: *base, name: t, epochs: 2}\n")
    doc = readers.parse_yaml(text, "merged.yaml")
    assert doc["stages"][0] == {"type": "train", "epochs": 2, "name": "t"}


def test_recipe_tags_still_build_nothing(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="builds no Python objects: remove the tag"):
        readers.parse_yaml("name: !!python/object/apply:os.system ['true']\n", "tag.yaml")


def test_recipe_that_is_a_binary_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.yaml"
    torch.save(tiny_cnn().state_dict(), path)
    refused(capsys, ["validate", str(path)], r"model\.yaml", "not a recipe YAML file|cannot be read as UTF-8")


# -- compressor run: output folders --------------------------------------------------------------------

def test_run_out_naming_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out.txt").write_text("keep me")
    recipe = write_recipe(tmp_path / "r.yaml", _doc(tmp_path))
    refused(capsys, ["run", str(recipe), "--quiet", "--out", str(tmp_path / "out.txt")],
            r"--out .*out\.txt is an existing file, not a folder")
    assert (tmp_path / "out.txt").read_text() == "keep me"


def test_recipe_output_below_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    doc = _doc(tmp_path)
    doc["output"] = str(tmp_path / "file" / "run")
    run_refused(capsys, tmp_path, doc, r"output folder .*file/run is an existing file \(its parent .*file is a file\)")


def test_recipe_cache_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cache").write_text("x")
    doc = _doc(tmp_path)
    doc["cache_dir"] = str(tmp_path / "cache")
    run_refused(capsys, tmp_path, doc, r"cache_dir .*cache is an existing file")


def test_release_out_naming_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bundle").write_text("x")
    recipe = write_recipe(tmp_path / "r.yaml", _doc(tmp_path))
    refused(capsys, ["release", str(recipe), "--version", "1.0", "--out", str(tmp_path / "bundle"), "--quiet"],
            r"--out .*bundle is an existing file")


# -- checkpoints ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "counts"), [(float("nan"), "1 NaN and 0 Inf"), (float("inf"), "0 NaN and 1 Inf")])
def test_checkpoint_with_a_non_finite_weight_names_the_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              value: float, counts: str) -> None:
    state = tiny_cnn(num_classes=3).state_dict()
    state["4.weight"][0, 0, 1, 1] = value
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    message = run_refused(capsys, tmp_path, _doc(tmp_path, checkpoint=str(path)), re.escape(str(path)),
                          rf"tensor '4\.weight' holds {counts} of 1152 values", "use an earlier checkpoint")
    assert "internal error" not in message and "lower lr" not in message


def test_checkpoint_of_random_bytes_is_not_called_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match=r"is not a readable PyTorch checkpoint \(truncated or corrupt\?\): Unsupported operand") as info:
        readers.read_checkpoint(path)
    assert "pickled Python objects" not in str(info.value)


def test_checkpoint_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "ckpt.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"ckpt\.pt is not a file; pass a state dict"):
        readers.read_checkpoint(tmp_path / "ckpt.pt")


def test_empty_state_dict_is_not_a_state_dict(tmp_path: Path) -> None:
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="is not a state dict"):
        readers.read_checkpoint(tmp_path / "empty.pt")


# -- data folders and images ---------------------------------------------------------------------------

def test_data_path_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path)
    (tmp_path / "data.tar").write_bytes(b"x")
    doc["data"]["path"] = str(tmp_path / "data.tar")
    run_refused(capsys, tmp_path, doc, r"data folder .*data\.tar is a file, not a folder")


def test_image_that_breaks_after_the_scan_names_the_file(tmp_path: Path) -> None:
    from compressor.errors import DataError

    make_image_folder(tmp_path / "d", classes=1, per_class=1, size=8, val=False)
    [image] = (tmp_path / "d/train/class_0").iterdir()
    assert readers.image_problem(image) is None
    image.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert readers.image_problem(image) is not None
    with pytest.raises(DataError, match=rf"image {re.escape(str(image))} cannot be decoded"):
        readers.read_image(image)


# -- release bundles -----------------------------------------------------------------------------------

def test_verify_of_a_file_instead_of_a_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bundle.zip").write_bytes(b"PK")
    refused(capsys, ["verify", str(tmp_path / "bundle.zip")], r"bundle .*bundle\.zip is not a folder")


def test_verify_of_a_truncated_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b/manifest.json").write_text('{"bundle_format": 1, "files": [')
    refused(capsys, ["verify", str(tmp_path / "b")], r"manifest\.json is not valid JSON .*; the bundle is damaged")


@pytest.mark.parametrize(("change", "pattern"), [
    ({"files": 5}, r"is damaged: files: Input should be a valid list"),
    ({"files": [{"path": "a"}]}, r"is damaged: files\.0\.sha256: Field required"),
    ({"releasable": "maybe"}, r"is damaged: releasable: Input should be a valid boolean"),
    ({"accuracy_checks": [{"stage": "x", "backend": "onnxruntime", "labels_sha256": "", "images_sha256": "",
                           "top1": 1.0}]}, r"accuracy_checks\[0\] names stage 'x', which ships no artifact"),
])
def test_verify_of_a_manifest_of_the_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 change: dict[str, Any], pattern: str) -> None:
    (tmp_path / "b").mkdir()
    manifest = {"bundle_format": 1, "files": [], "releasable": True, **change}
    (tmp_path / "b/manifest.json").write_text(json.dumps(manifest))
    refused(capsys, ["verify", str(tmp_path / "b")], pattern)


# -- the readers as functions --------------------------------------------------------------------------

def test_reader_errors_are_compressor_errors_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "x.tflite").write_bytes(b"")
    with pytest.raises(InputFileError) as info:
        readers.read_model_file(tmp_path / "x.tflite")
    assert isinstance(info.value, CompressorError) and info.value.exit_code == 2
    assert info.value.path == tmp_path / "x.tflite" and "TFLite flatbuffer" in info.value.expected


def test_good_files_read_back(model_files: Any) -> None:
    onnx = readers.read_model_file(model_files.get("onnx"))
    assert onnx.format == "onnx" and "Conv" in onnx.ops and onnx.files == [model_files.get("onnx")]
    external = readers.read_model_file(model_files.get("onnx_external"))
    assert [f.name for f in external.files] == ["tiny.onnx", "tiny.onnx.data"]
    ir = readers.read_model_file(model_files.get("openvino"))
    assert [f.name for f in ir.files] == ["tiny.xml", "tiny.bin"] and "Convolution" in ir.ops
    assert readers.read_model_file(model_files.get("tflite")).format == "tflite"


def test_teacher_stage_is_unaffected_by_readers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A good recipe and checkpoint still run (the readers accept what they should)."""
    path = tmp_path / "good.pt"
    torch.save(tiny_cnn(num_classes=3).state_dict(), path)
    recipe = write_recipe(tmp_path / "r.yaml", _doc(tmp_path, [dict(TEACHER)], checkpoint=str(path)))
    from compressor.cli import main

    assert main(["run", str(recipe), "--quiet"]) == 0, capsys.readouterr().err


def test_validate_refused_still_works_for_a_plain_bad_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    validate_refused(capsys, tmp_path, _doc(tmp_path, [{**TEACHER, "epochs": 0}]), r"stages\[0\]\.epochs")


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--batch-sizes", "a", "give comma-separated batch sizes of at least 1"),
    ("--batch-sizes", "1,0", "give comma-separated batch sizes of at least 1"),
    ("--requests", "0", r"must be at least 1 \(got 0\)"),
    ("--warmup", "-1", r"must be at least 0 \(got -1\)"),
    ("--min-iters", "0", r"must be at least 1 \(got 0\)"),
    ("--max-iters", "x", "'x' is not an integer"),
    ("--time-budget-s", "nan", r"must be at least 0 \(got nan\)"),
    ("--images", "0", r"must be at least 1 \(got 0\)"),
])
def test_bench_numeric_options_out_of_range_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             flag: str, value: str, message: str) -> None:
    from compressor.cli import main

    with pytest.raises(SystemExit) as info:
        main(["bench", str(tmp_path / "m.onnx"), flag, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert re.search(rf"compressor bench: error: argument {flag}: .*{message}", err), err
