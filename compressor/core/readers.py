"""One validating reader per kind of file a user hands over.

Recipe, checkpoint, ONNX model, OpenVINO IR, TFLite model, image, release bundle and data folder: each
reader checks that the path exists, that the file is of the kind expected, decodes it completely and
looks for the companion files it needs (``.bin`` beside an IR's ``.xml``, the external data of an ONNX
file). A failure is a :class:`~compressor.errors.CompressorError` (exit code 2) that names the path and
what was expected, never a decoder's exception. Heavy libraries are imported inside the readers.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import (
    BundleError,
    CheckpointError,
    CompressorError,
    DataError,
    InputFileError,
    Problem,
    RecipeError,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MODEL_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino"}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def _existing_file(path: Path, what: str, expected: str) -> None:
    if not path.exists():
        raise InputFileError(path, "does not exist", expected, what)
    if not path.is_file():
        raise InputFileError(path, "is not a regular file", expected, what)


# -- output folders --------------------------------------------------------------------------------

def check_output_folder(path: Path, what: str = "--out") -> Path:
    """``path`` may be created as a folder: it is a folder already, or it and its missing parents can be."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "" if candidate == path else f" (its parent {candidate} is a file)"
                msg = (f"{what} {path} is an existing file{where}, not a folder; pass a folder path "
                       "(it is created when missing)")
                raise CompressorError(msg)
            break
    return path


# -- recipes and other YAML documents -------------------------------------------------------------

def _yaml_loader() -> Any:
    import yaml

    class StrictSafeLoader(yaml.SafeLoader):
        """yaml.SafeLoader (no tags that build objects) that records keys given twice in one mapping."""

        def __init__(self, stream: str):
            super().__init__(stream)
            self.duplicates: list[tuple[Any, int, int, Any]] = []

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _value in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # ``<<: *base`` then an override is YAML's way to change one key
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:
                        continue  # an unhashable key: SafeLoader reports it
                    line = key_node.start_mark.line + 1
                    if first is None:
                        seen[key] = line
                    else:
                        self.duplicates.append((key, first, line, node))
            return super().construct_mapping(node, deep=deep)

    return StrictSafeLoader


