"""Model sources, checkpoints, and the saved form of a model that reloads without pickled classes."""

from __future__ import annotations

import importlib
import inspect
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.core.artifacts import Artifact
from compressor.core.config import ModelSource
from compressor.core.context import StageContext
from compressor.core.readers import read_checkpoint
from compressor.errors import CheckpointError, MissingExtraError, ModelSourceError, did_you_mean


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


# Constructor arguments some torchvision architectures need when built without pretrained weights.
_ARCH_KWARGS: dict[str, dict[str, Any]] = {
    "inception_v3": {"aux_logits": False, "init_weights": True},
    "googlenet": {"aux_logits": False, "init_weights": True},
}


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Adapt the first convolution to ``in_channels`` (e.g. 1 for greyscale data)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_channels:
                return
            if module.groups != 1:
                break
            new = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size,  # type: ignore[arg-type]
                module.stride, module.padding, module.dilation,  # type: ignore[arg-type]
                groups=1, bias=module.bias is not None, padding_mode=module.padding_mode,
            )
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    msg = f"cannot adapt the model to {in_channels} input channels: no plain Conv2d found as its first layer"
    raise ModelSourceError(msg)


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        what = "model: {timm: ...}"
        raise MissingExtraError(what, "timm", "timm") from err
    return timm


def _build_timm(name: str, kwargs: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    timm = _timm()
    if not timm.is_model(name):
        names = list(timm.list_models())
        msg = f'unknown timm model "{name}"{did_you_mean(name, names)}'
        raise ModelSourceError(msg)
    if kwargs.get("pretrained") or "pretrained_cfg_overlay" in kwargs:
        msg = ("model.kwargs.pretrained: nothing is downloaded; give the pretrained weights as a file with "
               "model.checkpoint (a state dict or .safetensors)")
        raise ModelSourceError(msg)
    for key in ("num_classes", "in_chans"):
        if key in kwargs:
            msg = f"model.kwargs.{key}: set by compressor (model.num_classes / model.in_channels); remove it"
            raise ModelSourceError(msg)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except TypeError as err:
        msg = f"timm {name} rejected model.kwargs {kwargs}: {err}"
        raise ModelSourceError(msg) from err


def build_model(source: ModelSource, num_classes: int, in_channels: int) -> nn.Module:
    """Build an untrained model from a torchvision name, a timm name or an entry point."""
    if source.is_file:
        msg = f"model source {source.label()} is a file, not a PyTorch model; this step needs PyTorch"
        raise ModelSourceError(msg)
    if source.timm is not None:
        return _build_timm(source.timm, dict(source.kwargs), num_classes, in_channels)
    if source.arch is not None:
        import torchvision

        names = torchvision_names()
        if source.arch not in names:
            msg = f'unknown torchvision architecture "{source.arch}"{did_you_mean(source.arch, names)}'
            raise ModelSourceError(msg)
        kwargs = {**_ARCH_KWARGS.get(source.arch, {}), **source.kwargs}
        try:
            model = torchvision.models.get_model(source.arch, weights=None, num_classes=num_classes, **kwargs)
        except TypeError as err:
            msg = f"torchvision {source.arch} rejected model.kwargs {source.kwargs}: {err}"
            raise ModelSourceError(msg) from err
    else:
        assert source.entry_point is not None
        module_name, _, attr = source.entry_point.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001 - any import-time failure of user code
            msg = (f"entry point {source.entry_point}: cannot import module '{module_name}' "
                   f"({type(err).__name__}: {err}); check the name and that it is on PYTHONPATH")
            raise ModelSourceError(msg) from err
        factory: Any = module
        for part in attr.split("."):  # 'module:Class.from_name' reaches a classmethod
            factory = getattr(factory, part, None)
        if not callable(factory):
            msg = f"entry point {source.entry_point}: module '{module_name}' has no callable '{attr}'"
            raise ModelSourceError(msg)
        kwargs = dict(source.kwargs)
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        if "num_classes" in params and "num_classes" not in kwargs:
            kwargs["num_classes"] = num_classes
        if "in_channels" in params and "in_channels" not in kwargs:
            kwargs["in_channels"] = in_channels
        try:
            model = factory(**kwargs)
        except Exception as err:  # noqa: BLE001
            msg = f"entry point {source.entry_point} raised {type(err).__name__}: {err}"
            raise ModelSourceError(msg) from err
        if not isinstance(model, nn.Module):
            msg = f"entry point {source.entry_point} returned {type(model).__name__}, not a torch.nn.Module"
            raise ModelSourceError(msg)
    _replace_first_conv(model, in_channels)
    return model


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        what = f"checkpoint {path.name}"
        raise MissingExtraError(what, "timm", "safetensors") from err
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as err:  # noqa: BLE001 - a damaged header fails in the Rust reader
        msg = f"checkpoint {path} is not a readable .safetensors file (truncated or corrupt?): {err}"
        raise CheckpointError(msg) from err


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only=True``, every tensor finite; ``.safetensors`` through
    safetensors); errors name the file and the fix."""
    if path.suffix == ".safetensors" and path.is_file():
        return _read_safetensors(path)
    return read_checkpoint(path)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``state`` strictly; a mismatch names the first differing key and, for heads, the class count."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        first = missing[0] if missing else unexpected[0]
        what = "missing from the checkpoint" if missing else "in the checkpoint but not in the model"
        msg = (f"checkpoint {origin} does not match the architecture: key '{first}' is {what} "
               f"({len(missing)} missing, {len(unexpected)} unexpected); is it from another architecture?")
        raise CheckpointError(msg)
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if last_linear and key.startswith(last_linear[-1] + "."):
                msg = (f"checkpoint {origin} has {state[key].shape[0]} classes (key '{key}' shape "
                       f"{tuple(state[key].shape)}) but the model is built for {tensor.shape[0]}; "
                       "set head: replace to fine-tune its backbone on the data's classes (or model.num_classes, "
                       "or use data with the checkpoint's classes)")
            else:
                msg = (f"checkpoint {origin} does not match the architecture: key '{key}' has shape "
                       f"{tuple(state[key].shape)} in the checkpoint and {tuple(tensor.shape)} in the model")
            raise CheckpointError(msg)
    if getattr(state, "_metadata", None) is None:
        # A plain dict of tensors carries no per-module versions; modules whose loader reads them
        # (torchvision's MNASNet refuses version None) get those of the code that rebuilt them.
        versions = getattr(expected, "_metadata", None)
        if versions is not None:
            state = OrderedDict(state)
            state._metadata = versions  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=True)


def classifier_name(model: nn.Module) -> str | None:
    """Module name of the classifier: timm's ``get_classifier()``, else the last Linear/Conv2d."""
    names = {id(m): n for n, m in model.named_modules()}
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and id(head) in names and not isinstance(head, nn.Identity):
            return names[id(head)]
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            last = name
    return last


