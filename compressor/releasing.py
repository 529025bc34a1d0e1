"""``compressor release``: run a recipe (reusing cached stages), check its gates, write a release bundle.

The bundle's layout and writing are in :mod:`compressor.release.bundle`; this module ties the recipe, the
engine and the gates together, above all of them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from compressor import __version__
from compressor.core.artifacts import sha256_file, write_json, write_text
from compressor.engine import run_recipe
from compressor.errors import CompressorError
from compressor.recipe import Recipe
from compressor.registry import STAGES, StageEntry
from compressor.release.bundle import (
    BUNDLE_FORMAT,
    VERSION_PATTERN,
    ReleaseResult,
    array_sha256,
    artifact_sizes,
    benchmark_rows,
    check_replaceable,
    copy_artifact,
    markdown_benchmark,
    read_bundle_manifest,
    stage_created,
    write_bundle,
)
from compressor.release.card import compression_history, render_card
from compressor.release.gates import combine_seeds, evaluate_gates, gate_table


def accuracy_checks(recipe: Recipe, rows: list[dict[str, Any]], shipped: list[str]) -> list[dict[str, Any]]:
    """What verify re-runs: one check per shipped artifact and backend, on the slice the benchmark used."""
    from compressor.core.data import load_data

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


def bundle_path(recipe: Recipe, version: str, out: Path | None) -> Path:
    if not VERSION_PATTERN.match(version):
        msg = (f'--version "{version}" is not a usable version: use letters, digits, ".", "_", "+", "-" '
               "(up to 64 characters, starting with a letter or digit), e.g. 1.4.0")
        raise CompressorError(msg)
    return out if out is not None else recipe.output_dir / "releases" / version


def make_release(recipe: Recipe, version: str, *, out: Path | None = None, baseline: Path | None = None,
                 force: bool = False, log: Callable[[str], None] = print,
                 show_progress: bool | None = None, registry: Mapping[str, StageEntry] = STAGES,
                 verbose: bool = False) -> ReleaseResult:
    """Run ``recipe`` (reusing cached stages), evaluate its gates, and write the bundle.

    Raises:
        CompressorError: bad input (no gates, bad version, unreadable baseline, existing bundle).
    """
    if recipe.gates is None:
        msg = (f"recipe {recipe.source} declares no gates; a release needs a 'gates:' section "
               "(see the README section on releases)")
        raise CompressorError(msg)
    dest = bundle_path(recipe, version, out)
    check_replaceable(dest, force)
    base_manifest = read_bundle_manifest(baseline, "baseline") if baseline is not None else None
    gates = recipe.gates

    base_rows = base_manifest.get("measurements", []) if base_manifest is not None else None
    seeds: dict[str, Any] | None = None
    if recipe.seeds is not None:
        # every seed's run decides the gates (over_seeds); the recipe's own seed's artifacts ship
        from compressor.engine import run_seeds

        runs = run_seeds(recipe, recipe.seeds, log=log, show_progress=show_progress, registry=registry,
                         verbose=verbose)
        by_seed = {s: json.loads(r.manifest_path.read_text()) for s, r in runs.runs.items()}
        run = by_seed[recipe.seed]
        results = combine_seeds(gates, {s: evaluate_gates(gates, benchmark_rows(m["stages"]),
                                                          artifact_sizes(m["stages"]), base_rows)
                                        for s, m in by_seed.items()})
        seeds = {"seeds": sorted(by_seed), "shipped_seed": recipe.seed,
                 "summary": json.loads(runs.summary_path.read_text())["entries"]}
    else:
        result = run_recipe(recipe, log=log, show_progress=show_progress, registry=registry, verbose=verbose)
        run = json.loads(result.manifest_path.read_text())
    run_stages = run["stages"]
    rows = benchmark_rows(run_stages)
    if seeds is None:
        results = evaluate_gates(gates, rows, artifact_sizes(run_stages), base_rows)
    releasable = all(r.status != "fail" for r in results)
    shipped = gates.shipped()
    by_name = {st["name"]: st for st in run_stages}
    resolved = recipe.resolved()

    def build(tmp: Path) -> dict[str, Any]:
        artifacts = []
        for name in shipped:
            artifacts.append(copy_artifact(by_name[name], recipe.cache_root, tmp / "artifacts" / name, tmp))
        write_json(tmp / "benchmark.json", {"rows": rows})
        write_text(tmp / "benchmark.md", markdown_benchmark(rows))
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
            # how the gates decided: the recipe's default mode (each result names its own) and the level
            "decide": {"default": gates.decide, "confidence": gates.confidence, "over_seeds": gates.over_seeds},
            "seeds": seeds,
            "accuracy_checks": accuracy_checks(recipe, rows, shipped),
            "history": {name: compression_history(run_stages, resolved["stages"], rows, name) for name in shipped},
            "stages": [{**{k: st[k] for k in ("name", "type", "key", "reused", "seconds")},
                        "created": stage_created(recipe.cache_root, st["key"])} for st in run_stages],
            "baseline": None if base_manifest is None or baseline is None else {
                "path": str(baseline), "version": base_manifest.get("version"),
                "manifest_sha256": sha256_file(baseline / "manifest.json"),
            },
        }
        write_text(tmp / "model_card.md", render_card(manifest))
        return manifest

    digest = write_bundle(dest, build, force)
    return ReleaseResult(dest, results, releasable, digest)
