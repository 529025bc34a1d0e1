"""The recipe's ``search:`` section: which stage options vary, what is optimised, what must hold, how long.

Only pydantic data lives here (``compressor validate`` and ``compressor schema`` read it without Optuna);
the search itself is :mod:`compressor.search`.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from compressor.core.config import Strict
from compressor.errors import Problem, did_you_mean
from compressor.release.gates import Accuracy, Gate, MaxRegression, Statistic

SPACE_PREFIX = "stages."


class Dimension(Strict):
    """One searched option: exactly one of ``float: [lo, hi]``, ``int: [lo, hi]`` or ``choice: [...]``."""

    float_range: tuple[float, float] | None = Field(
        None, alias="float", description="Real values from low to high, both included.")
    int_range: tuple[int, int] | None = Field(None, alias="int", description="Integers from low to high, both included.")
    choice: list[Any] | None = Field(None, min_length=1, description="The values to choose among (any YAML value).")
    log: bool = Field(False, description="Sample a range on a log scale (low must be above 0).")
    step: float | None = Field(None, gt=0, description="Sample a range on this grid (int: an integer step).")
    when: dict[str, Any] | None = Field(
        None, description="Sample this option only when earlier options of the space have these values (a value "
        "or a list of accepted values each); otherwise the stage keeps the recipe's value.")

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        given = [k for k, v in (("float", self.float_range), ("int", self.int_range), ("choice", self.choice))
                 if v is not None]
        if len(given) != 1:
            what = f"has {' and '.join(given)}" if given else "has none"
            msg = f"needs exactly one of float: [low, high], int: [low, high] or choice: [...] ({what})"
            raise ValueError(msg)
        bounds = self.float_range or self.int_range
        if bounds is not None:
            low, high = bounds
            if low > high:
                msg = f"low {low} is above high {high}"
                raise ValueError(msg)
            if self.log and low <= 0:
                msg = f"log: true needs a low above 0 (got {low})"
                raise ValueError(msg)
            if self.log and self.step is not None:
                msg = "give log or step, not both (Optuna samples either on a log scale or on a grid)"
                raise ValueError(msg)
            if self.int_range is not None and self.step is not None and self.step != int(self.step):
                msg = f"an int range needs an integer step (got {self.step})"
                raise ValueError(msg)
        elif self.log or self.step is not None:
            msg = "log and step apply to float and int ranges, not to choice"
            raise ValueError(msg)
        return self

    @property
    def kind(self) -> Literal["float", "int", "choice"]:
        return "float" if self.float_range is not None else "int" if self.int_range is not None else "choice"

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` lies in this dimension (for ``when`` and the recipe's own plan)."""
        if self.choice is not None:
            return value in self.choice
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        low, high = self.float_range or self.int_range  # type: ignore[misc]
        if self.int_range is not None and value != int(value):
            return False
        if self.step is not None and abs((value - low) / self.step - round((value - low) / self.step)) > 1e-9:
            return False  # off the grid
        return bool(low <= value <= high)


class AccuracyObjective(Strict):
    """Maximised: the accuracy of the artifact in its benchmark rows (the worst row when several match)."""

    artifact: str | None = Field(None, description="Stage whose artifact is judged (default: search.artifact).")
    metric: Accuracy | None = Field(None, description="top1 (default), or the embedding metric (rank1, map).")
    bench: str | None = Field(None, description="Benchmark stage whose rows are read (default: any that measures it).")
    target: str | None = Field(None, description="Only rows of this target.")
    format: str | None = Field(None, description="Only rows of this format.")
    backend: str | None = Field(None, description="Only rows of this backend.")


class LatencyObjective(Strict):
    """Minimised: one latency statistic of the artifact on one target at one batch size (the worst row)."""

    artifact: str | None = Field(None, description="Stage whose artifact is timed (default: search.artifact).")
    bench: str | None = Field(None, description="Benchmark stage whose rows are read (default: any that measures it).")
    target: str = Field("local", description="Benchmark target (rows without one are 'local').")
    statistic: Statistic = Field("p90", description="median, p90 (MLPerf single-stream) or p99.")
    batch: int = Field(1, ge=1)
    format: str | None = Field(None, description="Only rows of this format.")
    backend: str | None = Field(None, description="Only rows of this backend.")


class SizeObjective(Strict):
    """Minimised: the bytes of the artifact's files."""

    artifact: str | None = Field(None, description="Stage whose files are counted (default: search.artifact).")


