"""The engine: runs a recipe's stages in order, reusing every stage whose cache key is unchanged.

Layout of a run folder (default ``runs/<name>``)::

    manifest.json      resolved recipe, environment, data, each stage's key, files (sha256, size), metrics
    report.md          what a person reads
    cache/<key>/       one finished stage: its files and stage.json (written last; its presence = done)
    cache/<key>.work/  an unfinished stage's epoch checkpoints, kept for resume
    .lock              held while a run uses the folder

A stage writes into ``cache/<key>.tmp-<pid>`` which is renamed to ``cache/<key>`` only when it has
finished, so a run killed at any moment never leaves a half-written stage that looks done.

Under ``torchrun`` every rank runs the engine; rank 0 alone locks the folder and writes the cache,
the manifest and the report, and only stages marked ``distributed`` run on the other ranks too
(see :mod:`compressor.core.distributed`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from compressor import __version__
from compressor.core.artifacts import Artifact, sha256_file, stable_hash, write_json
from compressor.core.console import third_party_output_to
from compressor.core.context import StageContext, StageOutput, TaskSpec
from compressor.core.data import DataModule, load_data
from compressor.core.distributed import SINGLE, barrier, broadcast_object, device_for, from_env, process_group
from compressor.core.readers import check_output_folder, describe_non_finite, non_finite_tensors
from compressor.errors import CompressorError, ModelSourceError, RunLockedError, StageError
from compressor.recipe import SOURCE_STAGE, Recipe, Stage
from compressor.registry import STAGES, StageEntry, get_stage
from compressor.runtime.envinfo import environment
from compressor.runtime.model_files import import_model_file
from compressor.train.models import (
    build_model,
    load_source_weights,
    model_meta,
    save_stage_model,
    torchvision_weights_file,
)

# Bumped when the on-disk form of artifacts changes, so old cache entries are not reused.
CACHE_FORMAT = 2

# What converters and runtimes print while a stage runs (see compressor.core.console).
CHATTER_LOG = "stage.log"


class RunStopped(Exception):
    """Raised by an ``on_stage`` callback to end a run after the stage it has just seen."""


@dataclass
class StageRecord:
    name: str
    type: str
    key: str
    reused: bool
    seconds: float
    artifact: Artifact
    metrics: dict[str, Any]
    files: list[dict[str, Any]]

    def to_json(self, out_dir: Path, cache_root: Path) -> dict[str, Any]:
        files = [
            {**f, "path": os.path.relpath(cache_root / self.artifact.folder / f["name"], out_dir)}
            for f in self.files
        ]
        return {
            "name": self.name, "type": self.type, "key": self.key, "reused": self.reused,
            "seconds": round(self.seconds, 2), "artifact": {"kind": self.artifact.kind, "id": self.artifact.id,
                                                           "meta": self.artifact.meta},
            "files": files, "metrics": self.metrics,
        }


@dataclass
class RunResult:
    output_dir: Path
    manifest_path: Path
    report_path: Path
    records: list[StageRecord] = field(default_factory=list)


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.lock`` for the run; a second run on the same folder is refused at once."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fh = open(out_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            msg = (f"another run is using {out_dir} (it holds {out_dir / '.lock'}); wait for it to finish "
                   "or pass another output folder with --out")
            raise RunLockedError(msg) from err
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()


@contextlib.contextmanager
def stage_lock(cache_root: Path, key: str, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold ``cache_root/<key>.lock`` while one stage is checked and computed.

    Runs with other output folders may share one cache (parallel CI jobs): the first to reach a stage
    computes it while the others wait here, then find it done and reuse it. The lock is an ``flock``,
    so a run that dies (even by ``kill -9``) releases it; the empty lock files stay in the cache.
    """
    fh = open(cache_root / f"{key}.lock", "a+")  # noqa: SIM115 - held for the stage
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fh.close()


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        msg = "recipe asks for device: cuda but no CUDA GPU is visible; use device: cpu or auto"
        raise CompressorError(msg)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(cache_root: Path) -> int:
    """Delete half-written stage folders left by runs that were killed (their process is gone)."""
    removed = 0
    for tmp in cache_root.glob("*.tmp-*"):
        pid = tmp.name.rpartition(".tmp-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
    return removed


def _file_records(folder: Path, artifact: Artifact) -> list[dict[str, Any]]:
    return [
        {"role": role, "name": name, "sha256": sha256_file(folder / name), "size": (folder / name).stat().st_size}
        for role, name in artifact.files.items()
    ]


class Engine:
    """Runs one recipe. Construct, then call :meth:`run`."""

    def __init__(self, recipe: Recipe, log: Callable[[str], None] = print, show_progress: bool | None = None,
                 registry: Mapping[str, StageEntry] = STAGES,
                 on_stage: Callable[[StageRecord], None] | None = None, verbose: bool = False):
        """``on_stage`` sees each finished (or reused) stage's record; raising :class:`RunStopped` there
        ends the run early, recorded as stopped (a search stops a hopeless trial this way). ``verbose``
        keeps what third-party code prints on the console (default: each stage's ``stage.log``)."""
        self.recipe = recipe
        self.verbose = verbose  # True: third-party output stays on the console instead of stage.log
        self.registry = registry  # stage type -> entry whose run function the engine calls
        self.on_stage = on_stage
        self.task = TaskSpec(recipe.task, recipe.embedding if recipe.task == "embedding" else None)
        self.dist = from_env()
        # Other ranks stay quiet: rank 0 reports for the job.
        self.log = log if self.dist.is_main else (lambda _m: None)
        self.show_progress = show_progress if self.dist.is_main else False
        self.out_dir = recipe.output_dir
        self.cache_root = recipe.cache_root
        self.threads = recipe.threads or len(os.sched_getaffinity(0))
        self.device = device_for(self.dist, resolve_device(recipe.device))
        self._data: DataModule | None = None
        self.records: list[StageRecord] = []
        self.started = datetime.now(UTC).isoformat(timespec="seconds")

    # -- data ---------------------------------------------------------------------------------
    def data(self) -> DataModule:
        if self._data is None:
            self._data = load_data(self.recipe.data, self.recipe.seed, open_set=self.recipe.task == "embedding")
            if self._data.skipped:
                first = self._data.skipped[0]
                self.log(f"data: skipped {len(self._data.skipped)} undecodable image(s), first {first['file']} "
                         f"({first['reason']}); the list is in manifest.json")
        return self._data

    # -- keys ---------------------------------------------------------------------------------
    def _context_key(self, needs_data: bool, timing: bool, distributed: bool = False) -> dict[str, Any]:
        ctx: dict[str, Any] = {"format": CACHE_FORMAT, "seed": self.recipe.seed, "device": self.device.type,
                               "task": self.recipe.task}
        if needs_data:
            ctx["data"] = self.recipe.data.model_dump(mode="json")
        if timing:
            ctx["threads"] = self.threads
        if distributed and self.dist.enabled:  # sharded training gives other weights than one process
            ctx["world_size"] = self.dist.world_size
        return ctx

    def stage_key(self, stage: Stage, inputs: dict[str, Any]) -> str:
        options = stage.config.model_dump(mode="json", exclude={"name", *stage.entry.refs})
        ids = {f: [a.id for a in v] if isinstance(v, list) else v.id for f, v in inputs.items()}
        return stable_hash({
            "type": stage.type, "options": options, "inputs": ids,
            "context": self._context_key(stage.entry.needs_data, stage.entry.timing, stage.entry.distributed),
        })[:24]

    # -- the model source ---------------------------------------------------------------------
    def _source_key(self) -> str:
        src = self.recipe.model
        ckpt = None
        files = [f for f in (src.checkpoint_file(), src.file) if f is not None]
        if src.openvino is not None:
            files.append(src.openvino.with_suffix(".bin"))
        if src.weights is not None and src.arch is not None:
            files.append(torchvision_weights_file(src.arch, src.weights)[0])
        for f in files:
            if not f.is_file():
                what = "is not a file" if f.exists() else "does not exist"
                is_ckpt = f == src.checkpoint_file()
                msg = f"checkpoint {f} {what} (model.checkpoint)" if is_ckpt else f"{f} {what} (model.{src.kind})"
                raise CompressorError(msg)
        if files:
            ckpt = [sha256_file(f) for f in files]
        return stable_hash({"type": SOURCE_STAGE, "spec": src.model_dump(mode="json", exclude={"checkpoint"}),
                            "checkpoint": ckpt, "classes": self._classes(), "in_channels": self._in_channels(),
                            "context": self._context_key(False, False)})[:24]

    def _classes(self) -> int:
        return self.recipe.model.num_classes or len(self.data().classes)

    def _in_channels(self) -> int:
        return self.recipe.model.in_channels or self.recipe.data.preprocess.channels

    def _run_source(self, ctx: StageContext) -> StageOutput:
        src = self.recipe.model
        torch.manual_seed(self.recipe.seed)
        if src.is_file:
            return import_model_file(ctx, src)
        model = build_model(src, self._classes(), self._in_channels())
        pretrained = load_source_weights(model, src, self._classes())
        if pretrained is None and (bad := non_finite_tensors(model.state_dict())):
            msg = (f"model source {src.label()} builds weights holding NaN/Inf: {describe_non_finite(bad)}; "
                   "fix its initialisation")
            raise ModelSourceError(msg)
        meta = model_meta(src, self._classes(), self._in_channels())
        if pretrained is not None:
            meta["pretrained"] = pretrained
            what = (f"head replaced ({pretrained.get('checkpoint_classes')} -> {pretrained['classes']} classes, "
                    f"'{pretrained['classifier']}' re-initialised)" if pretrained["head"] == "replaced" else "head kept")
            self.log(f"model: weights from {pretrained['origin']} {pretrained['file']}; {what}")
        if self.recipe.task == "embedding":
            from compressor.train.embedding import embedding_net, embedding_spec

            meta["embedding"] = embedding_spec(self.recipe.embedding, model, self.data().input_shape)
            model = embedding_net(model, meta["embedding"])
        return StageOutput(save_stage_model(ctx, model, meta), {
            "checkpoint": str(src.checkpoint) if src.checkpoint else None, "weights": pretrained})

    # -- running ------------------------------------------------------------------------------
    def _context(self, name: str, key: str, tmp: Path, inputs: dict[str, Any], refs: dict[str, Any],
                 distributed: bool = False) -> StageContext:
        ctx = StageContext(
            name=name, key=key, task=self.task, out_dir=tmp, work_dir=self.cache_root / f"{key}.work",
            cache_root=self.cache_root, inputs=inputs, refs=refs, data_loader=self.data, device=self.device,
            threads=self.threads, seed=self.recipe.seed, log=self.log,
            dist=self.dist if distributed else SINGLE,
        )
        if self.show_progress is not None:
            ctx.show_progress = self.show_progress
        return ctx

    def _saved_record(self, name: str, stage_type: str, key: str, reused: bool) -> StageRecord:
        import json

        saved = json.loads((self.cache_root / key / "stage.json").read_text())
        return StageRecord(name, stage_type, key, reused, 0.0 if reused else saved["seconds"],
                           Artifact.model_validate(saved["artifact"]), saved["metrics"], saved["files"])

    def _execute(self, name: str, stage_type: str, key: str, inputs: dict[str, Any], refs: dict[str, Any],
                 config: dict[str, Any], fn: Callable[[StageContext], StageOutput],
                 distributed: bool = False) -> StageRecord:
        marker = self.cache_root / key / "stage.json"
        if not self.dist.is_main:
            if broadcast_object(self.dist, None):  # rank 0 decides, so all ranks agree
                return self._saved_record(name, stage_type, key, True)
            return self._follow(name, stage_type, key, inputs, refs, fn, distributed)

        def waiting() -> None:
            self.log(f"{name} ({stage_type}): another run is computing it in the shared cache "
                     f"{self.cache_root} ({key[:12]}); waiting to reuse it")

        with stage_lock(self.cache_root, key, waiting):
            if broadcast_object(self.dist, marker.exists()):
                self.log(f"{name} ({stage_type}): reused from cache {key[:12]}")
                return self._saved_record(name, stage_type, key, True)
            try:
                record = self._run_stage(name, stage_type, key, inputs, refs, config, fn, distributed)
            except BaseException as err:
                if self.dist.enabled and not distributed:  # the other ranks wait for this answer
                    broadcast_object(self.dist, f"rank 0 failed in stage '{name}': {err}")
                raise
            broadcast_object(self.dist, None)
        return record

    def _follow(self, name: str, stage_type: str, key: str, inputs: dict[str, Any], refs: dict[str, Any],
                fn: Callable[[StageContext], StageOutput], distributed: bool) -> StageRecord:
        """A non-zero rank: take part in a distributed stage (files to a scratch folder), then read rank 0's."""
        if distributed:
            scratch = Path(tempfile.mkdtemp(prefix=f"compressor-rank{self.dist.rank}-"))
            try:
                fn(self._context(name, key, scratch, inputs, refs, distributed=True))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        failure = broadcast_object(self.dist, None)
        if failure is not None:
            raise CompressorError(failure)
        return self._saved_record(name, stage_type, key, False)

    def _run_stage(self, name: str, stage_type: str, key: str, inputs: dict[str, Any], refs: dict[str, Any],
                   config: dict[str, Any], fn: Callable[[StageContext], StageOutput],
                   distributed: bool) -> StageRecord:
        done = self.cache_root / key
        marker = done / "stage.json"
        tmp = self.cache_root / f"{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ctx = self._context(name, key, tmp, inputs, refs, distributed)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        self.log(f"{name} ({stage_type}): running" + (f" on {self.dist.world_size} ranks"
                                                       if distributed and self.dist.enabled else ""))
        start = time.perf_counter()
        chatter = ctx.work_dir / CHATTER_LOG
        try:
            if self.verbose:
                output = fn(ctx)
            else:
                with third_party_output_to(chatter) as console:
                    ctx.log = console.ours(ctx.log)
                    output = fn(ctx)
            seconds = time.perf_counter() - start
            if chatter.exists():  # the third-party output joins the stage's folder in the cache
                shutil.move(chatter, tmp / CHATTER_LOG)
            own = output.artifact.id == key
            files = _file_records(tmp if own else self.cache_root / output.artifact.folder, output.artifact)
            write_json(tmp / "stage.json", {
                "name": name, "type": stage_type, "key": key, "config": config,
                "inputs": {f: [a.id for a in v] if isinstance(v, list) else v.id for f, v in inputs.items()},
                "artifact": output.artifact.model_dump(mode="json"), "metrics": output.metrics, "files": files,
                "seconds": seconds, "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "compressor": __version__,
            })
            try:
                os.rename(tmp, done)
            except OSError:
                if not marker.exists():  # lost a race only if the other writer finished
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            if chatter.exists() and chatter.stat().st_size:
                self.log(f"{name} ({stage_type}): what converters and runtimes printed is in {chatter}")
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                # a library writing its file hit a full disk: the user's problem, not an internal error
                msg = (f"could not write {err.filename or tmp}: {err.strerror}; free space or choose another "
                       "output folder (finished stages are kept)")
                raise CompressorError(msg) from err
            raise
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
        self.log(f"{name} ({stage_type}): done in {seconds:.1f} s")
        return StageRecord(name, stage_type, key, False, seconds, output.artifact, output.metrics, files)

    def manifest(self, status: str, error: str | None = None) -> dict[str, Any]:
        return {
            "compressor": __version__,
            "status": status,
            "error": error,
            "started": self.started,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "recipe_file": self.recipe.source,
            "recipe": self.recipe.resolved(),
            "environment": environment(self.threads) | {"device": self.device.type},
            "data": self._data.describe() if self._data is not None else None,
            "cache_dir": os.path.relpath(self.cache_root, self.out_dir),
            "stages": [r.to_json(self.out_dir, self.cache_root) for r in self.records],
        }

    def _write_manifest(self, status: str, error: str | None = None) -> Path:
        path = self.out_dir / "manifest.json"
        if self.dist.is_main:
            write_json(path, self.manifest(status, error))
        return path

    def _seen(self, record: StageRecord) -> None:
        if self.on_stage is not None and self.dist.is_main:
            self.on_stage(record)

    def run(self) -> RunResult:
        from compressor.report.render import write_report

        main = self.dist.is_main
        if main:
            check_output_folder(self.out_dir, "output folder")
        with process_group(self.dist, self.device), \
                output_lock(self.out_dir) if main else contextlib.nullcontext():
            if main:
                check_output_folder(self.cache_root, "cache_dir")
                self.cache_root.mkdir(parents=True, exist_ok=True)
                if removed := remove_stale_temporaries(self.cache_root):
                    self.log(f"removed {removed} half-written stage folder(s) left by an interrupted run")
            barrier(self.dist)
            # Ranks on one CPU share its cores; rank 0 alone runs the stages that measure speed.
            threads = self.threads
            if self.dist.enabled and self.device.type == "cpu":
                threads = max(1, self.threads // self.dist.world_size)
            torch.set_num_threads(threads)
            artifacts: dict[str, Artifact] = {}
            try:
                source = self._execute(
                    SOURCE_STAGE, "source", self._source_key(), {}, {},
                    self.recipe.model.model_dump(mode="json"), self._run_source,
                )
                self.records.append(source)
                self._seen(source)
                artifacts[SOURCE_STAGE] = source.artifact
                for stage in self.recipe.stages:
                    inputs = {
                        f: [artifacts[n] for n in v] if isinstance(v, list) else artifacts[v]
                        for f, v in stage.refs.items()
                    }
                    key = self.stage_key(stage, inputs)

                    def call(ctx: StageContext, stage: Stage = stage) -> StageOutput:
                        return get_stage(stage.type, self.registry).run(stage.config, ctx)

                    try:
                        record = self._execute(stage.name, stage.type, key, inputs, stage.refs,
                                               stage.config.model_dump(mode="json"), call, stage.entry.distributed)
                    except CompressorError as err:
                        if isinstance(err, StageError):
                            raise
                        raise StageError(stage.name, str(err)) from err
                    self.records.append(record)
                    self._seen(record)
                    artifacts[stage.name] = record.artifact
                    self._write_manifest("running")
            except BaseException as err:
                status = ("interrupted" if isinstance(err, KeyboardInterrupt)
                          else "stopped" if isinstance(err, RunStopped) else "failed")
                self._write_manifest(status, str(err) or type(err).__name__)
                raise
            manifest_path = self._write_manifest("complete")
            report_path = self.out_dir / "report.md"
            if main:
                report_path = write_report(self.out_dir)
            barrier(self.dist)
        return RunResult(self.out_dir, manifest_path, report_path, self.records)


def run_recipe(recipe: Recipe, log: Callable[[str], None] = print, show_progress: bool | None = None,
               registry: Mapping[str, StageEntry] = STAGES, verbose: bool = False) -> RunResult:
    """Run ``recipe``; return where its manifest and report are. ``verbose`` keeps what third-party code
    prints on the console (default: each stage's ``stage.log``)."""
    return Engine(recipe, log=log, show_progress=show_progress, registry=registry, verbose=verbose).run()


@dataclass
class SeedsResult:
    """Runs of one recipe under several seeds: each seed's run, and the summary over them."""

    output_dir: Path
    runs: dict[int, RunResult]
    summary_path: Path
    table_path: Path


def seed_recipe(recipe: Recipe, seed: int) -> Recipe:
    """``recipe`` under ``seed``: its own run folder ``<output>/seeds/seed-<seed>``, the recipe's cache.

    The seed joins every stage's cache key, so a seed already run is reused stage by stage, and the
    recipe's own seed reuses a plain run's stages (same cache folder).
    """
    settings = recipe.settings.model_copy(update={
        "seed": seed, "output": recipe.output_dir / "seeds" / f"seed-{seed}", "cache_dir": recipe.cache_root})
    return Recipe(settings=settings, stages=recipe.stages, source=recipe.source)


def run_seeds(recipe: Recipe, count: int, log: Callable[[str], None] = print, show_progress: bool | None = None,
              registry: Mapping[str, StageEntry] = STAGES, verbose: bool = False) -> SeedsResult:
    """Run ``recipe`` under ``count`` seeds (its seed, seed + 1, ...) one after another, then write
    ``seeds.json`` and ``seeds.md`` (mean ± std and per-seed values of every metric) in its run folder."""
    import json

    from compressor.core.artifacts import write_text
    from compressor.report.seeds import seed_summary, seeds_table

    if count < 1:
        msg = f"--seeds must be at least 1 (got {count})"
        raise CompressorError(msg)
    runs: dict[int, RunResult] = {}
    for seed in range(recipe.seed, recipe.seed + count):
        log(f"seed {seed} ({seed - recipe.seed + 1} of {count})")
        runs[seed] = run_recipe(seed_recipe(recipe, seed), log=log, show_progress=show_progress, registry=registry,
                                verbose=verbose)
    summary = seed_summary({s: json.loads(r.manifest_path.read_text()) for s, r in runs.items()})
    out = recipe.output_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "seeds.json", summary)
    write_text(out / "seeds.md", f"# {recipe.name} under {count} seeds\n\n" + seeds_table(summary))
    return SeedsResult(out, runs, out / "seeds.json", out / "seeds.md")
