"""Converter failures as :class:`ExportError` naming the format, the operator and the module it came from."""

from __future__ import annotations

import re
from typing import Any

from compressor.errors import ExportError

# Operator names as converters spell them: "aten::histc" (OpenVINO), "aten.histc.default" (litert-torch),
# "ONNX export of operator adaptive_avg_pool2d" (torch.onnx's TorchScript exporter).
_OP_PATTERN = re.compile(r"\baten(?:::|\.)(_?[A-Za-z0-9_]+)|\bONNX export of operator (_?[A-Za-z0-9_]+)")


def failed_op(message: str) -> str | None:
    """The first ATen operator named in a converter's message, without namespace or overload."""
    match = _OP_PATTERN.search(message)
    return (match.group(1) or match.group(2)) if match else None


def module_of_op(model: Any, example: Any, op: str) -> str | None:
    """Path and class of the module that calls ``op`` (from ``torch.export``'s module stack), if found."""
    import torch

    try:
        program = torch.export.export(model, (example,))
    except Exception:  # noqa: BLE001 - best effort: the converter's own error is what matters
        return None
    wanted = op.lstrip("_")
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target).split(".")
        if len(name) >= 2 and name[1].lstrip("_") == wanted:
            stack = list(node.meta.get("nn_module_stack", {}).values())
            if stack:
                path, cls = stack[-1]
                cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
                return f"'{path or '<root>'}' ({cls_name.rsplit('.', 1)[-1]})"
    return None


def converter_error(fmt: str, err: BaseException, model: Any = None, example: Any = None,
                    hint: str = "") -> ExportError:
    """An :class:`ExportError` for a failed conversion, naming format, operator and module where possible."""
    text = str(err)
    op = failed_op(text)
    if op is not None:
        where = module_of_op(model, example, op) if model is not None else None
        msg = (f"{fmt} export failed: the converter cannot handle operator aten::{op}"
               f"{' in module ' + where if where else ''}; replace that operation or choose another format")
    else:
        first = next((line for line in text.splitlines() if line.strip()), type(err).__name__)
        msg = f"{fmt} export failed: {first}"
    if hint:
        msg += f" ({hint})"
    return ExportError(msg)
