"""``compressor release``: run a recipe, check its gates, write a release bundle.

Layout of a bundle (default ``runs/<name>/releases/<version>``)::

    manifest.json         sha256 of every other file, versions, environment, resolved recipe,
                          measurements, gate results, accuracy checks for verify, releasable
    model_card.md         intended use, data, preprocessing, classes, accuracy and latency per target,
                          limitations, compression history, gates
    gates.md              the gate table
    benchmark.md/.json    the benchmark rows the gates read
    recipe.yaml           the recipe file as given
    artifacts/<stage>/    the deployable files of each shipped stage

The bundle is written into a temporary folder beside its destination and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from compressor import __version__
from compressor.artifacts import sha256_file, write_json, write_text
from compressor.card import compression_history, render_card
from compressor.errors import BundleError, CompressorError
from compressor.gates import GateResult, evaluate_gates, gate_table, row_target
from compressor.recipe import Recipe

BUNDLE_FORMAT = 1
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


@dataclass
class ReleaseResult:
    bundle: Path
    results: list[GateResult]
    releasable: bool
    manifest_sha256: str


def read_bundle_manifest(bundle: Path, what: str = "bundle") -> dict[str, Any]:
    """The manifest of a bundle folder; a missing or foreign folder is a :class:`BundleError`."""
    path = bundle / "manifest.json"
    if not bundle.is_dir():
        msg = f"{what} {bundle} is not a folder; pass the folder a release wrote (it holds manifest.json)"
        raise BundleError(msg)
    if not path.is_file():
        msg = f"{what} {bundle} has no manifest.json; pass the folder a release wrote"
        raise BundleError(msg)
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        msg = f"{path} is not valid JSON ({err}); the {what} is damaged"
        raise BundleError(msg) from err
    if not isinstance(manifest, dict) or manifest.get("bundle_format") != BUNDLE_FORMAT:
        msg = f"{path} is not a release manifest of format {BUNDLE_FORMAT}; pass a bundle written by compressor release"
        raise BundleError(msg)
    return manifest


def benchmark_rows(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every benchmark row of a run manifest's stages, with ``bench`` (the stage) and ``target``."""
    rows = []
    for st in stages:
        for row in (st.get("metrics") or {}).get("rows") or []:
            if isinstance(row, dict) and "stage" in row:
                rows.append({**row, "bench": st["name"], "target": row_target(row)})
    return rows


def artifact_sizes(stages: list[dict[str, Any]]) -> dict[str, int]:
    return {st["name"]: sum(int(f["size"]) for f in st.get("files", [])) for st in stages}


def array_sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def accuracy_checks(recipe: Recipe, rows: list[dict[str, Any]], shipped: list[str]) -> list[dict[str, Any]]:
    """What verify re-runs: one check per shipped artifact and backend, on the slice the benchmark used."""
    from compressor.data import load_data

    # classifiers re-check top-1; embedding models the recipe's retrieval metric (rank1 or map)
    metric = recipe.embedding.metric if recipe.task == "embedding" and recipe.embedding is not None else "top1"
    checks: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in rows:
        if row["stage"] in shipped and row.get("status") == "ok" and row.get(metric) is not None:
            key = (row["stage"], row["backend"], int(row["accuracy_images"]))
            check = {"stage": row["stage"], "backend": row["backend"], "images": key[2], metric: row[metric],
                     "bench": row["bench"]}
            if metric != "top1":
                check["metric"] = metric
            checks.setdefault(key, check)
    if checks:
        data = load_data(recipe.data, recipe.seed, open_set=recipe.task == "embedding")
        for check in checks.values():
            images, labels = data.val_arrays(check["images"])
            check["images"] = int(len(labels))
            check["labels_sha256"] = array_sha256(labels.astype(np.int64))
            check["images_sha256"] = array_sha256(images.astype(np.float32))
    return list(checks.values())


