"""Tiny model files of every format ``compressor bench`` reads, built once per test session on demand.

``ModelFiles.get("onnx" | "onnx_external" | "openvino" | "tflite")`` returns the path of a file made from
``tests.tinynet:tiny_cnn`` (3 classes, 1 x 12 x 12 input); the OpenVINO IR's ``.bin`` lies beside its ``.xml``,
the external data beside its ``.onnx``. Tests copy them before damaging them.
"""

from __future__ import annotations

from pathlib import Path

import torch

SHAPE = (1, 1, 12, 12)


def _model() -> torch.nn.Module:
    from tests.tinynet import tiny_cnn

    torch.manual_seed(0)
    return tiny_cnn(num_classes=3).eval()


def build_onnx(path: Path) -> Path:
    torch.onnx.export(_model(), (torch.zeros(SHAPE),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    return path


def build_onnx_external(path: Path, plain: Path) -> Path:
    import onnx

    model = onnx.load(str(plain))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=0)
    return path


def build_openvino(path: Path, onnx_path: Path) -> Path:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
    return path


def build_tflite(path: Path) -> Path:
    import litert_torch

    litert_torch.convert(_model(), (torch.zeros(SHAPE),)).export(str(path))
    return path


class ModelFiles:
    """Builds each format the first time it is asked for, in ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, Path] = {}

    def get(self, fmt: str) -> Path:
        if fmt not in self._built:
            folder = self.root / fmt
            folder.mkdir(parents=True, exist_ok=True)
            if fmt == "onnx":
                path = build_onnx(folder / "tiny.onnx")
            elif fmt == "onnx_external":
                path = build_onnx_external(folder / "tiny.onnx", self.get("onnx"))
            elif fmt == "openvino":
                path = build_openvino(folder / "tiny.xml", self.get("onnx"))
            elif fmt == "tflite":
                path = build_tflite(folder / "tiny.tflite")
            else:
                msg = f"no tiny model file of format {fmt!r}"
                raise ValueError(msg)
            self._built[fmt] = path
        return self._built[fmt]

    def copy(self, fmt: str, dest: Path) -> Path:
        """Copies of the format's files into ``dest`` (companions too); returns the main file's copy."""
        import shutil

        src = self.get(fmt)
        dest.mkdir(parents=True, exist_ok=True)
        for f in src.parent.iterdir():
            shutil.copy2(f, dest / f.name)
        return dest / src.name
