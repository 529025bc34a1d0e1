"""Artifacts: what stages hand each other, and how they are written safely.

An artifact lives in one cache folder (named by the key of the stage that made
it) and names its files relative to that folder, so a cache can be moved or
restored elsewhere. Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from compressor.errors import CompressorError

KINDS = ("model", "onnx", "openvino", "tflite", "report")


class Artifact(BaseModel):
    """A stage's product: a model in some format, with what a consumer needs to run it.

    Attributes:
        kind: one of ``KINDS``.
        id: key of the stage that produced it (passed through unchanged by stages that only measure).
        folder: cache folder name holding its files.
        files: role -> file name inside ``folder`` (``weights``, ``model``, ``xml``, ...).
        meta: format details: precision, input shape and layout, class names, preprocessing,
            the id of the PyTorch model it came from (``source_model``), MACs and parameters.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str
    id: str
    folder: str
    files: dict[str, str] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)

    def path(self, cache_root: Path, role: str | None = None) -> Path:
        """Absolute path of one file (the first if ``role`` is None)."""
        if role is None:
            role = next(iter(self.files))
        return cache_root / self.folder / self.files[role]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON document with sorted keys: the basis of cache keys."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary path beside ``path``, fsync it, then rename it into place.

    An interrupted or failed write leaves ``path`` as it was. ``OSError`` such as a full disk
    becomes a :class:`CompressorError` naming the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        msg = f"could not write {path}: {err.strerror or err}; free space or choose another output folder"
        raise CompressorError(msg) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))