def _copy_artifact(stage: dict[str, Any], cache_root: Path, dest: Path, root: Path) -> dict[str, Any]:
    art = stage["artifact"]
    files = {}
    for rec in stage["files"]:
        # An artifact's folder is named by its id (a measuring stage passes its input's artifact on).
        src = cache_root / art["id"] / rec["name"]
        target = dest / rec["name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        files[rec["role"]] = target.relative_to(root).as_posix()
    meta = art.get("meta", {})
    return {"stage": stage["name"], "kind": art["kind"], "id": art["id"],
            "format": meta.get("format", art["kind"]), "precision": meta.get("precision", "fp32"),
            "files": files, "meta": meta}


def _created(cache_root: Path, key: str) -> str | None:
    """When a cached stage was made (a reused benchmark measured then, maybe on another machine)."""
    try:
        return str(json.loads((cache_root / key / "stage.json").read_text()).get("created"))
    except (OSError, json.JSONDecodeError):
        return None


def _file_list(root: Path) -> list[dict[str, Any]]:
    return [{"path": p.relative_to(root).as_posix(), "sha256": sha256_file(p), "size": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"]


def _markdown_benchmark(rows: list[dict[str, Any]]) -> str:
    from compressor.stages.benchmark import markdown_table

    parts = []
    for bench in dict.fromkeys(r["bench"] for r in rows):
        mine = [r for r in rows if r["bench"] == bench]
        parts.append(f"## {bench}\n\n" + markdown_table(mine))
    return "# Benchmark\n\n" + ("\n".join(parts) if parts else "No benchmark rows.\n")


def bundle_path(recipe: Recipe, version: str, out: Path | None) -> Path:
    if not VERSION_PATTERN.match(version):
        msg = (f'--version "{version}" is not a usable version: use letters, digits, ".", "_", "+", "-" '
               "(up to 64 characters, starting with a letter or digit), e.g. 1.4.0")
        raise CompressorError(msg)
    return out if out is not None else recipe.output_dir / "releases" / version


def _check_replaceable(dest: Path, force: bool) -> None:
    """A releasable bundle is replaced only with ``force``; the evidence of a failed release always is."""
    if not dest.exists() or force:
        return
    try:
        replaceable = read_bundle_manifest(dest).get("releasable") is False
    except BundleError:
        replaceable = False
    if not replaceable:
        msg = f"{dest} already exists; choose another --version or --out, or pass --force to replace it"
        raise CompressorError(msg)


def write_bundle(dest: Path, build: Callable[[Path], dict[str, Any]], force: bool) -> str:
    """Build a bundle in a temporary folder beside ``dest``, then rename it into place.

    ``build(tmp)`` writes every file except the manifest and returns the manifest; the file list with
    hashes is added here. Returns the manifest's sha256.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    try:
        manifest = build(tmp)
        manifest["files"] = _file_list(tmp)
        write_json(tmp / "manifest.json", manifest)
        digest = sha256_file(tmp / "manifest.json")
        if dest.exists():
            _check_replaceable(dest, force)
            os.rename(dest, old)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not dest.exists():
            os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return digest


def make_release(recipe: Recipe, version: str, *, out: Path | None = None, baseline: Path | None = None,
                 force: bool = False, log: Callable[[str], None] = print,
                 show_progress: bool | None = None) -> ReleaseResult:
    """Run ``recipe`` (reusing cached stages), evaluate its gates, and write the bundle.

    Raises:
        CompressorError: bad input (no gates, bad version, unreadable baseline, existing bundle).
    """
    from compressor.engine import run_recipe

    if recipe.gates is None:
        msg = (f"recipe {recipe.source} declares no gates; a release needs a 'gates:' section "
               "(see the README section on releases)")
        raise CompressorError(msg)
    dest = bundle_path(recipe, version, out)
    _check_replaceable(dest, force)
    base_manifest = read_bundle_manifest(baseline, "baseline") if baseline is not None else None
    gates = recipe.gates

    result = run_recipe(recipe, log=log, show_progress=show_progress)
    run = json.loads(result.manifest_path.read_text())
    stages = run["stages"]
    rows = benchmark_rows(stages)
    results = evaluate_gates(gates, rows, artifact_sizes(stages),
                             base_manifest.get("measurements", []) if base_manifest is not None else None)
    releasable = all(r.status != "fail" for r in results)
    shipped = gates.shipped()
    by_name = {st["name"]: st for st in stages}
    resolved = recipe.resolved()

    def build(tmp: Path) -> dict[str, Any]:
        artifacts = []
        for name in shipped:
            artifacts.append(_copy_artifact(by_name[name], recipe.cache_root, tmp / "artifacts" / name, tmp))
        write_json(tmp / "benchmark.json", {"rows": rows})
        write_text(tmp / "benchmark.md", _markdown_benchmark(rows))
        write_text(tmp / "gates.md", f"# Release gates: {recipe.name} {version}\n\n" + gate_table(results))
        src = Path(recipe.source)
        if src.is_file():
            shutil.copy2(src, tmp / "recipe.yaml")
        manifest: dict[str, Any] = {
            "bundle_format": BUNDLE_FORMAT,
            "name": recipe.name,
            "version": version,
            "releasable": releasable,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "compressor": __version__,
            "environment": run["environment"],
            "recipe_file": recipe.source,
            "recipe": resolved,
            "data": run.get("data"),
            "artifacts": artifacts,
            "measurements": rows,
            "gates": [r.to_json() for r in results],
            "accuracy_checks": accuracy_checks(recipe, rows, shipped),
            "history": {name: compression_history(stages, resolved["stages"], rows, name) for name in shipped},
            "stages": [{**{k: st[k] for k in ("name", "type", "key", "reused", "seconds")},
                        "created": _created(recipe.cache_root, st["key"])} for st in stages],
            "baseline": None if base_manifest is None or baseline is None else {
                "path": str(baseline), "version": base_manifest.get("version"),
                "manifest_sha256": sha256_file(baseline / "manifest.json"),
            },
        }
        write_text(tmp / "model_card.md", render_card(manifest))
        return manifest

    digest = write_bundle(dest, build, force)
    return ReleaseResult(dest, results, releasable, digest)
