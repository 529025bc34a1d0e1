"""``compressor verify``: can a consumer trust a release bundle it downloaded?

Two checks: every file matches the sha256 the manifest records (and no file was added), and every
shipped artifact still scores the recorded accuracy on the recorded slice of the recorded data, run
on the same runtime backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from compressor.core.artifacts import sha256_file
from compressor.core.data import DataModule
from compressor.errors import (
    BackendError,
    BundleError,
    CompressorError,
    DataError,
    MissingExtraError,
    VerifyFailed,
)
from compressor.release.bundle import array_sha256, read_bundle_manifest


@dataclass
class VerifyReport:
    files: int = 0
    accuracy: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def file_problems(bundle: Path, manifest: dict[str, Any]) -> list[str]:
    """One line per file that is missing, changed, outside the bundle, or not listed."""
    problems = []
    listed = set()
    for rec in manifest.get("files", []):
        rel = PurePosixPath(str(rec.get("path", "")))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            problems.append(f"{rel}: path leaves the bundle; the manifest is not trustworthy")
            continue
        listed.add(rel.as_posix())
        path = bundle / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != rec.get("sha256"):
            problems.append(f"{rel}: sha256 differs from the manifest (the file changed after the release)")
    for path in sorted(bundle.rglob("*")):
        rel_name = path.relative_to(bundle).as_posix()
        if path.is_file() and rel_name != "manifest.json" and rel_name not in listed:
            problems.append(f"{rel_name}: not listed in the manifest (added after the release)")
    return problems


def _first(err: ValidationError) -> str:
    first = err.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def _embedding_task(manifest: dict[str, Any]) -> Any:
    from compressor.core.config import EmbeddingConfig
    from compressor.metrics.evaluation import Task

    recipe = manifest["recipe"]
    try:
        emb = EmbeddingConfig.model_validate(recipe.get("embedding") or {})
    except ValidationError as err:
        msg = f"the bundle's manifest.json records embedding settings that do not validate: {_first(err)}"
        raise BundleError(msg) from None
    seed = emb.split_seed if emb.split_seed is not None else int(recipe["seed"])
    return Task(kind="embedding", embedding=emb, seed=seed)


def _load_data(manifest: dict[str, Any], data_path: Path | None) -> DataModule:
    from compressor.core.config import DataConfig
    from compressor.core.data import load_data

    settings = dict(manifest["recipe"]["data"])
    if data_path is not None:
        settings["path"] = str(data_path)
    try:
        config = DataConfig.model_validate(settings)
    except ValidationError as err:
        msg = f"the bundle's manifest.json records data settings that do not validate: {_first(err)}"
        raise BundleError(msg) from None
    try:
        return load_data(config, int(manifest["recipe"]["seed"]), open_set=manifest["recipe"].get("task") == "embedding")
    except DataError as err:
        msg = f"cannot re-create the recorded data slice: {err}. Pass the data's folder with --data"
        raise DataError(msg) from err


def verify_bundle(bundle: Path, *, data_path: Path | None = None, tolerance: float = 0.5, threads: int = 1,
                  accuracy: bool = True, expect_sha256: str | None = None,
                  log: Callable[[str], None] = print, backends: Mapping[str, Any] | None = None) -> VerifyReport:
    """Check ``bundle``; raise :class:`VerifyFailed` naming each file or artifact that does not match.

    Args:
        tolerance: largest accepted top-1 difference from the recorded value, in points.
        accuracy: False checks only the hashes.
        expect_sha256: the manifest's own sha256 as ``release`` printed it; without it, a bundle whose
            files and manifest were changed together passes the hash check.
        backends: the backend table (default :data:`compressor.runtime.backends.BACKENDS`).
    """
    from compressor.export.agreement import run_batched
    from compressor.metrics.classification import classification_metrics
    from compressor.runtime.backends import BACKENDS, RuntimeOptions, get_backend

    table = BACKENDS if backends is None else backends
    manifest = read_bundle_manifest(bundle)
    if expect_sha256 is not None and sha256_file(bundle / "manifest.json") != expect_sha256.lower():
        msg = (f"manifest.json of {bundle} has sha256 {sha256_file(bundle / 'manifest.json')}, not the expected "
               f"{expect_sha256}: the manifest changed after the release")
        raise VerifyFailed(msg)
    report = VerifyReport(files=len(manifest.get("files", [])))
    problems = file_problems(bundle, manifest)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        msg = f"bundle {bundle} does not match its manifest:\n{lines}"
        raise VerifyFailed(msg)
    if not manifest.get("releasable"):
        failed = [g["gate"] + " on " + g["artifact"] for g in manifest.get("gates", []) if g["status"] == "fail"]
        msg = f"bundle {bundle} is marked not releasable: gate(s) failed: {', '.join(failed)} (see gates.md)"
        raise VerifyFailed(msg)
    if not accuracy:
        return report
    artifacts = {a["stage"]: a for a in manifest["artifacts"]}
    checks = manifest.get("accuracy_checks", [])
    if not checks:
        return report
    data = _load_data(manifest, data_path)
    failures = []
    for check in checks:
        art = artifacts[check["stage"]]
        images, labels = data.val_arrays(check["images"])
        if array_sha256(labels.astype("int64")) != check["labels_sha256"]:
            msg = (f"the data slice for {check['stage']} differs from the release's ({check['images']} images, "
                   "labels differ): this is not the data the release was measured on; pass it with --data")
            raise DataError(msg)
        if array_sha256(images.astype("float32")) != check["images_sha256"]:
            report.warnings.append(f"{check['stage']}: preprocessed images differ bitwise from the release's "
                                   "(another image library version?); accuracy is compared anyway")
        first = next(iter(art["files"].values()))
        try:
            session = get_backend(check["backend"], table).load(bundle / first, art["meta"],
                                                         RuntimeOptions(threads=threads))
        except (MissingExtraError, BackendError) as err:
            msg = f"cannot re-run {check['stage']} ({art['format']}/{art['precision']}) on {check['backend']}: {err}"
            raise CompressorError(msg) from err
        logits = run_batched(session.run, images, session.batch_sizes())
        metric = check.get("metric", "top1")
        if metric == "top1":
            top1 = classification_metrics(logits, labels, len(manifest["data"]["classes"]))["top1"]
            label = "top-1"
        else:  # an embedding model: the same retrieval split and distance as the release measured
            top1, label = float(_embedding_task(manifest).score(logits, labels)[metric]), metric
        line = (f"{check['stage']} {art['format']}/{art['precision']} on {check['backend']}: {label} {top1:.2f}% "
                f"on {len(labels)} images (recorded {check[metric]:.2f}%)")
        log(f"verify: {line}")
        report.accuracy.append(line)
        if abs(top1 - float(check[metric])) > tolerance:
            failures.append(f"  {line}: differs by more than {tolerance} pt")
    if failures:
        msg = f"bundle {bundle} does not reproduce its accuracy:\n" + "\n".join(failures)
        raise VerifyFailed(msg)
    return report
