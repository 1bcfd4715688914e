"""Export a trained torch model to ONNX bytes that onnxruntime can serve at once."""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

from veil.sdk.errors import VeilError

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_onnx"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_OPSET = 17


def export_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """Serialise ``model`` (eval mode, float32 input ``(batch, *input_shape)``) to ONNX bytes.

    Uses torch's TorchScript exporter (``dynamo=False``): torch 2.13's default dynamo exporter
    needs the ``onnxscript`` package, which the enclave image does not ship. The graph is checked
    with ``onnx.checker`` before it is returned; the batch axis is dynamic.
    """
    model = model.eval()
    example = torch.zeros((1, *input_shape), dtype=torch.float32)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
            torch.onnx.export(
                model,
                (example,),
                buf,  # type: ignore[arg-type]
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=_OPSET,
            )
        data = buf.getvalue()
        onnx.checker.check_model(onnx.load_from_string(data))
    except (RuntimeError, onnx.checker.ValidationError) as exc:
        raise VeilError(f"trained model could not be exported to ONNX: {exc}") from exc
    return data
