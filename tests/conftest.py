"""Shared fixtures: tiny data sets and recipes that write only under tmp_path."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from compressor.core.data import FASHION_MNIST_DIR

REPO = Path(__file__).resolve().parent.parent

needs_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="embedded data missing: run 'make data' (apt-get install dataset-fashion-mnist)",
)


def make_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 20, val: bool = True,
                      seed: int = 0) -> Path:
    """A small ImageFolder of PNG files whose classes differ by brightness (learnable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val") if val else ("train",):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = 40 + c * 160 // max(1, classes - 1)
                arr = np.clip(rng.normal(base, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"img_{i}.png")
    return root


TINY_RECIPE: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "threads": 1,
    "data": {"source": "fashion-mnist", "train_per_class": 20, "val_per_class": 10, "batch_size": 32,
             "preprocess": {"channels": 1, "mean": [0.286], "std": [0.353]}},
    "model": {"entry_point": "tests.tinynet:tiny_cnn"},
    "stages": [
        {"name": "teacher", "type": "train", "epochs": 1, "lr": 0.05},
        {"name": "evaluate", "type": "evaluate"},
        {"name": "onnx", "type": "export_onnx"},
        {"name": "bench", "type": "benchmark", "inputs": ["teacher", "onnx"], "min_iters": 5,
         "time_budget_s": 0.05, "warmup": 1},
    ],
}


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> dict[str, Any]:
    doc = copy.deepcopy(TINY_RECIPE)
    doc["output"] = str(tmp_path / "run")
    return doc


def write_recipe(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running the CLI in a subprocess with the tests package importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PYTHON = sys.executable


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked slow run only when selected with -m (e.g. ``pytest -m slow``)."""
    if config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow: select with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
