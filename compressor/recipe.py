"""Recipes: YAML in, a validated :class:`Recipe` out, or one error per problem with its field path."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from compressor.core import readers
from compressor.core.config import (
    DataConfig,
    EmbeddingConfig,
    ModelSource,
    Preprocess,
    StageConfig,
    Strict,
    timm_preprocess,
)
from compressor.errors import Problem, RecipeError, did_you_mean
from compressor.registry import STAGES, StageEntry
from compressor.release.card import CardConfig
from compressor.release.gates import GATE_TYPES, GateSet, reference_problems
from compressor.runtime.model_files import file_preprocess
from compressor.search_config import SearchConfig, space_problems

SOURCE_STAGE = "model"


class RecipeSettings(Strict):
    """Global settings of a recipe (everything except ``stages``)."""

    name: str = Field("recipe", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    task: Literal["classification", "embedding"] = Field(
        "classification", description="embedding: the model outputs embeddings judged by retrieval (rank-1, mAP).")
    embedding: EmbeddingConfig | None = Field(None, description="Options of task: embedding (defaults apply).")
    seed: int = Field(0, ge=0)
    seeds: int | None = Field(
        None, ge=1, le=64, description="Run under this many seeds (seed, seed + 1, ...) and report each "
        "artifact's metrics as mean ± std with the per-seed values (compressor run --seeds N overrides).")
    output: Path | None = Field(None, description="Run folder. Default: runs/<name>.")
    cache_dir: Path | None = Field(None, description="Stage cache. Default: <output>/cache.")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int | None = Field(None, ge=1, le=1024, description="Threads for training and runtimes. Default: all cores.")
    data: DataConfig = DataConfig()
    model: ModelSource
    stages: list[dict[str, Any]] = Field(min_length=1)
    gates: GateSet | None = Field(None, description="Release gates checked by 'compressor release'.")
    card: CardConfig | None = Field(None, description="Text for the model card of a release.")
    search: SearchConfig | None = Field(
        None, description="What 'compressor search' varies, optimises and requires (see docs/search.md).")

    @field_validator("stages", mode="before")
    @classmethod
    def _stages_list(cls, value: Any) -> Any:
        # Item-level checks happen per stage against the registry; only the shape is checked here.
        if not isinstance(value, list):
            msg = "must be a list of stages, each a mapping with 'name' and 'type'"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _embedding_options(self) -> RecipeSettings:
        if self.embedding is not None and self.task != "embedding":
            msg = "embedding options need task: embedding (or remove the embedding section)"
            raise ValueError(msg)
        if self.task == "embedding" and self.embedding is None:
            object.__setattr__(self, "embedding", EmbeddingConfig())
        return self

    @model_validator(mode="after")
    def _source_preprocess(self) -> RecipeSettings:
        # A timm model's pretrained config (mean, std, input size) is the default preprocessing.
        if "preprocess" not in self.data.model_fields_set and (self.model.timm is not None or self.model.is_file):
            # ...and so is the preprocessing an ONNX / OpenVINO file carries in its metadata.
            found = timm_preprocess(self.model.timm) if self.model.timm is not None else file_preprocess(self.model)
            if found is not None:
                data = self.data.model_copy(update={"preprocess": Preprocess.model_validate(found)})
                object.__setattr__(self, "data", data)
        return self


@dataclass(frozen=True)
class Stage:
    """One validated stage of a recipe."""

    index: int
    type: str
    config: StageConfig
    entry: StageEntry
    refs: dict[str, str | list[str]]

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: global settings plus its stages in order."""

    settings: RecipeSettings
    stages: tuple[Stage, ...]
    source: str

    def __getattr__(self, item: str) -> Any:
        return getattr(self.settings, item)

    @property
    def output_dir(self) -> Path:
        return self.settings.output or Path("runs") / self.settings.name

    @property
    def cache_root(self) -> Path:
        return self.settings.cache_dir or self.output_dir / "cache"

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in, as JSON-ready data (for the manifest)."""
        doc = self.settings.model_dump(mode="json", exclude={"stages"})
        doc["output"] = str(self.output_dir)
        doc["cache_dir"] = str(self.cache_root)
        doc["stages"] = [
            {"type": s.type, **s.config.model_dump(mode="json"), **{k: v for k, v in s.refs.items()}}
            for s in self.stages
        ]
        return doc


def _loc_to_path(loc: tuple[Any, ...], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the last element of ``loc`` (for did-you-mean)."""
    current: Any = model
    variants: list[type[BaseModel]] = []
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        tagged = [v for v in variants if getattr(v.model_fields.get("type"), "default", None) == part]
        if tagged:  # pydantic puts a discriminated union's tag in the location: loss.dkd.beta
            current, variants = tagged[0], []
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = field.annotation
        args = getattr(current, "__args__", ())
        variants = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        for arg in variants:  # Optional[Model]
            current = arg
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _bounds(model: type[BaseModel] | None, name: Any) -> tuple[Any, Any]:
    if model is None or name not in model.model_fields:
        return None, None
    low = high = None
    for item in model.model_fields[name].metadata:
        low = next((getattr(item, a) for a in ("ge", "gt") if getattr(item, a, None) is not None), low)
        high = next((getattr(item, a) for a in ("le", "lt") if getattr(item, a, None) is not None), high)
    return low, high