def _node_paths(root: Any) -> dict[int, str]:
    """id(node) -> field path (``stages[1]``) of every mapping node below ``root``."""
    import yaml

    paths: dict[int, str] = {}
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in paths:
            continue  # an alias: the first path wins
        paths[id(node)] = path
        if isinstance(node, yaml.MappingNode):
            for key_node, value in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                stack.append((value, f"{path}.{key}" if path else str(key)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
    return paths


def parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document with safe types only; bad syntax, a tag or a key given twice is a RecipeError."""
    import yaml

    loader = None
    try:
        loader = _yaml_loader()(text)  # its reader refuses control characters here already
        root = loader.get_single_node()
        doc = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        hint = ("; recipes are read with yaml.safe_load, which builds no Python objects: remove the tag"
                if "constructor for the tag" in problem else "; fix the syntax there")
        raise RecipeError(source, [Problem("", f"is not valid YAML: {where}{problem}{hint}")]) from err
    finally:
        if loader is not None:
            loader.dispose()
    assert loader is not None
    if loader.duplicates:
        paths = _node_paths(root)
        problems = []
        for key, first, second, node in loader.duplicates:
            parent = paths.get(id(node), "")
            where = f"{parent}.{key}" if parent else str(key)
            problems.append(Problem(where, f'key "{key}" is given twice (lines {first} and {second}); '
                                           "YAML would keep only the last: remove one"))
        raise RecipeError(source, problems)
    return doc


def read_yaml_file(path: Path, what: str = "recipe") -> Any:
    """Read and parse a YAML file (a recipe, a targets list); every failure is a RecipeError naming it."""
    source = str(path)
    if not path.exists():
        raise RecipeError(source, [Problem("", f"file not found; pass the path of a {what} YAML file")])
    if not path.is_file():
        raise RecipeError(source, [Problem("", f"is not a file; pass the path of a {what} YAML file")])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(source, [Problem("", f"cannot be read as UTF-8 text ({_first_line(err)}); "
                                              f"a {what} is a YAML text file")]) from err
    if "\x00" in text:
        raise RecipeError(source, [Problem("", f"holds NUL bytes: a binary file, not a {what} YAML file")])
    return parse_yaml(text, source)


# -- checkpoints ------------------------------------------------------------------------------------

def _non_finite(tensor: Any) -> tuple[int, int]:
    """(NaN count, Inf count) of a floating tensor; (0, 0) for other dtypes."""
    import torch

    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0, 0
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    return nan, inf


def non_finite_tensors(state: Mapping[str, Any]) -> list[tuple[str, int, int, int]]:
    """(name, NaN count, Inf count, size) of every tensor holding NaN or Inf."""
    bad = []
    for name, tensor in state.items():
        nan, inf = _non_finite(tensor)
        if nan or inf:
            bad.append((name, nan, inf, int(tensor.numel())))
    return bad


def describe_non_finite(bad: list[tuple[str, int, int, int]]) -> str:
    name, nan, inf, size = bad[0]
    more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
    return f"tensor '{name}' holds {nan} NaN and {inf} Inf of {size} values{more}"


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A state dict (name -> tensor) loaded with ``weights_only=True``, every tensor finite.

    Accepts the usual wrappers (``state_dict``, ``model_state_dict``, ``model``) and DDP's ``module.``
    prefix. Missing, truncated, corrupt, pickled-object, non-state-dict and NaN/Inf files are a
    :class:`CheckpointError` naming the file and, for NaN/Inf, the tensor.
    """
    import pickle

    import torch

    if not path.exists():
        msg = f"checkpoint {path} does not exist"
        raise CheckpointError(msg)
    if not path.is_file():
        msg = f"checkpoint {path} is not a file; pass a state dict saved with torch.save(model.state_dict(), path)"
        raise CheckpointError(msg)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" in str(err).lower():  # "Unsupported global: GLOBAL ...", "add_safe_globals": a class
            msg = (f"checkpoint {path} holds pickled Python objects (for example a whole model saved with "
                   f"torch.save(model)), which are refused under weights_only=True because unpickling can run "
                   f"code; save model.state_dict() instead. Loader said: {str(err).splitlines()[0]}")
        else:  # torch's long weights_only preamble; the unpickler's own complaint follows its marker
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            marker = next((i for i, line in enumerate(lines) if "WeightsUnpickler error" in line), None)
            said = lines[marker + 1] if marker is not None and marker + 1 < len(lines) else _first_line(err)
            msg = f"checkpoint {path} is not a readable PyTorch checkpoint (truncated or corrupt?): {said}"
        raise CheckpointError(msg) from err
    except Exception as err:  # noqa: BLE001 - a corrupt file can fail anywhere inside the unpickler
        msg = f"checkpoint {path} is not a readable PyTorch checkpoint (truncated or corrupt?): {_first_line(err)}"
        raise CheckpointError(msg) from err
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        msg = f"checkpoint {path} is not a state dict (a mapping of parameter names to tensors)"
        raise CheckpointError(msg)
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    bad = non_finite_tensors(state)
    if bad:
        msg = (f"checkpoint {path}: {describe_non_finite(bad)}; the weights are damaged or come from a run "
               "that diverged: use an earlier checkpoint")
        raise CheckpointError(msg)
    return state


# -- model files ------------------------------------------------------------------------------------

@dataclass
class ModelFile:
    """A model file that decoded: its format, the files it consists of, and what was read from it."""

    format: str
    main: Path
    files: list[Path]
    ops: set[str] = field(default_factory=set)
    metadata: dict[str, str] = field(default_factory=dict)
    text: str = ""


ONNX_EXPECTED = "an ONNX model (a protobuf ModelProto, as torch.onnx.export writes)"
IR_EXPECTED = "an OpenVINO IR model.xml with its model.bin beside it (as openvino.save_model writes)"
TFLITE_EXPECTED = "a TFLite flatbuffer (file identifier TFL3, as litert-torch writes)"


def read_onnx(path: Path) -> ModelFile:
    """Decode an ONNX file completely: protobuf, graph, operator checks, and its external data files."""
    _existing_file(path, "ONNX model", ONNX_EXPECTED)
    try:
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    except ImportError:
        from compressor.errors import MissingExtraError

        what = "reading ONNX files"
        raise MissingExtraError(what, "onnx", "onnx") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise InputFileError(path, f"does not decode as ONNX ({_first_line(err)}); truncated, or another kind "
                                   "of file", ONNX_EXPECTED, "ONNX model") from err
    graph = model.graph
    if not graph.node or not graph.output or model.ir_version <= 0:
        raise InputFileError(path, "holds no ONNX graph (no nodes or outputs); it is another kind of file",
                             ONNX_EXPECTED, "ONNX model")
    files = [path]
    for tensor in graph.initializer:
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        rel = Path(info.location)
        if rel.is_absolute() or ".." in rel.parts:
            raise InputFileError(path, f"names external data {info.location!r} outside its folder",
                                 "external data files beside the .onnx file", "ONNX model")
        data = path.parent / rel
        if not data.is_file():
            raise InputFileError(path, f"keeps tensor '{tensor.name}' in the external data file {data}, which is "
                                       "missing", f"{data.name} beside {path.name} (copy both together)",
                                 "ONNX model")
        need = (info.offset or 0) + (info.length or 0)
        if info.length and data.stat().st_size < need:
            raise InputFileError(data, f"is truncated: tensor '{tensor.name}' needs bytes up to {need}, the file "
                                       f"has {data.stat().st_size}", f"the complete external data of {path.name}",
                                 "ONNX external data")
        files.append(data)
    try:
        onnx.checker.check_model(str(path))  # by path: external data resolves beside the file
    except Exception as err:  # noqa: BLE001 - ValidationError, or a decode error inside a field
        raise InputFileError(path, f"is not a valid ONNX model ({_first_line(err)})", ONNX_EXPECTED,
                             "ONNX model") from err
    return ModelFile("onnx", path, sorted(set(files)), ops={n.op_type for n in graph.node},
                     metadata={p.key: p.value for p in model.metadata_props})


def read_openvino_ir(path: Path) -> ModelFile:
    """An IR ``.xml`` (parsed), its ``.bin`` (present, long enough for every constant), read by OpenVINO."""
    _existing_file(path, "OpenVINO IR", IR_EXPECTED)
    raw = path.read_bytes()
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as err:
        raise InputFileError(path, f"is not well-formed XML ({err}); truncated, or another kind of file",
                             IR_EXPECTED, "OpenVINO IR") from err
    layers = root.find("layers")
    if root.tag != "net" or layers is None or not len(layers):
        raise InputFileError(path, f"is XML but not an OpenVINO IR (root <{root.tag}>, expected <net> with "
                                   "<layers>)", IR_EXPECTED, "OpenVINO IR")
    weights = path.with_suffix(".bin")
    need = 0
    for data in root.iter("data"):
        try:
            end = int(data.get("offset", "0")) + int(data.get("size", "0"))
        except ValueError:
            continue
        need = max(need, end)
    if need and not weights.is_file():
        raise InputFileError(path, f"needs its weights file {weights.name}, which is missing",
                             f"{weights.name} beside {path.name} (copy both together)", "OpenVINO IR")
    files = [path] + ([weights] if weights.is_file() else [])
    if weights.is_file() and weights.stat().st_size < need:
        raise InputFileError(weights, f"is truncated: {path.name} reads weights up to byte {need}, the file has "
                                      f"{weights.stat().st_size}", f"the complete weights of {path.name}",
                             "OpenVINO weights")
    try:
        import openvino as ov
    except ImportError:
        ov = None
    if ov is not None:
        try:
            ov.Core().read_model(str(path), str(weights) if weights.is_file() else None)
        except Exception as err:  # noqa: BLE001 - OpenVINO raises RuntimeError with its parser's message
            raise InputFileError(path, f"is not readable by OpenVINO ({_first_line(err)})", IR_EXPECTED,
                                 "OpenVINO IR") from err
    ops = {str(layer.get("type")) for layer in layers}
    precisions = {str(d.get("element_type")) for d in root.iter("data") if d.get("element_type")}
    return ModelFile("openvino", path, files, ops=ops, text=" ".join(sorted(precisions)))


def read_tflite(path: Path) -> ModelFile:
    """A TFLite flatbuffer with its identifier, verified and allocated by the LiteRT interpreter."""
    _existing_file(path, "TFLite model", TFLITE_EXPECTED)
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        what = "is empty" if not data else f"has no TFLite file identifier (bytes 4-8 are {data[4:8]!r}, not b'TFL3')"
        raise InputFileError(path, f"{what}; it is another kind of file", TFLITE_EXPECTED, "TFLite model")
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return ModelFile("tflite", path, [path])
    try:
        interpreter = Interpreter(model_content=data)
        interpreter.allocate_tensors()
    except Exception as err:  # noqa: BLE001 - ValueError/RuntimeError from the flatbuffer verifier
        raise InputFileError(path, f"does not load as TFLite ({_first_line(err)}); truncated or damaged",
                             TFLITE_EXPECTED, "TFLite model") from err
    return ModelFile("tflite", path, [path])


MODEL_READERS = {"onnx": read_onnx, "openvino": read_openvino_ir, "tflite": read_tflite}


def read_model_file(path: Path) -> ModelFile:
    """The reader for ``path``'s suffix (.onnx, .xml, .tflite); another suffix is an error listing them."""
    fmt = MODEL_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        if path.suffix.lower() == ".bin":
            hint = f"; pass the IR's .xml ({path.with_suffix('.xml').name}), its .bin is found beside it"
        else:
            hint = ""
        raise InputFileError(path, f"has the unknown model suffix {path.suffix!r}{hint}",
                             ".onnx, .tflite or OpenVINO .xml (+ .bin)", "model file")
    return MODEL_READERS[fmt](path)


# -- images and data folders ------------------------------------------------------------------------

def image_problem(path: Path) -> str | None:
    """None if ``path`` decodes fully as an image, else the reason (for skipping it with a note)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))  # JPEG decodes at reduced scale: a full check, cheaply
            im.load()
    except Exception as err:  # noqa: BLE001 - PIL raises many types for undecodable files
        return _first_line(err)
    return None


def read_image(path: Path) -> Any:
    """An image as an RGB uint8 H x W x 3 array; an undecodable file is a DataError naming it."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()  # greyscale, palette and RGBA all become RGB
    except Exception as err:  # noqa: BLE001 - PIL raises many types for undecodable files
        msg = (f"image {path} cannot be decoded ({_first_line(err)}); it changed after the data was scanned? "
               "expected a readable image file")
        raise DataError(msg) from err


def check_data_folder(root: Path, what: str = "data folder", need_train: bool = True) -> Path:
    """An ImageFolder root: a folder, holding ``train/`` (``need_train``) or class folders."""
    if not root.exists():
        msg = f"{what} {root} does not exist; pass a folder holding train/<class>/ and val/<class>/"
        raise DataError(msg)
    if not root.is_dir():
        msg = (f"{what} {root} is a file, not a folder; pass a folder holding train/<class>/<images> "
               "(and optionally val/)")
        raise DataError(msg)
    if need_train and not (root / "train").is_dir():
        msg = f"{root} has no train/ folder; expected {root}/train/<class>/<images> (and optionally val/)"
        raise DataError(msg)
    return root


# -- release bundles --------------------------------------------------------------------------------

def _bundle_models() -> Any:
    from pydantic import BaseModel, ConfigDict, Field, model_validator

    class Part(BaseModel):
        model_config = ConfigDict(extra="allow")

    class File(Part):
        path: str
        sha256: str

    class Gate(Part):
        gate: str
        artifact: str
        status: str

    class ShippedArtifact(Part):
        stage: str
        format: str
        precision: str
        files: dict[str, str] = Field(min_length=1)
        meta: dict[str, Any] = Field(default_factory=dict)

    class AccuracyCheck(Part):
        stage: str
        images: int | None = Field(None, ge=1)
        backend: str
        labels_sha256: str
        images_sha256: str
        metric: str = "top1"

        @model_validator(mode="after")
        def _value(self) -> AccuracyCheck:
            value = (self.model_extra or {}).get(self.metric)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                msg = f"needs the recorded {self.metric} as a number"
                raise ValueError(msg)
            return self

    class BundleRecipe(Part):
        data: dict[str, Any]
        seed: int
        task: str = "classification"
        embedding: dict[str, Any] | None = None

    class BundleData(Part):
        classes: list[str] = Field(min_length=1)

    class Manifest(Part):
        bundle_format: int
        files: list[File]
        releasable: bool
        gates: list[Gate] = Field(default_factory=list)
        artifacts: list[ShippedArtifact] = Field(default_factory=list)
        accuracy_checks: list[AccuracyCheck] = Field(default_factory=list)
        recipe: BundleRecipe | None = None
        data: BundleData | None = None

        @model_validator(mode="after")
        def _checks_refer(self) -> Manifest:
            for artifact in self.artifacts:
                for rel in artifact.files.values():
                    parts = Path(rel).parts
                    if Path(rel).is_absolute() or ".." in parts or not parts:
                        msg = f"artifact {artifact.stage!r} names the file {rel!r}, which leaves the bundle"
                        raise ValueError(msg)
            stages = {a.stage for a in self.artifacts}
            for i, check in enumerate(self.accuracy_checks):
                if check.stage not in stages:
                    msg = f"accuracy_checks[{i}] names stage {check.stage!r}, which ships no artifact"
                    raise ValueError(msg)
            if self.accuracy_checks and (self.recipe is None or self.data is None):
                msg = "accuracy checks need the recipe and data sections"
                raise ValueError(msg)
            return self

    return Manifest


def read_bundle_manifest(bundle: Path, bundle_format: int, what: str = "bundle") -> dict[str, Any]:
    """The manifest of a release bundle folder, its shape checked; anything else is a BundleError."""
    from pydantic import ValidationError

    path = bundle / "manifest.json"
    if not bundle.exists():
        msg = f"{what} {bundle} does not exist; pass the folder a release wrote (it holds manifest.json)"
        raise BundleError(msg)
    if not bundle.is_dir():
        msg = f"{what} {bundle} is not a folder; pass the folder a release wrote (it holds manifest.json)"
        raise BundleError(msg)
    if not path.is_file():
        msg = f"{what} {bundle} has no manifest.json; pass the folder a release wrote"
        raise BundleError(msg)
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        msg = f"{path} is not valid JSON ({_first_line(err)}); the {what} is damaged"
        raise BundleError(msg) from err
    if not isinstance(manifest, dict) or manifest.get("bundle_format") != bundle_format:
        msg = (f"{path} is not a release manifest of format {bundle_format}; pass a bundle written by "
               "compressor release")
        raise BundleError(msg)
    try:
        _bundle_models().model_validate(manifest)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = f"{path} is damaged: {where + ': ' if where else ''}{first['msg']}; pass the bundle a release wrote"
        raise BundleError(msg) from None
    return manifest
