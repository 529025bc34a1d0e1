"""Recipe validation: every problem reported with its field path, exit code 2, no traceback."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from compressor.cli import main
from compressor.errors import RecipeError
from compressor.recipe import json_schema, load_recipe, validate_document
from tests.conftest import PYTHON, REPO, TINY_RECIPE, run_checked, write_recipe


def problems_of(doc: object) -> list[str]:
    with pytest.raises(RecipeError) as info:
        validate_document(doc, "r.yaml")
    return [str(p) for p in info.value.problems]


def with_stage(index: int, **changes: object) -> dict:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["stages"][index].update(changes)
    return doc


def test_tiny_recipe_is_valid() -> None:
    recipe = validate_document(copy.deepcopy(TINY_RECIPE))
    assert [s.name for s in recipe.stages] == ["teacher", "evaluate", "onnx", "bench"]
    assert recipe.stages[0].refs == {"input": "model"}
    assert recipe.stages[2].refs == {"input": "evaluate"}


def test_out_of_range_names_field_path() -> None:
    assert problems_of(with_stage(0, label_smoothing=1.5)) == [
        "stages[0].label_smoothing: must be between 0 and 1 (got 1.5)"
    ]


def test_unknown_stage_key_did_you_mean() -> None:
    assert problems_of(with_stage(0, epohcs=3)) == ['stages[0].epohcs: unknown key (did you mean "epochs"?)']


def test_unknown_stage_type_did_you_mean() -> None:
    [msg] = problems_of(with_stage(1, type="evaluat"))
    assert msg.startswith('stages[1].type: unknown stage type "evaluat" (did you mean "evaluate"?); known types:')


def test_unknown_top_level_key() -> None:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["thread"] = 3
    assert problems_of(doc) == ['thread: unknown key (did you mean "threads"?)']


def test_wrong_type_option() -> None:
    [msg] = problems_of(with_stage(0, epochs="many"))
    assert msg.startswith("stages[0].epochs: must be a valid integer")


def test_every_problem_reported_at_once() -> None:
    doc = with_stage(0, epochs=0)
    doc["stages"][1]["type"] = "nope"
    doc["threads"] = 0
    found = problems_of(doc)
    assert len(found) == 3
    assert any(p.startswith("threads:") for p in found)


def test_duplicate_stage_names() -> None:
    assert problems_of(with_stage(1, name="teacher")) == [
        'stages[1].name: "teacher" is already used by stages[0]; names must be unique'
    ]


def test_reference_to_later_stage() -> None:
    assert problems_of(with_stage(1, input="onnx")) == [
        'stages[1].input: "onnx" comes later in the recipe; stages can only use earlier ones'
    ]


def test_reference_to_missing_stage() -> None:
    [msg] = problems_of(with_stage(3, inputs=["teacher", "onxx"]))
    assert msg.startswith('stages[3].inputs[1]: "onxx" names no stage (did you mean "onnx"?)')


def test_reference_of_wrong_kind() -> None:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["stages"].append({"name": "again", "type": "export_onnx", "input": "onnx"})
    assert problems_of(doc) == [
        'stages[4].input: "onnx" makes a onnx artifact, but export_onnx takes model'
    ]


def test_model_source_needs_exactly_one() -> None:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["model"] = {"arch": "resnet18", "entry_point": "a.b:c"}
    assert problems_of(doc) == [
        "model: give exactly one of 'arch' (a torchvision name), 'entry_point' ('package.module:factory'), "
        "'timm' (a timm model name), 'onnx' (a file) or 'openvino' (an .xml file); got arch, entry_point"
    ]


@pytest.mark.parametrize("doc, expected", [
    (None, "a recipe must be a YAML mapping of settings and stages, got empty; see recipes/demo.yaml for the layout"),
    ([1, 2], "a recipe must be a YAML mapping of settings and stages, got a list; see recipes/demo.yaml for the layout"),
    ("text", "a recipe must be a YAML mapping of settings and stages, got a str; see recipes/demo.yaml for the layout"),
])
def test_not_a_mapping(doc: object, expected: str) -> None:
    assert problems_of(doc) == [expected]


def test_stages_must_be_list() -> None:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["stages"] = {"name": "x"}
    assert problems_of(doc) == ["stages: must be a list of stages, each a mapping with 'name' and 'type'"]


def test_missing_file_is_not_parsed_as_yaml(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "recipes/missing.yaml")


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstages: [\n  - a: b\n")
    with pytest.raises(RecipeError, match=r"is not valid YAML: line \d+, column \d+"):
        load_recipe(path)


def test_cli_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_recipe(tmp_path / "good.yaml", TINY_RECIPE)
    assert main(["validate", str(good)]) == 0
    bad = write_recipe(tmp_path / "bad.yaml", with_stage(0, ratio=2))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "stages[0].ratio: unknown key" in err
    assert "Traceback" not in err


def test_cli_validate_subprocess_has_no_traceback(tmp_path: Path, cli_env: dict[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    proc = run_checked([PYTHON, "-m", "compressor.cli", "validate", str(bad)], expected_s=15, env=cli_env,
                       cwd=tmp_path)
    assert proc.returncode == 2
    assert "must be a YAML mapping" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_schema_lists_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    from compressor.registry import STAGES

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    variants = schema["properties"]["stages"]["items"]["oneOf"]
    assert {v["properties"]["type"]["const"] for v in variants} == set(STAGES)
    assert json_schema()["title"] == "compressor recipe"


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.stages
