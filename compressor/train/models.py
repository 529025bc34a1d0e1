"""Model sources, checkpoints, and the saved form of a model that reloads without pickled classes."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.core.artifacts import Artifact
from compressor.core.config import ModelSource
from compressor.core.context import StageContext
from compressor.core.readers import read_checkpoint
from compressor.errors import CheckpointError, ModelSourceError, did_you_mean


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


def build_model(source: ModelSource, num_classes: int, in_channels: int) -> nn.Module:
    """Build an untrained model from a torchvision name or an entry point."""
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
        factory = getattr(module, attr, None)
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


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only=True``, every tensor finite); errors name the file and the fix."""
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
                       "set model.num_classes or use data with the checkpoint's classes")
            else:
                msg = (f"checkpoint {origin} does not match the architecture: key '{key}' has shape "
                       f"{tuple(state[key].shape)} in the checkpoint and {tuple(tensor.shape)} in the model")
            raise CheckpointError(msg)
    model.load_state_dict(state, strict=True)


# --- the saved form of a model artifact --------------------------------------------------------
# A model artifact is a state dict plus JSON metadata: ``spec`` (the ModelSource without checkpoint),
# ``num_classes``, ``in_channels`` and, after structural pruning, ``structure``: module name ->
# constructor arguments of the layers whose shapes changed. Rebuilding never unpickles a class.

LAYER_TYPES: dict[str, type[nn.Module]] = {
    "Conv2d": nn.Conv2d, "Linear": nn.Linear, "BatchNorm2d": nn.BatchNorm2d, "BatchNorm1d": nn.BatchNorm1d,
    "LayerNorm": nn.LayerNorm, "GroupNorm": nn.GroupNorm, "PReLU": nn.PReLU,
}


def layer_args(module: nn.Module) -> dict[str, Any] | None:
    """Constructor arguments that rebuild ``module`` with its current shapes, or None if unsupported."""
    if isinstance(module, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
                "dilation": list(module.dilation), "groups": module.groups, "bias": module.bias is not None,
                "padding_mode": module.padding_mode}
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        return {"type": type(module).__name__, "num_features": module.num_features, "eps": module.eps,
                "momentum": module.momentum, "affine": module.affine,
                "track_running_stats": module.track_running_stats}
    if isinstance(module, nn.LayerNorm):
        return {"type": "LayerNorm", "normalized_shape": list(module.normalized_shape), "eps": module.eps,
                "elementwise_affine": module.elementwise_affine}
    if isinstance(module, nn.GroupNorm):
        return {"type": "GroupNorm", "num_groups": module.num_groups, "num_channels": module.num_channels,
                "eps": module.eps, "affine": module.affine}
    if isinstance(module, nn.PReLU):
        return {"type": "PReLU", "num_parameters": module.num_parameters}
    return None


def structure_of(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, Any]]:
    """Layers of ``model`` whose constructor arguments differ from those in ``reference``."""
    ref = dict(reference.named_modules())
    changed = {}
    for name, module in model.named_modules():
        args = layer_args(module)
        if args is not None and (name not in ref or layer_args(ref[name]) != args):
            changed[name] = args
    return changed


def apply_structure(model: nn.Module, structure: dict[str, dict[str, Any]]) -> None:
    """Replace layers in ``model`` by new ones built from recorded constructor arguments."""
    for name, args in structure.items():
        kwargs = dict(args)
        cls = LAYER_TYPES[kwargs.pop("type")]
        for key in ("kernel_size", "stride", "dilation", "normalized_shape"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        if isinstance(kwargs.get("padding"), list):
            kwargs["padding"] = tuple(kwargs["padding"])
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, cls(**kwargs))


def model_meta(source: ModelSource, num_classes: int, in_channels: int,
               structure: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "spec": source.model_dump(mode="json", exclude={"checkpoint"}),
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