class Objectives(Strict):
    accuracy: AccuracyObjective | None = Field(AccuracyObjective(), description="null: not an objective.")
    latency: LatencyObjective | None = Field(LatencyObjective(), description="null: not an objective.")
    size: SizeObjective | None = Field(None, description="Optional third objective.")

    @model_validator(mode="after")
    def _some(self) -> Objectives:
        if self.accuracy is None and self.latency is None and self.size is None:
            msg = "optimises nothing: keep at least one of accuracy, latency, size"
            raise ValueError(msg)
        return self

    def names(self) -> list[str]:
        return [n for n in ("accuracy", "latency", "size") if getattr(self, n) is not None]


class Budget(Strict):
    trials: int | None = Field(None, ge=1, description="Trials to run in the whole study (all workers together).")
    wall_time_min: float | None = Field(
        None, gt=0, description="Minutes after which a worker starts no new trial (running trials finish).")

    @model_validator(mode="after")
    def _some(self) -> Budget:
        if self.trials is None and self.wall_time_min is None:
            msg = "needs trials, wall_time_min or both"
            raise ValueError(msg)
        return self


class Pruning(Strict):
    """Stopping hopeless trials early, from the accuracy a training stage reports when it finishes
    (``train``, a prune fine-tune, a ``distill``)."""

    rule: Literal["constraints", "median", "none"] = Field(
        "constraints", description="constraints: stop a trial whose accuracy after a training stage already "
        "fails an accuracy constraint (min_accuracy, max_top1_drop) by more than margin; median: also stop "
        "it when it is below the median of finished trials at that stage; none: never stop.")
    margin: float = Field(1.0, ge=0, le=100, description="Accuracy points of slack before a trial is stopped.")
    warmup_trials: int = Field(3, ge=1, description="median: finished trials needed before it stops any.")


Choose = Literal["most_accurate", "fastest", "smallest"]


class SearchConfig(Strict):
    """The recipe's ``search:`` section (``compressor search RECIPE``)."""

    artifact: str = Field(min_length=1, description="Stage whose artifact the plan ships (judged by the objectives "
                          "and constraints).")
    space: dict[str, Dimension] = Field(
        min_length=1, description="Options to vary, by path: stages.<stage name>.<option>[.<sub-option>].")
    objectives: Objectives = Objectives()
    constraints: list[Gate] = Field(
        default_factory=list, description="Release gates every chosen plan must pass (max_latency, "
        "max_top1_drop, max_size, min_accuracy, min_speedup); artifacts default to [search.artifact].")
    teacher: str | None = Field(None, description="Reference stage of max_top1_drop / min_speedup (default: "
                                "gates.teacher).")
    budget: Budget
    choose: Choose = Field("most_accurate", description="Which plan best.yaml holds, among those meeting every "
                           "constraint that no other beats beyond the noise (the front): most_accurate (ties: faster), fastest, smallest.")
    sampler: Literal["nsga2", "tpe"] = Field("nsga2", description="Optuna sampler (multi-objective either way).")
    population: int = Field(8, ge=2, description="NSGA-II population size (its first generation is random).")
    seed: int | None = Field(None, description="Sampler seed (default: the recipe's seed).")
    baseline: bool = Field(True, description="First trial: the recipe's own values, so every report shows "
                           "whether the search beat the hand-written plan.")
    pruning: Pruning = Pruning()
    heartbeat_s: int = Field(30, ge=1, description="A worker records that its trial is alive this often.")
    grace_s: int | None = Field(None, ge=1, description="A running trial with no heartbeat for this long is "
                                "failed and queued again (default: 2 x heartbeat_s).")
    max_retry: int = Field(2, ge=0, description="Times a trial whose worker died is queued again.")

    @model_validator(mode="before")
    @classmethod
    def _default_artifacts(cls, data: Any) -> Any:
        # The constraints speak the gates' language; in a search they usually judge search.artifact.
        if isinstance(data, dict) and isinstance(data.get("constraints"), list) and data.get("artifact"):
            data = {**data, "constraints": [
                {**c, "artifacts": [data["artifact"]]} if isinstance(c, dict) and "artifacts" not in c else c
                for c in data["constraints"]]}
        return data


# -- cross-checks against the recipe's stages (called by compressor.recipe.validate_document) -------------