def _adapt_first_conv(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """RGB weights of the first convolution summed for a greyscale model (timm's adapt_input_conv)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            key = f"{name}.weight" if name else "weight"
            w = state.get(key)
            if (w is not None and w.ndim == 4 and w.shape[1] == 3 and module.in_channels == 1
                    and module.groups == 1 and w.shape[0] == module.out_channels):
                state[key] = w.sum(dim=1, keepdim=True)
                return [key]
            return []
    return []


def load_pretrained(model: nn.Module, state: dict[str, torch.Tensor], origin: str, head: str,
                    num_classes: int) -> dict[str, Any]:
    """Load ``state`` into a freshly built ``model``; ``head: replace`` keeps the backbone only.

    With ``replace`` every key of the classifier (see :func:`classifier_name`) is left out and the
    classifier is re-initialised for ``num_classes`` (timm models through ``reset_classifier``);
    every other key must match. RGB first-layer weights are summed for a one-channel model.

    Returns:
        what was done, for the manifest: ``head`` (kept / replaced), the classifier's name, the
        checkpoint's class count, the keys replaced and the keys adapted.
    """
    state = dict(state)
    adapted = _adapt_first_conv(model, state)
    if head == "keep":
        load_state(model, state, origin)
        return {"head": "kept", "adapted": adapted}
    name = classifier_name(model)
    if name is None:
        msg = f"head: replace: the model has no Linear or Conv2d classifier to replace (checkpoint {origin})"
        raise CheckpointError(msg)
    prefix = f"{name}."
    current = model.state_dict()
    replaced = sorted(k for k in {*state, *current} if k.startswith(prefix))
    weight = state.get(f"{prefix}weight")
    merged = {k: v for k, v in state.items() if not k.startswith(prefix)}
    merged.update({k: v for k, v in current.items() if k.startswith(prefix)})
    load_state(model, merged, origin)
    reset = getattr(model, "reset_classifier", None)
    if callable(reset):
        reset(num_classes)
    else:
        for module in model.get_submodule(name).modules():
            init = getattr(module, "reset_parameters", None)
            if callable(init):
                init()
    return {"head": "replaced", "classifier": name, "replaced_keys": replaced, "adapted": adapted,
            "checkpoint_classes": int(weight.shape[0]) if weight is not None and weight.ndim else None,
            "classes": num_classes}


def torchvision_weights_file(arch: str, name: str) -> tuple[Path, str]:
    """(file in the local torch hub cache, its download address) of torchvision weights ``arch``/``name``.

    Raises:
        CheckpointError: unknown weight name (the known ones listed), or the file is not in the cache
            (saying where to put it; nothing is downloaded).
    """
    from urllib.parse import urlparse

    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError) as err:
        msg = f"model.weights: torchvision {arch} has no pretrained weights"
        raise CheckpointError(msg) from err
    known = [w.name for w in enum]
    if name not in known:
        msg = f'model.weights: torchvision {arch} has no weights "{name}"{did_you_mean(name, known)}; known: {", ".join(known)}'
        raise CheckpointError(msg)
    url = enum[name].url
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(urlparse(url).path).name
    if not path.is_file():
        msg = (f"model.weights {name}: {path.name} is not in the local torch hub cache {folder} and nothing is "
               f"downloaded; put the file there (from {url}), or set TORCH_HOME to the folder holding "
               "hub/checkpoints, or give the file with model.checkpoint")
        raise CheckpointError(msg)
    return path, url


def load_source_weights(model: nn.Module, source: ModelSource, num_classes: int) -> dict[str, Any] | None:
    """Load the source's pretrained weights (checkpoint file or torchvision weight name) into ``model``.

    Returns:
        the weights' provenance for the manifest (origin, file, sha256, and what ``head`` did), or
        None when the source has no weights.
    """
    from compressor.core.artifacts import sha256_file

    if source.weights is not None:
        assert source.arch is not None
        path, url = torchvision_weights_file(source.arch, source.weights)
        origin = f"torchvision {source.arch} {source.weights}"
    elif source.checkpoint is not None:
        path, url, origin = source.checkpoint_file() or source.checkpoint, None, "checkpoint"
    else:
        return None
    record = load_pretrained(model, read_state_dict(path), str(path), source.head, num_classes)
    return {"origin": origin, "file": str(path), "sha256": sha256_file(path), **({"url": url} if url else {}),
            **record}


# --- the saved form of a model artifact --------------------------------------------------------
# A model artifact is a state dict plus JSON metadata: ``spec`` (the ModelSource without checkpoint),
# ``num_classes``, ``in_channels`` and, after structural pruning (or any change of shapes), ``structure``:
# module name -> what differs from the architecture rebuilt from ``spec``: the shapes of its own
# parameters and buffers and its plain attributes (in_channels, out_channels, groups, num_features,
# normalized_shape, stride, ...). Rebuilding gives each such module those shapes and attributes in
# place, so every module keeps its class (a Conv2d subclass stays that subclass) and no class is ever
# unpickled. This follows Torch-Pruning's own ``tp.state_dict`` / ``tp.load_state_dict``, which restore
# each module's ``__dict__`` from a pickle; here only JSON-able values are stored.

# Attributes never recorded: nn.Module bookkeeping that is not a shape.
_SKIP_ATTRS = frozenset({"training"})


def _plain(value: Any) -> bool:
    """A value JSON stores exactly: None, bool, int, float, str, or (nested) tuples/lists of them."""
    if value is None or isinstance(value, bool | int | float | str):
        return not (isinstance(value, float) and not math.isfinite(value))
    if isinstance(value, tuple | list):
        return all(_plain(v) for v in value)
    return False


def _as_json(value: Any) -> Any:
    return [_as_json(v) for v in value] if isinstance(value, tuple | list) else value


def _like(value: Any, reference: Any) -> Any:
    """``value`` read back from JSON, with tuples where the rebuilt module has tuples."""
    if not isinstance(value, list):
        return value
    refs = list(reference) if isinstance(reference, tuple | list) and len(reference) == len(value) else [None] * len(value)
    items = [_like(v, r) for v, r in zip(value, refs, strict=True)]
    return tuple(items) if isinstance(reference, tuple) else items


def module_state(module: nn.Module) -> dict[str, dict[str, Any]]:
    """Shapes of a module's own parameters and buffers and its plain attributes (JSON-ready)."""
    return {
        "params": {k: None if p is None else list(p.shape) for k, p in module._parameters.items()},
        "buffers": {k: None if b is None else list(b.shape) for k, b in module._buffers.items()},
        "attrs": {k: _as_json(v) for k, v in vars(module).items()
                  if k not in _SKIP_ATTRS and not k.startswith("__") and _plain(v)},
    }


_MISSING = object()


def structure_of(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, Any]]:
    """What differs between ``model`` and ``reference`` (the same architecture rebuilt from its source).

    Returns:
        module name -> ``{"type": class name, "params": {name: shape}, "buffers": {name: shape},
        "attrs": {name: value}}`` with only the entries that differ.

    Raises:
        ModelSourceError: ``model`` has a module the rebuilt architecture lacks or of another class,
            or a non-persistent buffer whose shape changed (its values are not in the state dict).
    """
    ref = dict(reference.named_modules())
    changed: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        other = ref.get(name)
        if other is None or type(other) is not type(module):
            what = "has no such module" if other is None else f"has a {type(other).__name__} there"
            msg = (f"module '{name}' ({type(module).__name__}) cannot be saved: the architecture rebuilt from "
                   f"its source {what}; only shapes and attributes of existing modules can change")
            raise ModelSourceError(msg)
        mine, theirs = module_state(module), module_state(other)
        diff: dict[str, Any] = {}
        for section in ("params", "buffers", "attrs"):
            delta = {k: v for k, v in mine[section].items() if theirs[section].get(k, _MISSING) != v}
            if delta:
                diff[section] = delta
        for key in diff.get("buffers", {}):
            if key in module._non_persistent_buffers_set:
                msg = (f"module '{name}' ({type(module).__name__}): non-persistent buffer '{key}' changed shape "
                       "and cannot be saved (its values are not in the state dict); leave the module whole")
                raise ModelSourceError(msg)
        if diff:
            changed[name] = {"type": type(module).__name__, **diff}
    return changed


