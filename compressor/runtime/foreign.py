"""``compressor bench``: benchmark ONNX, OpenVINO IR and TFLite files the tool did not make.

Latency always (on inputs of the file's own shape); accuracy, and top-1 agreement with the first file,
when labelled data and preprocessing are given (preprocessing and class names are read from ONNX
metadata_props when the file is one of ours).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressor.core.artifacts import write_json
from compressor.core.readers import read_model_file
from compressor.errors import CompressorError, DataError
from compressor.runtime.measure import DEFAULT_MAX_CV
from compressor.runtime.targets import Job, JobArtifact, TargetResult, run_targets, target_row

INT8_ONNX_OPS = {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


@dataclass
class ExternalArtifact:
    name: str
    format: str
    main: Path
    files: list[Path]
    precision: str
    metadata: dict[str, Any]

    def digest(self) -> str:
        h = hashlib.sha256()
        for f in sorted(self.files):
            h.update(f.read_bytes())
        return h.hexdigest()[:12]


def describe_file(path: Path) -> ExternalArtifact:
    """Format, companion files, precision and (for our ONNX files) class names and preprocessing.

    The file is decoded completely by its reader first (:mod:`compressor.core.readers`): a file of
    another kind, a truncated one or a missing companion (.bin, external data) is an error naming it.
    """
    info = read_model_file(path)
    precision = "fp32"
    meta: dict[str, Any] = {}
    if info.format == "openvino":
        precision = "int8" if "FakeQuantize" in info.ops or {"i8", "u8"} & set(info.text.split()) else "fp32"
    elif info.format == "onnx":
        precision = "int8" if info.ops & INT8_ONNX_OPS else "fp32"
        for key in ("class_names", "preprocess"):
            if key in info.metadata:
                try:
                    meta[key] = json.loads(info.metadata[key])
                except json.JSONDecodeError:
                    continue  # not ours: benchmark without it
    elif info.format == "tflite":
        precision = "unknown"
    return ExternalArtifact(path.stem, info.format, path, info.files, precision, meta)


def labelled_arrays(data: str, preprocess: dict[str, Any], limit: int | None,
                    class_names: list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Preprocessed NCHW float32 images and labels from ``fashion-mnist`` or a folder of class folders."""
    from pydantic import ValidationError

    from compressor.core.config import DataConfig, Preprocess

    try:
        pre = Preprocess.model_validate({k: v for k, v in preprocess.items() if k != "input_size"})
    except ValidationError as err:
        first = err.errors()[0]
        msg = f"preprocess {preprocess}: {'.'.join(str(x) for x in first['loc'])}: {first['msg']}"
        raise DataError(msg) from None
    if data == "fashion-mnist":
        from compressor.core.data import load_data

        per_class = max(1, limit // 10) if limit else None
        module = load_data(DataConfig(source="fashion-mnist", val_per_class=per_class, preprocess=pre), 0)
        images, labels = module.val_arrays(limit)
        return images, labels, list(module.classes)
    from compressor.core.data import FileImages, build_transform, scan_split
    from compressor.core.readers import check_data_folder

    root = check_data_folder(Path(data), "--data", need_train=False)
    split = root / "val" if (root / "val").is_dir() else root
    size = pre.crop or pre.resize or preprocess.get("input_size")
    if size is None:
        msg = "--preprocess needs resize or crop for an image folder (images differ in size)"
        raise DataError(msg)
    classes, samples = scan_split(split, None, [])
    if class_names:
        if sorted(class_names) != sorted(classes):
            msg = f"--data {data}: class folders {classes} differ from the artifact's class names {class_names}"
            raise DataError(msg)
        order = {name: i for i, name in enumerate(class_names)}
        samples = [(p, order[classes[label]]) for p, label in samples]
        classes = list(class_names)
    if limit:
        step = max(1, len(samples) // limit)
        samples = samples[::step][:limit]
    ds = FileImages(samples, build_transform(pre, size, False, False))
    pairs = [ds[i] for i in range(len(ds))]
    images = np.stack([x.numpy() for x, _ in pairs]).astype(np.float32)
    labels = np.asarray([y for _, y in pairs], dtype=np.int64)
    return images, labels, classes


def run_bench(paths: list[Path], targets: list[Any], out: Path, data: str | None, preprocess: dict[str, Any] | None,
              batch_sizes: list[int], modes: list[str], images_limit: int | None, budget: float,
              timing: dict[str, Any], log: Any = print) -> Path:
    """Benchmark ``paths`` on ``targets``; write results.json and the report into ``out``.

    A target that could not be used at all (unreachable, host key refused, no rootfs) is a failed row in
    the report, and then a :class:`CompressorError` naming it, after the others' results are written.
    """
    arts = [describe_file(p) for p in paths]
    names = [a.name for a in arts]
    for i, a in enumerate(arts):
        if names.count(a.name) > 1:
            a.name = f"{a.name}#{i}"
    images = labels = None
    if data:
        pre = preprocess or next((a.metadata["preprocess"] for a in arts if "preprocess" in a.metadata), None)
        if pre is None:
            msg = "--data needs --preprocess (JSON: resize, crop, channels, mean, std): no artifact carries it"
            raise CompressorError(msg)
        class_names = next((a.metadata["class_names"] for a in arts if "class_names" in a.metadata), None)
        images, labels, _ = labelled_arrays(data, pre, images_limit, class_names)
        log(f"bench: {len(labels)} labelled images from {data}")
    job = Job([JobArtifact(a.name, a.format, a.main, a.files) for a in arts], images, labels,
              batch_sizes=batch_sizes, modes=modes, **{"max_cv": DEFAULT_MAX_CV, **timing})
    out.mkdir(parents=True, exist_ok=True)
    log(f"bench: {len(arts)} artifact(s) on {', '.join(t.label for t in targets)}")
    with tempfile.TemporaryDirectory(dir=out, prefix="targets-") as tmp:
        results = run_targets(targets, job, Path(tmp))
    rows = _rows(arts, results, job.labels)
    from compressor.runtime.envinfo import environment

    doc = {"rows": rows, "accuracy_budget": budget, "teacher": arts[0].name,
           "targets": [{"target": r.target, "type": r.type, "emulated": r.emulated, "note": r.note,
                        "environment": r.environment} for r in results],
           "environment": environment(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(out / "results.json", doc)
    from compressor.report.render import write_report

    path = write_report(out)
    unusable = [r for r in results if r.note and all(row.get("status") == "failed"
                                                     for rows in r.rows.values() for row in rows)]
    if unusable:
        # the other targets' measurements are written; the command still fails, naming the target
        first = unusable[0]
        others = f" (and {len(unusable) - 1} more target(s))" if len(unusable) > 1 else ""
        msg = f"target {first.target} could not be used{others}: {first.note}; the report is in {path}"
        raise CompressorError(msg)
    return path


def _rows(arts: list[ExternalArtifact], results: list[TargetResult],
          labels: np.ndarray | None = None) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        # agreement is with the first file's predictions on the same target
        first = next((r.get("predictions") for r in result.rows.get(arts[0].name, []) if r.get("predictions")), None)
        ref = np.asarray(first) if first is not None else None
        for a in arts:
            base = {"stage": a.name, "artifact": a.digest(), "format": a.format, "precision": a.precision,
                    "backend": "-", "batch": None, "size_bytes": sum(f.stat().st_size for f in a.files),
                    "file": str(a.main)}
            for runner_row in result.rows.get(a.name, []):
                row = target_row(base, result, runner_row, ref, labels)
                row.setdefault("mode", "latency")
                rows.append(row)
    return rows
