"""What every benchmark target shares: target configs, the job a runner gets, its result, and staging.

Every target runs the same self-contained ``runner.py`` on a staged folder (runner, job.json, artifact
files, preprocessed inputs as .npy) and returns a :class:`TargetResult`; a target that cannot run gives
rows marked failed or skipped with the reason, never an exception that stops the other targets.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from compressor.errors import CompressorError
from compressor.metrics.stats import even_subset, prediction_outcomes

RUNNER = Path(__file__).with_name("runner.py")
# shipped beside the runner: the helpers it shares with the in-process backends
PORTABLE = Path(__file__).parents[1] / "portable.py"
# Runtime names the runner reports -> backend names of this package.
BACKEND_NAMES = {"onnxruntime": "onnxruntime", "ai-edge-litert": "litert", "tflite-runtime": "litert",
                 "openvino": "openvino"}


class _Target(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(None, description="Label in reports (default: the type, or user@host for ssh).")
    threads: int | None = Field(None, ge=1, description="Runtime threads (default: the cores used).")
    cores: list[int] | None = Field(None, min_length=1, description="Pin the runner to these CPU cores.")
    accuracy_images: int | None = Field(
        None, ge=1, description="Score accuracy on an even subset of this many images here (slow boards, emulation).")
    type: str

    @property
    def label(self) -> str:
        return self.name or self.type


class LocalTarget(_Target):
    type: Literal["local"] = "local"
    timeout_s: float = Field(1800, gt=0, description="Limit for the whole run here (a hung runtime is a failed row).")


class CudaTarget(_Target):
    type: Literal["cuda"] = "cuda"
    timeout_s: float = Field(1800, gt=0, description="Limit for the whole run on the GPU.")


class SshTarget(_Target):
    type: Literal["ssh"] = "ssh"
    host: str = Field(min_length=1)
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(min_length=1)
    key: Path = Field(description="Private key file (key authentication only; no password prompts).")
    known_hosts: Path = Field(description="known_hosts file the device's host key is checked against.")
    python: str = Field("python3", description="Python on the device.")
    connect_timeout_s: int = Field(10, ge=1, le=600)
    timeout_s: float = Field(1800, gt=0, description="Limit for the whole run on the device.")

    @property
    def label(self) -> str:
        return self.name or f"{self.user}@{self.host}:{self.port}"

    @field_validator("key", "known_hosts")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()


class EmulatedTarget(_Target):
    type: Literal["arm64-emulated"] = "arm64-emulated"
    rootfs: Path = Field(Path(".cache/arm64-rootfs"), description="Root built by 'make arm-rootfs'.")
    timeout_s: float = Field(1800, gt=0)


TargetConfig = Annotated[LocalTarget | CudaTarget | SshTarget | EmulatedTarget, Field(discriminator="type")]


@dataclass
class JobArtifact:
    """One file to measure: ``files`` travel together (an IR's .bin, an ONNX file's external data)."""

    name: str
    format: str
    main: Path
    files: list[Path] = field(default_factory=list)


@dataclass
class Job:
    artifacts: list[JobArtifact]
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    modes: list[str] = field(default_factory=lambda: ["latency"])
    warmup: int = 10
    min_iters: int = 50
    time_budget_s: float = 2.0
    max_iters: int = 10000
    requests: int = 2
    max_cv: float | None = None


@dataclass
class TargetResult:
    """What one target measured: rows per artifact name (runner rows), its environment, or why not."""

    target: str
    type: str
    emulated: bool = False
    environment: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    note: str | None = None

    @classmethod
    def all_rows(cls, target: _Target, job: Job, status: str, reason: str, emulated: bool = False) -> TargetResult:
        rows = {a.name: [{"status": status, "reason": reason}] for a in job.artifacts}
        return cls(target.label, target.type, emulated=emulated, rows=rows, note=reason)


def subset(total: int, count: int | None) -> np.ndarray:
    """Indices of an even subset of ``count`` out of ``total`` (all when count is None or larger)."""
    return even_subset(total, count)


def stage_job(job: Job, folder: Path, target: _Target, device: str = "cpu") -> Path:
    """Write runner.py, job.json, inputs and artifact files (copied) into ``folder``; return job.json."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(RUNNER, folder / "runner.py")
    shutil.copy2(PORTABLE, folder / "portable.py")
    spec: dict[str, Any] = {
        "artifacts": [], "batch_sizes": job.batch_sizes, "modes": job.modes, "warmup": job.warmup,
        "min_iters": job.min_iters, "time_budget_s": job.time_budget_s, "max_iters": job.max_iters,
        "requests": job.requests, "max_cv": job.max_cv, "threads": target.threads, "cores": target.cores, "device": device,
    }
    if job.images is not None:
        keep = subset(len(job.images), target.accuracy_images)
        np.save(folder / "inputs.npy", np.ascontiguousarray(job.images[keep], dtype=np.float32))
        spec["inputs"] = "inputs.npy"
    if job.labels is not None:
        keep = subset(len(job.labels), target.accuracy_images)
        np.save(folder / "labels.npy", np.asarray(job.labels[keep], dtype=np.int64))
        spec["labels"] = "labels.npy"
    for i, art in enumerate(job.artifacts):
        sub = folder / f"a{i}"
        sub.mkdir()
        for f in {art.main, *art.files}:
            shutil.copy2(f, sub / f.name)
        spec["artifacts"].append({"name": art.name, "format": art.format, "path": f"a{i}/{art.main.name}"})
    path = folder / "job.json"
    path.write_text(json.dumps(spec))
    return path