def apply_structure(model: nn.Module, structure: dict[str, dict[str, Any]]) -> None:
    """Give each recorded module its recorded parameter/buffer shapes and attributes, in place.

    Parameters and buffers become uninitialised tensors of the recorded shapes (dtype and
    ``requires_grad`` kept); loading the state dict fills them.
    """
    modules = dict(model.named_modules())
    for name, record in structure.items():
        module = modules.get(name)
        if module is None or type(module).__name__ != record.get("type", type(module).__name__):
            found = "no such module" if module is None else f"a {type(module).__name__}"
            msg = (f"saved structure names module '{name}' ({record.get('type')}) but the rebuilt architecture "
                   f"has {found}; was the model source changed since the artifact was made?")
            raise ModelSourceError(msg)
        for key, shape in record.get("params", {}).items():
            old = module._parameters.get(key)
            if shape is None:
                module._parameters[key] = None
                continue
            dtype = old.dtype if old is not None else torch.get_default_dtype()
            grad = old.requires_grad if old is not None else True
            module._parameters[key] = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=grad)
        for key, shape in record.get("buffers", {}).items():
            old_buf = module._buffers.get(key)
            dtype = old_buf.dtype if old_buf is not None else torch.get_default_dtype()
            module._buffers[key] = None if shape is None else torch.zeros(shape, dtype=dtype)
        for key, value in record.get("attrs", {}).items():
            setattr(module, key, _like(value, getattr(module, key, None)))


