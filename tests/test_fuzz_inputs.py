"""Fuzzing what users hand over: never an internal error, never a traceback.

Hypothesis (fixed seed: ``derandomize=True``; few examples, so each property takes seconds) feeds random,
truncated and byte-flipped files to the readers, to ``compressor bench`` and ``compressor verify`` and to
the checkpoint loader through ``compressor run`` (``cli.main`` in this process), and mutated recipe
documents (keys given twice, values of the wrong type, lines dropped, text cut) to ``compressor validate``.
Each call must end in success or in a clear error (exit 1 or 2, one ``error:`` message); ``COUNTS`` tallies
the examples per reader and how they ended (printed at the end of the module with ``-s``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.cli import main
from compressor.core import readers
from compressor.errors import CompressorError
from tests.conftest import make_image_folder, write_recipe
from tests.tinynet import tiny_cnn

COUNTS: Counter[tuple[str, str]] = Counter()


def fuzz(examples: int) -> Any:
    return settings(derandomize=True, max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# A mutation of a file's bytes: cut it, flip bits, overwrite bytes, or replace it with random bytes.
MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 0.999)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 0.999), st.integers(0, 7)), min_size=1, max_size=6)),
    st.tuples(st.just("overwrite"), st.floats(0, 0.999), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("random"), st.binary(max_size=300)),
)


def mutate(data: bytes, mutation: tuple[Any, ...]) -> bytes:
    kind = mutation[0]
    if kind == "truncate":
        return data[: int(len(data) * mutation[1])]
    if kind == "flip":
        out = bytearray(data)
        for where, bit in mutation[1]:
            out[int(len(out) * where)] ^= 1 << bit
        return bytes(out)
    if kind == "overwrite":
        at = int(len(data) * mutation[1])
        return data[:at] + mutation[2] + data[at + len(mutation[2]):]
    return bytes(mutation[1])


def cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue()


def clear(reader: str, code: int, err: str, allowed: tuple[int, ...] = (0, 2)) -> None:
    """The property: success or one clear error; record how it ended."""
    assert "internal error" not in err and "Traceback" not in err, err
    assert code in allowed, (code, err)
    if code:
        assert err.count("error: ") >= 1, err
    COUNTS[(reader, "ok" if code == 0 else f"exit {code}")] += 1


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    lines = [f"  {reader:22} {outcome:8} {n}" for (reader, outcome), n in sorted(COUNTS.items())]
    print("\nfuzz examples per reader and outcome:\n" + "\n".join(lines))


def _fresh(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


# -- model files: the readers directly, then compressor bench ------------------------------------------

@pytest.mark.parametrize("fmt", ["onnx", "openvino", "tflite"])
def test_fuzz_model_readers(fmt: str, model_files: Any, tmp_path: Path) -> None:
    @fuzz(30)
    @given(mutation=MUTATIONS, companion=st.booleans())
    def check(mutation: tuple[Any, ...], companion: bool) -> None:
        path = model_files.copy(fmt, _fresh(tmp_path, "m"))
        target = path.with_suffix(".bin") if fmt == "openvino" and companion else path
        target.write_bytes(mutate(target.read_bytes(), mutation))
        try:
            readers.read_model_file(path)
        except CompressorError as err:
            assert str(path.name) in str(err) or str(target.name) in str(err), err
            COUNTS[(f"read {fmt}", "exit 2")] += 1
        else:
            COUNTS[(f"read {fmt}", "ok")] += 1

    check()


FAST = ("--min-iters", "1", "--warmup", "0", "--time-budget-s", "0", "--max-iters", "1")


@pytest.mark.parametrize("fmt", ["onnx", "openvino", "tflite"])
def test_fuzz_bench(fmt: str, model_files: Any, tmp_path: Path) -> None:
    @fuzz(10)
    @given(mutation=MUTATIONS)
    def check(mutation: tuple[Any, ...]) -> None:
        path = model_files.copy(fmt, _fresh(tmp_path, "m"))
        path.write_bytes(mutate(path.read_bytes(), mutation))
        code, err = cli("bench", str(path), *FAST, "--out", str(_fresh(tmp_path, "out")))
        clear(f"bench {fmt}", code, err)

    check()


# -- checkpoints: the loader directly, then through compressor run -----------------------------------

@pytest.fixture(scope="module")
def checkpoint_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(tiny_cnn(num_classes=3).state_dict(), buf)
    return buf.getvalue()


def test_fuzz_checkpoint_loader(checkpoint_bytes: bytes, tmp_path: Path) -> None:
    @fuzz(60)
    @given(mutation=MUTATIONS)
    def check(mutation: tuple[Any, ...]) -> None:
        path = tmp_path / "ckpt.pt"
        path.write_bytes(mutate(checkpoint_bytes, mutation))
        try:
            state = readers.read_checkpoint(path)
        except CompressorError as err:
            assert str(path) in str(err), err
            COUNTS[("read checkpoint", "exit 2")] += 1
        else:
            assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
            COUNTS[("read checkpoint", "ok")] += 1

    check()


def test_fuzz_checkpoint_through_run(checkpoint_bytes: bytes, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=3, per_class=2, size=12)
    doc = {"name": "fuzz", "threads": 1, "data": {"source": "imagefolder", "path": str(data), "batch_size": 4,
                                                  "preprocess": {"resize": 12, "channels": 1, "mean": [0.5], "std": [0.5]}},
           "model": {"entry_point": "tests.tinynet:tiny_cnn", "checkpoint": str(tmp_path / "ckpt.pt")},
           "stages": [{"name": "evaluate", "type": "evaluate"}]}

    @fuzz(12)
    @given(mutation=MUTATIONS)
    def check(mutation: tuple[Any, ...]) -> None:
        (tmp_path / "ckpt.pt").write_bytes(mutate(checkpoint_bytes, mutation))
        recipe = write_recipe(tmp_path / "r.yaml", {**doc, "output": str(_fresh(tmp_path, "run"))})
        code, err = cli("run", str(recipe), "--quiet")
        clear("run --checkpoint", code, err)

    check()


# -- release bundles: compressor verify ----------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-release")
    data = make_image_folder(root / "data", classes=3, per_class=4, size=12)
    doc = {"name": "fuzzrel", "threads": 1, "output": str(root / "run"),
           "data": {"source": "imagefolder", "path": str(data), "batch_size": 6,
                    "preprocess": {"resize": 12, "channels": 1, "mean": [0.5], "std": [0.5]}},
           "model": {"entry_point": "tests.tinynet:tiny_cnn"},
           "stages": [{"name": "teacher", "type": "train", "epochs": 1},
                      {"name": "onnx", "type": "export_onnx"},
                      {"name": "bench", "type": "benchmark", "inputs": ["onnx"], "min_iters": 2, "warmup": 0,
                       "time_budget_s": 0.01}],
           "gates": {"checks": [{"type": "max_size", "artifacts": ["onnx"], "max_mb": 5}]}}
    recipe = write_recipe(root / "r.yaml", doc)
    code, err = cli("release", str(recipe), "--version", "1.0.0", "--quiet", "--out", str(root / "bundle"))
    assert code == 0, err
    assert cli("verify", str(root / "bundle"))[0] == 0
    return root / "bundle"


def _leaves(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document (mappings by key, lists by index), the document itself included."""
    out = [path]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _leaves(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _leaves(value, (*path, i))
    return out


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) |
                           st.text(max_size=8), lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def test_fuzz_verify_with_damaged_files(bundle: Path, tmp_path: Path) -> None:
    files = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file())

    @fuzz(15)
    @given(which=st.sampled_from(files), mutation=MUTATIONS)
    def check(which: Path, mutation: tuple[Any, ...]) -> None:
        copy_ = _fresh(tmp_path, "b")
        shutil.copytree(bundle, copy_, dirs_exist_ok=True)
        (copy_ / which).write_bytes(mutate((copy_ / which).read_bytes(), mutation))
        code, err = cli("verify", str(copy_))
        clear("verify (bytes)", code, err, allowed=(0, 1, 2))

    check()


