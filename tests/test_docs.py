"""The docs a newcomer reads stay true: the README is short and its recipe validates, every link and
path they name exists, and docs/ARCHITECTURE.md's worked example stage really is one file plus one
registry line."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from compressor.recipe import validate_document
from compressor.registry import STAGES, StageEntry
from tests.conftest import REPO, TINY_RECIPE, needs_fmnist

README = REPO / "README.md"
ARCH = REPO / "docs" / "ARCHITECTURE.md"


def test_readme_is_short_and_shows_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.encode()) < 8 * 1024
    assert "make demo" in text and "make test" in text


def test_readme_recipe_validates() -> None:
    block = re.search(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert block
    recipe = validate_document(yaml.safe_load(block.group(1)), "README.md")
    assert [s.type for s in recipe.stages][:2] == ["train", "prune"]


@pytest.mark.parametrize("doc", sorted(p.name for p in [README, *(REPO / "docs").glob("*.md")]))
def test_links_and_paths_in_the_docs_exist(doc: str) -> None:
    path = README if doc == "README.md" else REPO / "docs" / doc
    text = path.read_text()
    missing = []
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target and not (path.parent / target).exists():
            missing.append(target)
    for ref in set(re.findall(r"`((?:compressor|tests|benchmarks|recipes|scripts)/[\w/.-]+\.(?:py|yaml|sh))`", text)):
        if not (REPO / ref).exists() and "model_summary" not in ref:  # the worked example is not shipped
            missing.append(ref)
    assert not missing, f"{doc} names what does not exist: {missing}"


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _example_entry(tmp_path: Path) -> StageEntry:
    """The worked example of docs/ARCHITECTURE.md: its stage file and its registry line, as written there."""
    blocks = _code_blocks(ARCH.read_text())
    stage_src = next(b for b in blocks if b.startswith("# compressor/stages/model_summary.py"))
    line = next(b for b in blocks if b.startswith("StageEntry(type=\"model_summary\""))
    path = tmp_path / "model_summary.py"
    path.write_text(stage_src)
    spec = importlib.util.spec_from_file_location("model_summary", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_summary"] = module
    spec.loader.exec_module(module)
    entry = eval(line.strip().rstrip(","), {"StageEntry": StageEntry, "model_summary": module})  # noqa: S307 - our own doc
    assert isinstance(entry, StageEntry)
    return entry


def test_architecture_example_is_a_strict_stage(tmp_path: Path) -> None:
    entry = _example_entry(tmp_path)
    cfg = entry.config(name="x")
    with pytest.raises(pydantic.ValidationError):
        entry.config(name="x", tpo=3)
    with pytest.raises(pydantic.ValidationError):
        cfg.top = 2  # type: ignore[misc]
    registry = {**STAGES, entry.type: entry}
    doc = copy.deepcopy(TINY_RECIPE)
    doc["stages"] = [doc["stages"][0], {"name": "summary", "type": "model_summary", "tpo": 3}]
    with pytest.raises(Exception, match=r"tpo.*did you mean .top"):
        validate_document(copy.deepcopy(doc), registry=registry)
    with pytest.raises(Exception, match="unknown stage type"):
        validate_document(copy.deepcopy(doc))  # the module's own table does not know it


@needs_fmnist
def test_architecture_example_runs_through_the_engine(tmp_path: Path) -> None:
    from compressor.engine import run_recipe

    entry = _example_entry(tmp_path)
    registry = {**STAGES, entry.type: entry}
    doc: dict[str, Any] = copy.deepcopy(TINY_RECIPE)
    doc["output"] = str(tmp_path / "run")
    doc["stages"] = [doc["stages"][0], {"name": "summary", "type": "model_summary", "top": 3}]
    result = run_recipe(validate_document(doc, registry=registry), log=lambda _m: None, show_progress=False,
                        registry=registry)
    manifest = json.loads(result.manifest_path.read_text())
    summary = manifest["stages"][-1]
    assert summary["name"] == "summary"
    rows = summary["metrics"]["summary"]
    assert 0 < len(rows) <= 3 and rows[0]["params"] >= rows[-1]["params"]
    assert summary["metrics"]["params"] >= sum(r["params"] for r in rows)
