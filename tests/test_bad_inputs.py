"""Bad inputs, one test each, through the command line: exit code 2, one clear message naming the field
or file and what to do, no traceback, and no finished stage's artifacts lost.

The CLI's ``main`` runs in this process (what ``python -m compressor.cli`` runs, without paying for a
new interpreter per case); ``tests/test_recipe.py`` checks the same path in a subprocess.
"""

from __future__ import annotations

import errno
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from compressor.cli import main
from tests.conftest import make_image_folder, write_recipe
from tests.sshd import SshServer, needs_sshd, ssh_server_fixture  # noqa: F401 - the ssh_server fixture
from tests.tinynet import tiny_cnn

TEACHER = {"name": "teacher", "type": "train", "epochs": 1, "lr": 0.05}


def _doc(tmp_path: Path, stages: list[dict[str, Any]] | None = None, **model: Any) -> dict[str, Any]:
    """A recipe on a tiny generated ImageFolder (3 classes, 12 px greyscale-able PNGs)."""
    data = tmp_path / "data"
    if not data.exists():
        make_image_folder(data, classes=3, per_class=4, size=12)
    return {
        "name": "bad", "seed": 0, "threads": 1, "output": str(tmp_path / "run"),
        "data": {"source": "imagefolder", "path": str(data), "batch_size": 8,
                 "preprocess": {"resize": 12, "channels": 1, "mean": [0.5], "std": [0.5]}},
        "model": {"entry_point": "tests.tinynet:tiny_cnn", **model},
        "stages": stages if stages is not None else [dict(TEACHER)],
    }


def _cli(capsys: pytest.CaptureFixture[str], *argv: str, registry: Any = None) -> tuple[int, str, str]:
    code = main([*argv], registry=registry)
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *patterns: str, registry: Any = None) -> str:
    """Run the CLI; check exit 2, a message on stderr matching every pattern, and no traceback."""
    code, _out, err = _cli(capsys, *argv, registry=registry)
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1, err
    message = err[err.index("error: "):]  # what came before is the run's log
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    return message


def run_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, doc: Any, *patterns: str,
                registry: Any = None) -> str:
    return refused(capsys, ["run", str(write_recipe(tmp_path / "r.yaml", doc)), "--quiet"], *patterns,
                   registry=registry)


def validate_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, doc: Any, *patterns: str) -> str:
    return refused(capsys, ["validate", str(write_recipe(tmp_path / "r.yaml", doc))], *patterns)


def _manifest(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / "run/manifest.json").read_text())


def assert_teacher_kept_and_reused(capsys: pytest.CaptureFixture[str], tmp_path: Path, doc: dict[str, Any]) -> None:
    """After a failure past the teacher: its files are there, and a fixed recipe's rerun reuses it."""
    manifest = _manifest(tmp_path)
    assert manifest["status"] == "failed"
    teacher = next(s for s in manifest["stages"] if s["name"] == "teacher")
    for f in teacher["files"]:
        assert (tmp_path / "run" / f["path"]).is_file()
    code, out, err = _cli(capsys, "run", str(write_recipe(tmp_path / "fixed.yaml", doc)), "--quiet")
    assert code == 0, err
    stages = {s["name"]: s for s in _manifest(tmp_path)["stages"]}
    assert stages["teacher"]["reused"] and stages["teacher"]["key"] == teacher["key"]


# -- the recipe ---------------------------------------------------------------------------------------

def test_recipe_not_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nstages: [\n  - a: b\n")
    refused(capsys, ["validate", str(path)], r"r\.yaml:\n\s+is not valid YAML: line \d+, column \d+: .*; fix the syntax there")


def test_yaml_not_a_mapping(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    validate_refused(capsys, tmp_path, ["train", "export_onnx"], r"r\.yaml",
                     "a recipe must be a YAML mapping of settings and stages, got a list")


def test_unknown_top_level_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path)
    doc["thread"] = 3
    validate_refused(capsys, tmp_path, doc, r'thread: unknown key \(did you mean "threads"\?\)')


def test_misspelled_stage_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path, [{**TEACHER, "type": "trian"}])
    validate_refused(capsys, tmp_path, doc, r'stages\[0\]\.type: unknown stage type "trian" \(did you mean "train"\?\)')


def test_stage_option_of_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path, [{**TEACHER, "epochs": "many"}])
    validate_refused(capsys, tmp_path, doc, r"stages\[0\]\.epochs: must be a valid integer")


def test_out_of_range_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path, [{**TEACHER, "label_smoothing": 1.5}])
    validate_refused(capsys, tmp_path, doc, r"stages\[0\]\.label_smoothing: must be between 0 and 1 \(got 1\.5\)")


def test_two_stages_with_the_same_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path, [dict(TEACHER), {**TEACHER}])
    validate_refused(capsys, tmp_path, doc, r'stages\[1\]\.name: "teacher" is already used by stages\[0\]; '
                                            "names must be unique")


