"""Security: nothing unsafe is loaded or executed, and no recipe document crashes the validator."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from compressor.errors import RecipeError
from compressor.recipe import Recipe, validate_document
from compressor.registry import STAGES
from tests.conftest import REPO, TINY_RECIPE

KEYS = sorted({
    "name", "type", "input", "inputs", "seed", "data", "model", "stages", "threads", "device", "output",
    "source", "path", "arch", "entry_point", "checkpoint", "preprocess", "mean", "std", "channels", "epochs",
    "lr", "batch_size", "opset", "backends", "min_agreement", "train_per_class", "kwargs", *STAGES,
})
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(sorted(STAGES)), st.sampled_from(["model", "teacher", "resnet18"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=6),
    ),
    max_leaves=25,
)


@st.composite
def mutated_recipes(draw: st.DrawFn) -> Any:
    """The tiny recipe with random parts replaced: gets past the first checks more often than noise."""
    doc: Any = copy.deepcopy(TINY_RECIPE)
    for _ in range(draw(st.integers(1, 4))):
        target = doc
        if draw(st.booleans()) and isinstance(doc.get("stages"), list) and doc["stages"]:
            target = doc["stages"][draw(st.integers(0, len(doc["stages"]) - 1))]
        if isinstance(target, dict):
            target[draw(st.sampled_from(KEYS))] = draw(documents)
    return doc


@seed(20261127)
@settings(max_examples=2000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(documents, mutated_recipes()))
def test_validate_never_raises_anything_but_recipe_error(doc: Any) -> None:
    try:
        result = validate_document(doc, "generated.yaml")
    except RecipeError as err:
        assert err.problems and all(str(p) for p in err.problems)
    else:
        assert isinstance(result, Recipe)
        result.resolved()


def _python_sources() -> list[Path]:
    return sorted((REPO / "compressor").rglob("*.py"))


def test_no_unsafe_loading_or_execution_in_package() -> None:
    """torch.load only with weights_only=True, YAML only through safe_load, no eval/exec/shell=True."""
    offenders = []
    for path in _python_sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path}:{number}: torch.load without weights_only=True")
            if re.search(r"\byaml\.(load|unsafe_load|full_load)\(", code):
                offenders.append(f"{path}:{number}: yaml load other than safe_load")
            if re.search(r"(?<![\w.])(eval|exec)\(", code) or "shell=True" in code:
                offenders.append(f"{path}:{number}: eval/exec/shell=True")
            if re.search(r"\bpickle\.loads?\(", code):
                offenders.append(f"{path}:{number}: pickle.load")
    assert not offenders, "\n".join(offenders)
