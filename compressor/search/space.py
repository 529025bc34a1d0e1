"""A trial's plan: each searched option sampled (define-by-run, honouring ``when``) and written into the recipe."""

from __future__ import annotations

import copy
import json
from typing import Any

from compressor.errors import CompressorError
from compressor.recipe import Recipe
from compressor.search_config import SPACE_PREFIX, Dimension, split_path

Primitive = (str, int, float, bool, type(None))


def encode(value: Any) -> Any:
    """A choice as Optuna stores it: plain values as they are, mappings and lists as canonical JSON."""
    return value if isinstance(value, Primitive) else json.dumps(value, sort_keys=True)


def decode(dim: Dimension, stored: Any) -> Any:
    assert dim.choice is not None
    for value in dim.choice:
        if encode(value) == stored:
            return value
    msg = f"stored choice {stored!r} is not among {dim.choice}; the study was made from another space"
    raise CompressorError(msg)


def condition_holds(when: dict[str, Any] | None, chosen: dict[str, Any]) -> bool:
    """``when``: every named option was sampled with the value given (a list: one of its values)."""
    for path, wanted in (when or {}).items():
        if path not in chosen:
            return False
        if chosen[path] not in (wanted if isinstance(wanted, list) else [wanted]):
            return False
    return True


def sample(trial: Any, space: dict[str, Dimension]) -> dict[str, Any]:
    """Ask ``trial`` for every option of the space whose condition holds, in the space's order."""
    chosen: dict[str, Any] = {}
    for path, dim in space.items():
        if not condition_holds(dim.when, chosen):
            continue
        if dim.float_range is not None:
            chosen[path] = trial.suggest_float(path, *dim.float_range, log=dim.log, step=dim.step)
        elif dim.int_range is not None:
            chosen[path] = trial.suggest_int(path, *dim.int_range, log=dim.log, step=int(dim.step or 1))
        else:
            assert dim.choice is not None
            chosen[path] = decode(dim, trial.suggest_categorical(path, [encode(v) for v in dim.choice]))
    return chosen


def apply(doc: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any]:
    """A copy of the recipe document with each chosen value written at its path."""
    doc = copy.deepcopy(doc)
    raw_stages = [s for s in doc.get("stages") or [] if isinstance(s, dict)]
    names = [str(s.get("name")) for s in raw_stages]
    for path, value in chosen.items():
        name, parts = split_path(path, names)  # validated: both exist
        node: dict[str, Any] = raw_stages[names.index(name)]
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                msg = (f"{path}: the recipe sets {part} to {child!r}, which has no option {parts[-1]}; write it "
                       "as a mapping in the recipe")
                raise CompressorError(msg)
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return doc


_MISSING = object()


def _lookup(node: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def recipe_plan(doc: dict[str, Any], recipe: Recipe, space: dict[str, Dimension]) -> tuple[dict[str, Any], list[str]]:
    """The recipe's own value of every option in the space (as written, else the stage's default), as
    Optuna parameters, and the options whose value lies outside the space."""
    raw = {str(s.get("name")): s for s in doc.get("stages") or [] if isinstance(s, dict)}
    resolved = {s.name: s.config.model_dump(mode="json") | dict(s.refs) for s in recipe.stages}
    chosen: dict[str, Any] = {}
    params: dict[str, Any] = {}
    outside: list[str] = []
    for path, dim in space.items():
        if not condition_holds(dim.when, chosen):
            continue
        name, parts = split_path(path, list(resolved))
        value = _lookup(raw.get(name), parts)
        if value is _MISSING:
            value = _lookup(resolved[name], parts)
        if not dim.accepts(value):
            outside.append(f"{path} = {value!r}")
            continue
        chosen[path] = value
        params[path] = encode(value) if dim.choice is not None else value
    return params, outside


__all__ = ["SPACE_PREFIX", "apply", "condition_holds", "decode", "encode", "recipe_plan", "sample"]
