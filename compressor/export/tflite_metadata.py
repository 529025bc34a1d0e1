"""Class names and preprocessing inside a ``.tflite`` flatbuffer (its ``metadata`` table), read back without TF.

The JSON document is stored as one buffer under the metadata name ``compressor``; any flatbuffer reader
with the TFLite schema finds it (``Model.metadata[i].name == "compressor"`` -> ``buffers[i].data``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METADATA_NAME = "compressor"


def embed_metadata(model_bytes: bytes, doc: dict[str, Any]) -> bytes:
    """A copy of the flatbuffer ``model_bytes`` with ``doc`` as JSON metadata (replacing an earlier one)."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    # Large constants may live after the flatbuffer, addressed by (offset, size) from the file's start
    # (ai-edge-quantizer writes FP16 weights that way); repacking moves them, so inline them first.
    for buf in model.buffers or []:
        if buf.offset > 1:
            buf.data = np.frombuffer(model_bytes, dtype=np.uint8, count=buf.size, offset=buf.offset)
            buf.offset, buf.size = 0, 0
    data = np.frombuffer(json.dumps(doc, sort_keys=True).encode(), dtype=np.uint8)
    buffer = schema.BufferT()
    buffer.data = data
    model.buffers = list(model.buffers or [])
    metadata = [m for m in (model.metadata or []) if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers)
    model.buffers.append(buffer)
    model.metadata = [*metadata, entry]
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(path: Path) -> dict[str, Any] | None:
    """The ``compressor`` metadata of a ``.tflite`` file, or None when it has none."""
    from ai_edge_litert import schema_py_generated as schema

    buf = bytearray(Path(path).read_bytes())
    model = schema.Model.GetRootAs(buf, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return dict(json.loads(bytes(data).decode()))
    return None
