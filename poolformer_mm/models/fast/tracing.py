"""When the fast modules step aside for the reference computation."""
import torch


def is_recording() -> bool:
    """Whether TorchScript tracing, ONNX export or ``torch.compile`` is
    recording the network: an autograd function or a private op would be
    an opaque node there, so the fast modules run the reference
    ``forward`` instead."""
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())
