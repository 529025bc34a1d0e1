"""Release bundles: their layout, files and manifest, written atomically (``compressor.releasing`` runs the recipe).

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
from pathlib import Path
from typing import Any

import numpy as np

from compressor.core import readers
from compressor.core.artifacts import sha256_file, write_json
from compressor.errors import BundleError, CompressorError
from compressor.release.gates import GateResult, row_target

BUNDLE_FORMAT = 1
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


@dataclass
class ReleaseResult:
    bundle: Path
    results: list[GateResult]
    releasable: bool
    manifest_sha256: str


def read_bundle_manifest(bundle: Path, what: str = "bundle") -> dict[str, Any]:
    """The manifest of a bundle folder, its shape checked; a missing, foreign or damaged one is a BundleError."""
    return readers.read_bundle_manifest(bundle, BUNDLE_FORMAT, what)


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


def copy_artifact(stage: dict[str, Any], cache_root: Path, dest: Path, root: Path) -> dict[str, Any]:
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


def stage_created(cache_root: Path, key: str) -> str | None:
    """When a cached stage was made (a reused benchmark measured then, maybe on another machine)."""
    try:
        return str(json.loads((cache_root / key / "stage.json").read_text()).get("created"))
    except (OSError, json.JSONDecodeError):
        return None


def file_list(root: Path) -> list[dict[str, Any]]:
    return [{"path": p.relative_to(root).as_posix(), "sha256": sha256_file(p), "size": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"]


def markdown_benchmark(rows: list[dict[str, Any]]) -> str:
    from compressor.report.tables import markdown_table

    parts = []
    for bench in dict.fromkeys(r["bench"] for r in rows):
        mine = [r for r in rows if r["bench"] == bench]
        parts.append(f"## {bench}\n\n" + markdown_table(mine))
    return "# Benchmark\n\n" + ("\n".join(parts) if parts else "No benchmark rows.\n")


def check_replaceable(dest: Path, force: bool) -> None:
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
        manifest["files"] = file_list(tmp)
        write_json(tmp / "manifest.json", manifest)
        digest = sha256_file(tmp / "manifest.json")
        if dest.exists():
            check_replaceable(dest, force)
            os.rename(dest, old)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not dest.exists():
            os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return digest
