"""Runs under several seeds: the cache is reused seed by seed, metrics come as mean ± std, gates combine."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from compressor.cli import main
from tests.conftest import needs_fmnist, write_recipe


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


@needs_fmnist
def test_seeds_reuse_the_cache_for_unchanged_seeds(tiny_recipe: dict[str, Any], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    tiny_recipe["gates"] = {"teacher": "teacher", "checks": [
        {"type": "max_top1_drop", "artifacts": ["onnx"], "max_drop": 1.0},  # over_seeds: worst (default)
        {"type": "min_accuracy", "artifacts": ["onnx"], "min": 1, "over_seeds": "mean"},
    ]}
    path = write_recipe(tmp_path / "tiny.yaml", tiny_recipe)
    run = Path(tiny_recipe["output"])
    assert main(["run", str(path), "--seeds", "2", "--quiet"]) == 0
    first = {s: manifest(run / "seeds" / f"seed-{s}") for s in (0, 1)}
    assert not any(st["reused"] for st in first[1]["stages"])
    keys = {s: {st["name"]: st["key"] for st in m["stages"]} for s, m in first.items()}
    assert keys[0]["teacher"] != keys[1]["teacher"]  # the seed joins the cache key
    capsys.readouterr()

    tiny_recipe["seeds"] = 3  # the recipe's seeds: the same as --seeds 3
    assert main(["run", str(write_recipe(path, tiny_recipe)), "--quiet"]) == 0
    out = capsys.readouterr().out
    for seed in (0, 1):
        again = manifest(run / "seeds" / f"seed-{seed}")
        assert all(st["reused"] for st in again["stages"]), seed
        assert {st["name"]: st["key"] for st in again["stages"]} == keys[seed]
    assert not any(st["reused"] for st in manifest(run / "seeds" / "seed-2")["stages"])
    assert "seed 0: 5 stages (5 reused)" in out and "seed 2: 5 stages (0 reused)" in out

    summary = json.loads((run / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    top1 = next(e for e in summary["entries"] if e["stage"] == "onnx" and e["metric"] == "top1")
    values = [top1["values"][str(s)] for s in (0, 1, 2)]
    assert top1["mean"] == pytest.approx(statistics.mean(values), abs=1e-4)
    assert top1["std"] == pytest.approx(statistics.stdev(values), abs=1e-4)
    assert "| mean ± sd | seed 0 | seed 1 | seed 2 |" in out

    gates = json.loads((run / "gates.json").read_text())
    assert [len(g["seeds"]) for g in gates] == [3, 3]
    worst, mean = gates
    assert worst["note"].startswith("over_seeds: worst (seed ")
    assert mean["measured"].endswith("(mean of 3 seeds, sd " + mean["measured"].rsplit("sd ", 1)[1])
    assert mean["value"] == pytest.approx(statistics.mean(values), abs=1e-3)

    # a release of the recipe with seeds: gates over every seed (all reused), the recipe seed's files ship
    assert main(["release", str(path), "--version", "1.0.0", "--quiet"]) == 0
    bundle = json.loads((run / "releases/1.0.0/manifest.json").read_text())
    assert bundle["seeds"]["seeds"] == [0, 1, 2] and bundle["seeds"]["shipped_seed"] == 0
    assert [len(g["seeds"]) for g in bundle["gates"]] == [3, 3]
    assert [a["id"] for a in bundle["artifacts"]] == [keys[0]["onnx"]]