def _problems(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[Problem]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        kind = e["type"]
        owner = _model_at(model, loc) if loc else None
        if loc[:2] in (("gates", "checks"), ("search", "constraints")) and len(loc) > 3 and loc[3] in GATE_TYPES:
            # A discriminated union puts the gate's type into the location; the user never wrote it there.
            owner = _model_at(GATE_TYPES[loc[3]], loc[4:])
            loc = loc[:3] + loc[4:]
        path = _loc_to_path(loc, prefix)
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            types = ", ".join(GATE_TYPES)
            tag = str(e.get("ctx", {}).get("tag", ""))
            problems.append(Problem(f"{path}.type", (
                f'unknown gate type "{tag}"{did_you_mean(tag, GATE_TYPES)}; known types: {types}'
                if kind == "union_tag_invalid" else f"is required; known types: {types}")))
            continue
        if kind == "extra_forbidden":
            known = list(owner.model_fields) if owner else []
            hint = did_you_mean(str(loc[-1]), known)
            message = f"unknown key{hint}" + (f"; known keys: {', '.join(known)}" if known and not hint else "")
        elif kind == "missing":
            message = "is required"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            low, high = _bounds(owner, loc[-1] if loc else None)
            if low is not None and high is not None:
                message = f"must be between {low} and {high} (got {e.get('input')!r})"
            else:
                message = e["msg"].replace("Input should be", "must be") + f" (got {e.get('input')!r})"
        elif kind == "value_error":
            message = str(e["ctx"]["error"]) if "ctx" in e else e["msg"]
        else:
            message = e["msg"].replace("Input should be", "must be")
            if "input" in e and not isinstance(e["input"], dict | list):
                message += f" (got {e['input']!r})"
        problems.append(Problem(path, message))
    return problems


def _stage_refs(raw: dict[str, Any], entry: StageEntry) -> dict[str, Any]:
    return {field: raw[field] for field in entry.refs if raw.get(field) is not None}


def _needs_pytorch(stages: list[Stage]) -> tuple[Stage, str] | None:
    """The first stage that needs the PyTorch model (trains, prunes, distills, or exports from PyTorch)."""
    for stage in stages:
        if stage.entry.accepts == ("model",):
            return stage, "needs the PyTorch model"
        if getattr(stage.config, "mode", None) == "qat":
            return stage, "(mode: qat) fine-tunes the PyTorch model"
        if stage.type == "quantize" and getattr(stage.config, "format", None) == "tflite":
            return stage, "(format: tflite) quantizes the PyTorch model"
        if getattr(stage.config, "source", None) == "pytorch":
            return stage, "(source: pytorch) converts the PyTorch model"
        if stage.refs.get("teacher") is not None:
            return stage, "needs a PyTorch teacher"
    return None


def validate_document(doc: Any, source: str = "<recipe>", registry: Mapping[str, StageEntry] = STAGES) -> Recipe:
    """Validate a parsed YAML document; raise :class:`RecipeError` listing every problem."""
    if not isinstance(doc, dict):
        what = "empty" if doc is None else f"a {type(doc).__name__}"
        raise RecipeError(source, [Problem("", f"a recipe must be a YAML mapping of settings and stages, got {what}"
                                                 "; see recipes/demo.yaml for the layout")])
    problems: list[Problem] = []
    settings: RecipeSettings | None = None
    try:
        settings = RecipeSettings.model_validate(doc)
    except ValidationError as err:
        problems.extend(_problems(err, RecipeSettings))

    raw_stages = doc.get("stages")
    stages: list[Stage] = []
    seen: dict[str, int] = {SOURCE_STAGE: -1}
    if isinstance(raw_stages, list):
        for i, raw in enumerate(raw_stages):
            where = f"stages[{i}]"
            if not isinstance(raw, dict):
                problems.append(Problem(where, "must be a mapping with 'name' and 'type'"))
                continue
            stage_type = raw.get("type")
            if stage_type is None or not isinstance(stage_type, str) or stage_type not in registry:
                if isinstance(raw.get("name"), str) and raw["name"] not in seen:
                    seen[raw["name"]] = i
            if stage_type is None:
                problems.append(Problem(f"{where}.type", f"is required; known types: {', '.join(sorted(registry))}"))
                continue
            if not isinstance(stage_type, str) or stage_type not in registry:
                known = ", ".join(sorted(registry))
                problems.append(Problem(
                    f"{where}.type",
                    f'unknown stage type "{stage_type}"{did_you_mean(str(stage_type), registry)}; known types: {known}',
                ))
                continue
            entry = registry[stage_type]
            options = {k: v for k, v in raw.items() if k != "type"}
            try:
                cfg = entry.config.model_validate(options)
            except ValidationError as err:
                problems.extend(_problems(err, entry.config, where))
                if isinstance(raw.get("name"), str) and raw["name"] not in seen:
                    seen[raw["name"]] = i  # later stages may still refer to it: report no cascade
                continue
            name = cfg.name
            if name in seen:
                first = "the recipe's model source" if name == SOURCE_STAGE else f"stages[{seen[name]}]"
                problems.append(Problem(f"{where}.name", f'"{name}" is already used by {first}; names must be unique'))
                continue
            refs = _stage_refs(options, entry)
            if "input" not in refs:
                refs["input"] = stages[-1].name if stages else SOURCE_STAGE
            for field, value in refs.items():
                for j, ref in enumerate(value if isinstance(value, list) else [value]):
                    ref_path = f"{where}.{field}" + (f"[{j}]" if isinstance(value, list) else "")
                    if ref == name:
                        problems.append(Problem(ref_path, f'stage "{name}" cannot take its own output'))
                    elif ref not in seen:
                        later = [s for s in raw_stages[i + 1:] if isinstance(s, dict) and s.get("name") == ref]
                        why = "comes later in the recipe; stages can only use earlier ones" if later else (
                            f"names no stage{did_you_mean(str(ref), seen)}; earlier stages: {', '.join(seen)}"
                        )
                        problems.append(Problem(ref_path, f'"{ref}" {why}'))
            seen[name] = i
            stages.append(Stage(index=i, type=stage_type, config=cfg, entry=entry, refs=refs))
    if problems or settings is None:
        raise RecipeError(source, problems)
    # Check that each reference names an artifact kind the stage accepts.
    if settings.model.is_file:
        torch_only = _needs_pytorch(stages)
        if torch_only is not None:
            stage, why = torch_only
            file_stages = sorted(t for t, e in registry.items() if set(e.accepts) - {"model"})
            raise RecipeError(source, [Problem(f"stages[{stage.index}]", (
                f'{stage.type} "{stage.name}" {why}, but the recipe\'s model is an {settings.model.kind} file '
                f"({settings.model.file}); a file source works with {', '.join(file_stages)}"))])
    kinds = {SOURCE_STAGE: settings.model.kind}
    for stage in stages:
        produced = stage.entry.produces
        if produced == "passthrough":
            produced = kinds[str(stage.refs["input"])]
        elif produced == "format":  # the kind is the stage's ``format`` option (e.g. quantize)
            produced = str(getattr(stage.config, "format", produced))
        kinds[stage.name] = produced
        for field, value in stage.refs.items():
            for ref in value if isinstance(value, list) else [value]:
                if kinds[ref] not in stage.entry.accepts:
                    problems.append(Problem(
                        f"stages[{stage.index}].{field}",
                        f'"{ref}" makes a {kinds[ref]} artifact, but {stage.type} takes '
                        f"{' or '.join(stage.entry.accepts)}",
                    ))
    measured_by: dict[str, list[str]] = {}
    for stage in stages:
        if stage.entry.produces == "report":
            names = stage.refs.get("inputs") or stage.refs["input"]
            for ref in names if isinstance(names, list) else [names]:
                measured_by.setdefault(ref, []).append(stage.name)
    if settings.gates is not None:
        from compressor.core.artifacts import KINDS
        from compressor.runtime.backends import BACKENDS

        problems.extend(reference_problems(settings.gates, kinds, measured_by, BACKENDS,
                                           [k for k in KINDS if k != "report"]))
    if settings.search is not None:
        problems.extend(_search_problems(settings.search, stages, kinds, measured_by, settings.gates))
    if problems:
        raise RecipeError(source, problems)
    return Recipe(settings=settings, stages=tuple(stages), source=source)


def _search_problems(search: SearchConfig, stages: list[Stage], kinds: dict[str, str],
                     measured_by: dict[str, list[str]], gates: GateSet | None) -> list[Problem]:
    """The search section against the stages: its space, the artifacts and benchmarks its objectives read,
    and its constraints (checked as gates are)."""
    from compressor.core.artifacts import KINDS
    from compressor.runtime.backends import BACKENDS

    problems = space_problems(search, {s.name: s.entry.config for s in stages})
    objectives = search.objectives
    named = [("search.artifact", search.artifact, objectives.accuracy is not None or objectives.latency is not None)]
    named += [(f"search.objectives.{n}.artifact", getattr(objectives, n).artifact, n != "size")
              for n in objectives.names() if getattr(objectives, n).artifact is not None]
    for path, name, needs_rows in named:
        if name not in kinds:
            problems.append(Problem(path, f'"{name}" names no stage{did_you_mean(name, kinds)}; stages: '
                                          f'{", ".join(kinds)}'))
        elif kinds[name] == "report":
            problems.append(Problem(path, f'"{name}" makes a report, not a model; name the stage whose artifact ships'))
        elif needs_rows and not measured_by.get(name):
            problems.append(Problem(path, f'"{name}" is not measured by any benchmark stage; add it to a '
                                          "benchmark stage's inputs"))
    for n in ("accuracy", "latency"):
        objective = getattr(objectives, n)
        bench = getattr(objective, "bench", None)
        artifact = (objective.artifact or search.artifact) if objective is not None else None
        if bench is not None and bench not in measured_by.get(str(artifact), []):
            problems.append(Problem(f"search.objectives.{n}.bench", f'"{bench}" is not a benchmark stage that '
                                    f"measures {artifact}; those are: {', '.join(measured_by.get(str(artifact), [])) or 'none'}"))
    needs = {"most_accurate": "accuracy", "fastest": "latency", "smallest": "size"}[search.choose]
    if getattr(objectives, needs) is None:
        problems.append(Problem("search.choose", f"{search.choose} needs the {needs} objective (search.objectives.{needs})"))
    if search.constraints:
        teacher = search.teacher or (gates.teacher if gates is not None else None)
        renamed = {"gates.checks": "search.constraints", "gates.teacher": "search.teacher"}
        for p in reference_problems(GateSet(teacher=teacher, checks=search.constraints), kinds, measured_by,
                                    BACKENDS, [k for k in KINDS if k != "report"]):
            path = next((p.path.replace(a, b, 1) for a, b in renamed.items() if p.path.startswith(a)), p.path)
            problems.append(Problem(path, p.message.replace("gates.checks", "search.constraints")))
    return problems


def read_recipe_file(path: Path) -> Any:
    """Read and YAML-parse a recipe file; a missing file, bad YAML or a key given twice is a RecipeError."""
    return readers.read_yaml_file(path, "recipe")


def apply_overrides(doc: Any, overrides: dict[str, Any]) -> Any:
    """Apply CLI overrides (``data``, ``model``, ``checkpoint``, ``output``) to a parsed recipe."""
    if not isinstance(doc, dict):
        return doc
    doc = copy.deepcopy(doc)
    if overrides.get("data"):
        data = dict(doc.get("data") or {})
        data.update(source="imagefolder", path=str(overrides["data"]))
        data.pop("train_per_class", None)
        data.pop("val_per_class", None)
        doc["data"] = data
    if overrides.get("model"):
        spec = str(overrides["model"])
        model = {k: v for k, v in dict(doc.get("model") or {}).items() if k in ("num_classes", "in_channels")}
        model["entry_point" if ":" in spec else "arch"] = spec
        doc["model"] = model
    if overrides.get("checkpoint"):
        doc.setdefault("model", {})["checkpoint"] = str(overrides["checkpoint"])
    if overrides.get("output"):
        doc["output"] = str(overrides["output"])
    return doc


def load_recipe(path: Path | str, overrides: dict[str, Any] | None = None,
                registry: Mapping[str, StageEntry] = STAGES) -> Recipe:
    path = Path(path)
    doc = apply_overrides(read_recipe_file(path), overrides or {})
    return validate_document(doc, str(path), registry)


def json_schema() -> dict[str, Any]:
    """JSON Schema of recipes, for editors: the settings plus one variant per stage type."""
    schema = RecipeSettings.model_json_schema()
    variants = []
    for stage_type, entry in sorted(STAGES.items()):
        sub = entry.config.model_json_schema()
        defs = sub.pop("$defs", {})
        schema.setdefault("$defs", {}).update(defs)
        sub["properties"] = {"type": {"const": stage_type, "description": entry.summary}, **sub["properties"]}
        sub["required"] = ["type", *sub.get("required", [])]
        variants.append(sub)
    schema["properties"]["stages"] = {"type": "array", "minItems": 1, "items": {"oneOf": variants}}
    schema["title"] = "compressor recipe"
    return schema