def parse_runner_output(target: _Target, job: Job, stdout: str, stderr: str, rc: int,
                        emulated: bool = False) -> TargetResult:
    """Runner stdout -> TargetResult; a crash or garbage output fails every row with the reason."""
    doc = None
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                doc = None
            break
    if rc != 0 or doc is None:
        tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:]) or "no output"
        return TargetResult.all_rows(target, job, "failed", f"runner exited with status {rc}: {tail}", emulated)
    rows = {a["name"]: a["rows"] for a in doc["artifacts"]}
    return TargetResult(target.label, target.type, emulated=emulated,
                        environment=doc["environment"], rows=rows)


def target_row(base: dict[str, Any], result: TargetResult, runner_row: dict[str, Any],
               reference_pred: np.ndarray | None, labels: np.ndarray | None = None) -> dict[str, Any]:
    """One runner row -> one benchmark row (predictions become top-1 agreement and the row's packed
    per-image outcomes, then are dropped)."""
    row = dict(base)
    row.update(target=result.target, target_type=result.type, emulated=result.emulated)
    runtime = runner_row.get("runtime") or {}
    if runtime.get("runtime"):
        row["backend"] = BACKEND_NAMES.get(runtime["runtime"], runtime["runtime"])
    pred = runner_row.get("predictions")
    for key, value in runner_row.items():
        if key not in ("predictions", "precision", "top5_hits"):
            row[key] = value
    if runner_row.get("precision") and row.get("precision") in (None, "unknown"):
        row["precision"] = runner_row["precision"]
    if pred is not None and reference_pred is not None and len(pred) <= len(reference_pred):
        # a target with accuracy_images saw an even subset: compare on the same subset
        ref = reference_pred[subset(len(reference_pred), len(pred))]
        row["top1_agreement"] = round(float((np.asarray(pred) == ref).mean() * 100), 3)
    if pred is not None and labels is not None and len(pred) <= len(labels):
        keep = subset(len(labels), len(pred))
        row["outcomes"] = prediction_outcomes(np.asarray(pred), runner_row.get("top5_hits"), labels[keep],
                                              subset_of=len(labels))
    if result.emulated and "median_ms" in row:
        row["latency_note"] = "emulated (qemu): not comparable with native latencies"
    return row


def parse_target(spec: str) -> Any:
    """Command-line target: ``local[:threads=N,cores=0-3]``, ``cuda``, ``arm64-emulated[:rootfs=DIR]``,
    ``ssh:USER@HOST[:PORT],key=FILE,known_hosts=FILE[,python=...,name=...]``."""
    kind, _, rest = spec.partition(":")
    opts: dict[str, Any] = {}
    parts = [p for p in rest.split(",") if p] if rest else []
    if kind == "ssh":
        if not parts or "=" in parts[0]:
            msg = f"target {spec!r}: write ssh:USER@HOST[:PORT],key=FILE,known_hosts=FILE"
            raise CompressorError(msg)
        who = parts.pop(0)
        user, _, hostport = who.rpartition("@")
        host, _, port = hostport.partition(":")
        opts.update(user=user, host=host, **({"port": int(port)} if port else {}))
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            msg = f"target {spec!r}: option {part!r} needs KEY=VALUE"
            raise CompressorError(msg)
        if key == "cores":
            lo, _, hi = value.partition("-")
            opts[key] = list(range(int(lo), int(hi or lo) + 1))
        else:
            opts[key] = value
    from pydantic import TypeAdapter, ValidationError

    from compressor.errors import did_you_mean

    kinds = ("local", "cuda", "ssh", "arm64-emulated")
    if kind not in kinds:
        msg = f"target {spec!r}: unknown type {kind!r}{did_you_mean(kind, kinds)}; known: {', '.join(kinds)}"
        raise CompressorError(msg)
    try:
        return TypeAdapter(TargetConfig).validate_python({"type": kind, **opts})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:])
        msg = f"target {spec!r}: {where}: {first['msg']}"
        raise CompressorError(msg) from None