def test_fuzz_verify_with_a_manifest_of_the_wrong_shape(bundle: Path, tmp_path: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    read = {"bundle_format", "files", "releasable", "gates", "artifacts", "accuracy_checks", "data"}
    # the parts verify reads (the rest of the manifest is only shown to people)
    paths = [p for p in _leaves(manifest) if not p or p[0] in read or p[:2] in (
        ("recipe",), ("recipe", "data"), ("recipe", "seed"), ("recipe", "task"), ("recipe", "embedding"))]

    @fuzz(30)
    @given(where=st.sampled_from(paths), value=JSON_VALUES, hashes_only=st.booleans())
    def check(where: tuple[Any, ...], value: Any, hashes_only: bool) -> None:
        doc = copy.deepcopy(manifest)
        if not where:
            doc = value
        else:
            parent = doc
            for part in where[:-1]:
                parent = parent[part]
            parent[where[-1]] = value
        copy_ = _fresh(tmp_path, "b")
        shutil.copytree(bundle, copy_, dirs_exist_ok=True)
        (copy_ / "manifest.json").write_text(json.dumps(doc))
        code, err = cli("verify", str(copy_), *(["--hashes-only"] if hashes_only else []))
        clear("verify (manifest)", code, err, allowed=(0, 1, 2))

    check()


# -- recipes: compressor validate ----------------------------------------------------------------------

RECIPE = {
    "name": "fuzz", "seed": 0, "threads": 1,
    "data": {"source": "imagefolder", "path": "data", "batch_size": 8,
             "preprocess": {"resize": 12, "channels": 1, "mean": [0.5], "std": [0.5]}},
    "model": {"entry_point": "tests.tinynet:tiny_cnn"},
    "stages": [{"name": "teacher", "type": "train", "epochs": 1, "lr": 0.05},
               {"name": "onnx", "type": "export_onnx"},
               {"name": "bench", "type": "benchmark", "inputs": ["teacher", "onnx"], "min_iters": 5}],
}
RECIPE_TEXT = yaml.safe_dump(RECIPE, sort_keys=False)
LINES = RECIPE_TEXT.splitlines(keepends=True)
KEY_LINES = [i for i, line in enumerate(LINES) if ":" in line and not line.lstrip().startswith("- ")]
YAML_SCALARS = st.one_of(st.integers(-10, 10**9), st.floats(allow_nan=True), st.booleans(), st.none(),
                         st.text(max_size=10), st.lists(st.integers(), max_size=3))

RECIPE_MUTATIONS = st.one_of(
    st.tuples(st.just("duplicate key line"), st.sampled_from(KEY_LINES)),
    st.tuples(st.just("wrong type"), st.sampled_from(KEY_LINES), YAML_SCALARS),
    st.tuples(st.just("drop line"), st.integers(0, len(LINES) - 1)),
    st.tuples(st.just("cut text"), st.integers(0, len(RECIPE_TEXT))),
    st.tuples(st.just("insert text"), st.integers(0, len(RECIPE_TEXT)), st.text(max_size=12)),
)


def mutate_recipe(mutation: tuple[Any, ...]) -> str:
    kind = mutation[0]
    lines = list(LINES)
    if kind == "duplicate key line":
        lines.insert(mutation[1] + 1, lines[mutation[1]])
    elif kind == "wrong type":
        line = lines[mutation[1]]
        key, _, _ = line.partition(":")
        lines[mutation[1]] = f"{key}: {json.dumps(mutation[2])}\n"
    elif kind == "drop line":
        del lines[mutation[1]]
    elif kind == "cut text":
        return RECIPE_TEXT[: mutation[1]]
    else:
        return RECIPE_TEXT[: mutation[1]] + mutation[2] + RECIPE_TEXT[mutation[1]:]
    return "".join(lines)


def test_fuzz_validate_with_mutated_recipes(tmp_path: Path) -> None:
    @fuzz(60)
    @given(mutation=RECIPE_MUTATIONS)
    def check(mutation: tuple[Any, ...]) -> None:
        path = tmp_path / "r.yaml"
        path.write_text(mutate_recipe(mutation))
        code, err = cli("validate", str(path))
        clear("validate", code, err)
        if mutation[0] == "duplicate key line":  # a key line given twice is always a duplicate key
            key = LINES[mutation[1]].split(":")[0].strip()
            assert code == 2 and f'key "{key}" is given twice' in err, err

    check()
