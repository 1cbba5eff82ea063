"""Export a trained encoder to ONNX or TorchScript.

The exported graph takes float32 images in [0, 1], shaped [B, C, H, W] at the training size, applies the recorded
preprocessing (ink inversion, normalization) and returns embeddings [B, D]. A JSON file beside it records the input
shape and preprocessing so other runtimes can prepare images the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_write_path, atomic_write_text
from .engine.build import Model, load_model


class ExportedEncoder(nn.Module):
    """Preprocessing + encoder as one plain module with the trained tensors copied in."""

    def __init__(self, model: Model):
        super().__init__()
        import copy

        self.encoder = copy.deepcopy(model.encoder).to("cpu").to(memory_format=torch.contiguous_format)
        state = {k[len("encoder."):]: v.detach().cpu() for k, v in model.state_tensors().items()
                 if k.startswith("encoder.")}
        self.encoder.load_state_dict(state)
        self.encoder.eval()
        p = model.preprocess
        c = model.image_shape[0]
        self.invert = bool(p.invert)
        self.register_buffer("mean", torch.tensor(p.mean or [0.0] * c).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(p.std or [1.0] * c).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = 1.0 - images if self.invert else images
        return self.encoder((x - self.mean) / self.std)


def export(run: str | Path, fmt: str, out: str | Path | None = None, which: str = "latest") -> Path:
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"--format must be onnx or torchscript, got {fmt!r}")
    model, info = load_model(run, "cpu", which)
    module = ExportedEncoder(model).eval()
    example = torch.rand(2, *model.image_shape)
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    out = Path(out) if out else Path(run) / f"encoder{suffix}"
    with atomic_write_path(out) as tmp:
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(module, example)
            traced.save(str(tmp))
        else:
            try:
                import onnx  # noqa: F401
            except ImportError as e:
                raise ImportError("ONNX export needs the onnx extra: pip install 'metassl[onnx]'") from e
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(module, (example,), str(tmp), input_names=["images"], output_names=["embeddings"],
                              dynamic_shapes={"images": {0: batch}}, dynamo=True, external_data=False, verbose=False)
    meta = {"format": fmt, "input": {"name": "images", "shape": ["batch", *model.image_shape], "dtype": "float32",
                                     "range": [0.0, 1.0]},
            "preprocess_inside": model.preprocess.to_dict(), "output": "embeddings [batch, D]",
            "checkpoint": info["checkpoint"], "learner": model.config.learner.name,
            "backbone": model.config.model.backbone}
    atomic_write_text(out.with_suffix(out.suffix + ".json"), json.dumps(meta, indent=1) + "\n")
    return out