def split_path(path: str, names: list[str]) -> tuple[str, list[str]]:
    """``stages.<stage name>.<option>[.<sub>]`` -> (stage name, option parts); the longest matching name
    wins (stage names may hold dots). Raises ``ValueError`` naming what is wrong."""
    if not path.startswith(SPACE_PREFIX):
        msg = "only stage options can be searched: write stages.<stage name>.<option>"
        raise ValueError(msg)
    rest = path[len(SPACE_PREFIX):]
    matches = [n for n in names if rest.startswith(f"{n}.") and len(rest) > len(n) + 1]
    if not matches:
        head = rest.split(".")[0]
        hint = did_you_mean(head, names)
        msg = f'"{head}" names no stage' + (hint or f'; stages: {", ".join(names)}')
        raise ValueError(msg)
    name = max(matches, key=len)
    return name, rest[len(name) + 1:].split(".")


def _alternatives(annotation: Any) -> list[Any]:
    """A field's annotation flattened into the types it accepts (Optional, unions, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _alternatives(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) for a in _alternatives(arg)]
    return [annotation]


def _is_mapping(annotation: Any) -> bool:
    return annotation is dict or typing.get_origin(annotation) is dict


def option_field(config: type[BaseModel], parts: list[str]) -> tuple[Any, str | None]:
    """The pydantic field at ``parts`` of a stage config (None inside a free mapping such as ``kwargs``),
    or a problem."""
    models: list[type[BaseModel]] = [config]
    field = None
    for depth, part in enumerate(parts):
        if not models:
            if field is not None and any(_is_mapping(a) for a in _alternatives(field.annotation)):
                return None, None  # a free mapping (kwargs, settings): any key
            return None, f'"{".".join(parts[:depth])}" has no sub-options'
        field = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        if field is None:
            known = list(dict.fromkeys(f for m in models for f in m.model_fields))
            hint = did_you_mean(part, known)
            return None, f'"{part}" is not an option' + (hint or f'; options: {", ".join(known)}')
        models = [a for a in _alternatives(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return field, None


def _kind_problem(dim: Dimension, field: Any) -> str | None:
    accepted = _alternatives(field.annotation)
    literals = [v for a in accepted if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
    hint = f"; use choice: among {', '.join(map(str, literals))}" if literals else "; use choice: [...]"
    if dim.kind == "float" and float not in accepted:
        return "is an integer option; use int: [low, high]" if int in accepted else f"is not a number option{hint}"
    if dim.kind == "int" and not {int, float} & set(accepted):
        return f"is not a number option{hint}"
    return None


def _value_problem(dim: Dimension, field: Any) -> str | None:
    """A value of the dimension that the option refuses on its own (type or bounds)."""
    adapter = TypeAdapter(Annotated[field.annotation, *field.metadata]) if field.metadata else \
        TypeAdapter(field.annotation)
    values = dim.choice if dim.choice is not None else list(dim.float_range or dim.int_range or ())
    for value in values:
        try:
            adapter.validate_python(value)
        except ValidationError as err:
            first = err.errors()[0]
            why = first["msg"].replace("Input should be", "must be")
            return f"{value!r} is refused by the option: {why}"
    return None


def space_problems(search: SearchConfig, stages: dict[str, type[BaseModel]]) -> list[Problem]:
    """Problems of ``search.space``: paths that name no stage option, ranges of the wrong type, values the
    option refuses, ``when`` conditions on options not sampled before. ``stages``: name -> config class."""
    problems = [Problem(f"search.constraints[{i}].type", "max_regression compares with a baseline release, which a "
                        "search has not; keep it in gates:")
                for i, gate in enumerate(search.constraints) if isinstance(gate, MaxRegression)]
    names = list(stages)
    for position, (path, dim) in enumerate(search.space.items()):
        where = f"search.space.{path}"
        try:
            name, parts = split_path(path, names)
        except ValueError as err:
            problems.append(Problem(where, str(err)))
            continue
        if parts[0] == "name":
            problems.append(Problem(where, "a stage's name cannot be searched"))
            continue
        field, problem = option_field(stages[name], parts)
        if problem is None and field is not None:
            problem = _kind_problem(dim, field) or _value_problem(dim, field)
        if problem is not None:
            problems.append(Problem(where, f"stage {name}: {problem}"))
        earlier = dict(list(search.space.items())[:position])
        for cond, wanted in (dim.when or {}).items():
            if cond not in earlier:
                later = cond in search.space
                problems.append(Problem(f"{where}.when.{cond}", (
                    "comes later in search.space; a condition can only use options listed before it" if later
                    else f"is not an option of search.space{did_you_mean(cond, list(earlier))}")))
                continue
            for value in wanted if isinstance(wanted, list) else [wanted]:
                if not earlier[cond].accepts(value):
                    problems.append(Problem(f"{where}.when.{cond}", f"{value!r} is not a value {cond} can take"))
    return problems