def test_stage_input_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path, [dict(TEACHER), {"name": "onnx", "type": "export_onnx", "input": "teacher2"}])
    validate_refused(capsys, tmp_path, doc, r'stages\[1\]\.input: "teacher2" names no stage \(did you mean "teacher"\?\)')


def test_stage_input_that_comes_later(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path, [{"name": "onnx", "type": "export_onnx", "input": "teacher"}, dict(TEACHER)])
    validate_refused(capsys, tmp_path, doc, r'stages\[0\]\.input: "teacher" comes later in the recipe; '
                                            "stages can only use earlier ones")


def test_recipe_path_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(capsys, ["run", str(tmp_path / "nope.yaml")], r"nope\.yaml", "file not found")


# -- the data -----------------------------------------------------------------------------------------

def test_data_folder_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path)
    doc["data"]["path"] = str(tmp_path / "nowhere")
    run_refused(capsys, tmp_path, doc, r"data folder .*nowhere does not exist")


def test_imagefolder_with_an_empty_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path)
    (tmp_path / "data/train/class_empty").mkdir()
    run_refused(capsys, tmp_path, doc, r"class folder .*train/class_empty has no readable images")


def test_class_in_val_but_not_in_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path)
    extra = tmp_path / "data/val/class_9"
    extra.mkdir()
    Image.new("RGB", (12, 12)).save(extra / "a.png")
    run_refused(capsys, tmp_path, doc, r"class folder\(s\) class_9 that the training split")


def test_undecodable_image_is_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path)
    (tmp_path / "data/train/class_1/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, _out, err = _cli(capsys, "run", str(write_recipe(tmp_path / "r.yaml", doc)), "--quiet")
    assert code == 0, err
    data = _manifest(tmp_path)["data"]
    assert data["skipped_images"] == 1 and data["train_images"] == 12
    assert data["skipped"][0]["file"].endswith("broken.jpg")


@pytest.mark.parametrize("channels", [1, 3])
def test_greyscale_and_rgba_mix_is_converted(tmp_path: Path, capsys: pytest.CaptureFixture[str], channels: int) -> None:
    doc = _doc(tmp_path)
    doc["data"]["preprocess"]["channels"] = channels
    Image.new("L", (12, 12), 128).save(tmp_path / "data/train/class_0/grey.png")
    Image.new("RGBA", (12, 12), (10, 20, 30, 40)).save(tmp_path / "data/train/class_0/rgba.png")
    code, _out, err = _cli(capsys, "run", str(write_recipe(tmp_path / "r.yaml", doc)), "--quiet")
    assert code == 0, err
    data = _manifest(tmp_path)["data"]
    assert data["train_images"] == 14 and data["skipped_images"] == 0
    assert data["input_shape"] == [channels, 12, 12]


# -- the model ----------------------------------------------------------------------------------------

def _checkpoint_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, path: Path, *patterns: str) -> None:
    err = run_refused(capsys, tmp_path, _doc(tmp_path, checkpoint=str(path)), re.escape(path.name), *patterns)
    assert len(err.strip().splitlines()) == 1, err


def test_checkpoint_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _checkpoint_refused(capsys, tmp_path, tmp_path / "nope.pt", "does not exist", r"\(model\.checkpoint\)")


def test_checkpoint_truncated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.pt"
    torch.save(tiny_cnn(num_classes=3).state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    _checkpoint_refused(capsys, tmp_path, path, r"is not a readable PyTorch checkpoint \(truncated or corrupt\?\)")


def test_checkpoint_that_is_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    _checkpoint_refused(capsys, tmp_path, path, "is not a readable PyTorch checkpoint")


def test_checkpoint_of_another_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), path)
    _checkpoint_refused(capsys, tmp_path, path, "does not match the architecture: key '0.weight' is missing")


def test_checkpoint_class_count_disagrees_with_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "five.pt"
    torch.save(tiny_cnn(num_classes=5).state_dict(), path)
    _checkpoint_refused(capsys, tmp_path, path, r"has 5 classes .* but the model is built for 3")


def test_pickled_full_model_where_a_state_dict_is_expected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "full.pt"
    torch.save(tiny_cnn(num_classes=3), path)
    _checkpoint_refused(capsys, tmp_path, path, r"holds pickled Python objects .* refused under weights_only=True")


def test_entry_point_that_does_not_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path)
    doc["model"]["entry_point"] = "tests.no_such_module:net"
    run_refused(capsys, tmp_path, doc, "cannot import module 'tests.no_such_module'")


def test_entry_point_that_does_not_return_a_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path)
    doc["model"]["entry_point"] = "tests.tinynet:not_a_module"
    run_refused(capsys, tmp_path, doc, "tests.tinynet:not_a_module", "returned str, not a torch.nn.Module")


# -- stages that cannot do their work: earlier stages survive -----------------------------------------