def model_meta(source: ModelSource, num_classes: int, in_channels: int,
               structure: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        # what rebuilds the architecture: the weights' origin is recorded apart (meta "pretrained")
        "spec": source.model_dump(mode="json", exclude={"checkpoint", "weights", "head"}),
        "num_classes": num_classes,
        "in_channels": in_channels,
        "structure": structure or {},
    }


def build_from_meta(meta: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture a model artifact describes (weights not loaded)."""
    source = ModelSource.model_validate(meta["spec"])
    model = build_model(source, meta["num_classes"], meta["in_channels"])
    if meta.get("embedding"):  # structure names are those of the embedding net, so wrap first
        from compressor.train.embedding import embedding_net

        model = embedding_net(model, meta["embedding"])
    if meta.get("structure"):
        apply_structure(model, meta["structure"])
    return model


def write_weights(model: nn.Module, path: Path) -> None:
    from compressor.core.artifacts import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_model_artifact(meta: dict[str, Any], weights: Path) -> nn.Module:
    model = build_from_meta(meta)
    load_state(model, read_state_dict(weights), str(weights))
    model.eval()
    return model


def load_stage_model(ctx: StageContext, artifact: Artifact) -> nn.Module:
    """The PyTorch model of a ``model`` artifact, rebuilt from its metadata and weights."""
    return load_model_artifact(artifact.meta, artifact.path(ctx.cache_root, "weights"))


def save_stage_model(ctx: StageContext, model: nn.Module, meta: dict[str, Any]) -> Artifact:
    """Write ``model``'s weights into the stage folder; MACs and parameters join ``meta``."""
    from compressor.metrics.classification import count_macs, count_params

    write_weights(model, ctx.out_dir / "model.pt")
    shape = tuple(ctx.data.input_shape)
    stats = {"macs": count_macs(model, shape), "params": count_params(model), "input_shape": list(shape)}
    return ctx.new_artifact("model", {"weights": "model.pt"}, {**meta, **stats})
