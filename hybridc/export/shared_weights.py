"""An analog block's weights stored once: the step ONNX file reads them from the block's safetensors file.

An export writes each analog block's synapse weights as safetensors (what a hardware flow programs) and an
ONNX file of one relaxation step, which needs the same tensors. Embedded in both, every analog weight was
stored twice (ResNet-18: 92 MB). ONNX's external-data mechanism names a file, a byte offset and a length
per initializer, and a safetensors file is a JSON header followed by the raw little-endian tensor bytes, so
the step file's initializers that are byte-identical to a safetensors tensor are pointed into it instead
(found by content, so a constant the ONNX optimizer changed — a transposed weight — simply stays embedded).
onnxruntime and `onnx.load` read such a file from its directory like any model with external data.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

__all__ = ["safetensors_layout", "share_weights"]


def safetensors_layout(path: Path) -> dict[str, tuple[int, int]]:
    """Tensor name -> (absolute byte offset, length) of the data in safetensors file `path`."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    base = 8 + n
    return {
        k: (base + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0])
        for k, v in header.items()
        if k != "__metadata__"
    }


def share_weights(onnx_path: Path, weights_path: Path, min_bytes: int = 64) -> int:
    """Point every float initializer of `onnx_path` whose bytes equal a tensor of `weights_path` (same
    directory) into that file; returns how many bytes the ONNX file no longer embeds. Tensors under
    `min_bytes` stay embedded (not worth a reference)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    onnx_path, weights_path = Path(onnx_path), Path(weights_path)
    if onnx_path.parent != weights_path.parent:
        raise ValueError("the ONNX file and the weights file must share a directory")
    layout = safetensors_layout(weights_path)
    data = weights_path.read_bytes()
    by_digest = {
        hashlib.sha256(data[o : o + n]).digest(): (o, n) for o, n in layout.values() if n >= min_bytes
    }
    model = onnx.load(str(onnx_path), load_external_data=False)
    saved = 0
    for init in model.graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        raw = numpy_helper.to_array(init).astype("<f4", copy=False)
        blob = np.ascontiguousarray(raw).tobytes()
        hit = by_digest.get(hashlib.sha256(blob).digest()) if len(blob) >= min_bytes else None
        if hit is None:
            continue
        offset, length = hit
        init.ClearField("raw_data")
        init.ClearField("float_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", weights_path.name), ("offset", str(offset)), ("length", str(length))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        saved += length
    if saved:
        # serialised directly: onnx.save would try to (re)write the external data itself
        onnx_path.write_bytes(model.SerializeToString())
    return saved