def test_pruning_target_that_cannot_be_met(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path, [dict(TEACHER), {"name": "pruned", "type": "prune", "macs_reduction": 0.95}])
    run_refused(capsys, tmp_path, doc, r"stage 'pruned': macs_reduction 0\.95 cannot be met: .* achieves "
                                       r"\d+\.\d% fewer MACs")
    doc["stages"][1]["macs_reduction"] = 0.2
    assert_teacher_kept_and_reused(capsys, tmp_path, doc)


def test_op_a_converter_cannot_handle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path, [dict(TEACHER), {"name": "ov", "type": "export_openvino"}],
               entry_point="tests.tinynet:tiny_cnn_histc")
    run_refused(capsys, tmp_path, doc, r"stage 'ov': openvino export failed: the converter cannot handle operator "
                                       r"aten::histc in module 'odd' \(Histogram\)")
    manifest = _manifest(tmp_path)
    assert [s["name"] for s in manifest["stages"]] == ["model", "teacher"]
    for f in manifest["stages"][1]["files"]:
        assert (tmp_path / "run" / f["path"]).is_file()


def test_optional_runtime_not_installed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "openvino" or m.startswith("openvino.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    doc = _doc(tmp_path, [dict(TEACHER), {"name": "ov", "type": "export_openvino"}])
    err = run_refused(capsys, tmp_path, doc, r"stage 'ov': .*'openvino', which is not installed",
                      re.escape("pip install 'compressor[openvino]'"))
    assert len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    assert_teacher_kept_and_reused(capsys, tmp_path, doc)


def test_disk_full_while_writing_an_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from compressor.registry import STAGES

    entry = STAGES["export_onnx"]

    def full_disk(cfg: Any, ctx: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(ctx.out_dir / "model.onnx"))

    registry = {**STAGES, "export_onnx": type(entry)(**{**entry.__dict__, "run": full_disk})}
    doc = _doc(tmp_path, [dict(TEACHER), {"name": "onnx", "type": "export_onnx"}])
    run_refused(capsys, tmp_path, doc, r"stage 'onnx': could not write .*model\.onnx: No space left on device; "
                                       "free space or choose another output folder", registry=registry)
    assert not list((tmp_path / "run/cache").glob("*.tmp-*"))
    assert_teacher_kept_and_reused(capsys, tmp_path, doc)


def test_disk_full_in_an_atomic_write_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import compressor.core.artifacts as artifacts
    from compressor.errors import CompressorError

    def fsync(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "stage.json").write_text("{}")
    monkeypatch.setattr(artifacts.os, "fsync", fsync)
    with pytest.raises(CompressorError, match=r"could not write .*stage\.json: No space left on device; free space"):
        artifacts.write_json(tmp_path / "stage.json", {"a": 1})
    assert (tmp_path / "stage.json").read_text() == "{}"  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["stage.json"]  # no temporary left


# -- devices and gates -------------------------------------------------------------------------------

def _bench_ssh(capsys: pytest.CaptureFixture[str], tmp_path: Path, target: str, *patterns: str) -> None:
    """``compressor bench`` of a tiny ONNX file on an SSH target that cannot be used."""
    onnx = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_cnn().eval(), (torch.zeros(1, 1, 28, 28),), str(onnx), dynamo=False,
                      input_names=["input"], output_names=["logits"])
    argv = ["bench", str(onnx), "--target", target, "--min-iters", "2", "--time-budget-s", "0.01",
            "--out", str(tmp_path / "bench")]
    err = refused(capsys, argv, r"target board could not be used: ssh to board failed \(exit 255\)", *patterns)
    assert len(err.strip().splitlines()) == 1 and "report is in" in err, err
    rows = json.loads((tmp_path / "bench/results.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["failed"]  # the report is written, with the reason


def test_ssh_device_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("key", "known_hosts"):
        (tmp_path / name).write_text("")
    _bench_ssh(capsys, tmp_path, f"ssh:nobody@127.0.0.1:1,key={tmp_path / 'key'},"
                                 f"known_hosts={tmp_path / 'known_hosts'},name=board",
               "Connection refused", r"device 127\.0\.0\.1:1 is unreachable: check that it is on")


@needs_sshd
def test_ssh_device_with_a_wrong_host_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          ssh_server: SshServer) -> None:
    wrong = tmp_path / "other_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{ssh_server.port} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
    _bench_ssh(capsys, tmp_path, f"ssh:{ssh_server.user}@127.0.0.1:{ssh_server.port},key={ssh_server.key},"
                                 f"known_hosts={wrong},name=board",
               "Host key verification failed", rf"is not the one in {re.escape(str(wrong))}: check that this "
               r"is the right device, then update that file \(ssh-keyscan")

def test_gate_referring_to_an_artifact_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(tmp_path, [dict(TEACHER), {"name": "onnx", "type": "export_onnx"}])
    doc["gates"] = {"checks": [{"type": "max_size", "artifacts": ["onx"], "max_mb": 1}]}
    validate_refused(capsys, tmp_path, doc, r'gates\.checks\[0\]\.artifacts\[0\]: "onx" names no stage '
                                            r'\(did you mean "onnx"\?\)')
