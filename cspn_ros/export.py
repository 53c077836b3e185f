"""ONNX export of a DepthCompleter's network, propagation unrolled, for onnxruntime / TensorRT.

The graph: inputs `rgb` (B, 3, H, W) float32 in [0, 1] and `sparse` (B, 1, H, W) float32 metres
(0 = missing; map NaN/inf/<= 0 to 0 first, as DepthCompleter does); outputs `depth`,
`confidence` and `depth_init` (before propagation), (B, 1, H, W) float32 (metres, [0, 1],
metres). The propagation steps are unrolled at the completer's current `steps`. By default
B = 1 and (H, W) are fixed; dynamic=True exports B, H, W as dynamic axes (the network pads to a
multiple of 32 inside the graph).

propagation=False exports the network before propagation (`CompletionNet.predict`, what the
onnxruntime backend runs): inputs `rgb`, `sparse` and `scale` (B, 1, 1, 1) metres
(`CompletionNet.depth_scale`), outputs PREDICT_OUTPUT_NAMES (initial depth in metres, not
clamped; raw guidance; confidence).

Uses the TorchScript-based exporter (`dynamo=False`): the torch.export-based one needs
onnxscript, which this package does not depend on. NLSPN needs GridSample, so opset >= 16.

TensorRT: build an engine from the exported file on the target machine, e.g.
    trtexec --onnx=cspn.onnx --saveEngine=cspn.plan --fp16
(for a dynamic export add --minShapes/--optShapes/--maxShapes=rgb:1x3xHxW,sparse:1x1xHxW).
Propagation is a long chain of small elementwise ops; check the fp16 engine's error against
the fp32 one on real frames before deploying it.

Command line: python -m cspn_ros.export CHECKPOINT OUT.onnx --height H --width W
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from torch import nn

from cspn_ros.model.completer import DepthCompleter

INPUT_NAMES = ('rgb', 'sparse')
OUTPUT_NAMES = ('depth', 'confidence', 'depth_init')
PREDICT_INPUT_NAMES = INPUT_NAMES + ('scale',)
PREDICT_OUTPUT_NAMES = ('depth_init', 'guidance', 'confidence')


class _NamedOutputs(nn.Module):
    """The network with a tuple output (OUTPUT_NAMES) that ONNX can name."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, rgb: torch.Tensor,
                sparse: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.network(rgb, sparse)
        return tuple(outputs[name] for name in OUTPUT_NAMES)


class _Predict(nn.Module):
    """The network before propagation (CompletionNet.predict) as a traceable module."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, rgb: torch.Tensor, sparse: torch.Tensor,
                scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.network.predict(rgb, sparse, scale)


def to_onnx(completer: DepthCompleter, path: str | Path, height: int, width: int,
            opset: int = 17, dynamic: bool = False, propagation: bool = True) -> Path:
    """Write completer's network as ONNX to path for (height, width) pixel inputs; returns path.

    The network runs in float32 on the completer's device during the trace. Raises ValueError
    for the classical completer (it has no network) or an opset below 16.
    """
    if completer.model is None:
        raise ValueError(f'propagation {completer.config.propagation!r} has no network to export')
    if opset < 16:
        raise ValueError(f'opset {opset} lacks GridSample (NLSPN); use opset >= 16')
    path = Path(path)
    device = completer.device
    example = (torch.rand(1, 3, height, width, device=device),
               torch.rand(1, 1, height, width, device=device) * 10)
    inputs, outputs = INPUT_NAMES, OUTPUT_NAMES
    wrapper = _NamedOutputs(completer.model).eval()
    if not propagation:
        example += (torch.full((1, 1, 1, 1), 5.0, device=device),)
        inputs, outputs = PREDICT_INPUT_NAMES, PREDICT_OUTPUT_NAMES
        wrapper = _Predict(completer.model).eval()
    axes = {0: 'batch', 2: 'height', 3: 'width'}
    dynamic_axes = ({name: {0: 'batch'} if name == 'scale' else axes for name in inputs + outputs}
                    if dynamic else None)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings('ignore', category=DeprecationWarning)  # legacy exporter notice
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning)
        warnings.filterwarnings('ignore', message='Constant folding')  # strided slices, harmless
        torch.onnx.export(wrapper, example, str(path), input_names=list(inputs),
                          output_names=list(outputs), opset_version=opset,
                          dynamic_axes=dynamic_axes, dynamo=False)
    return path


def main(argv: list[str] | None = None) -> None:
    """Export a checkpoint (or 'default' for the packaged weights) to ONNX."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint', help="checkpoint file, or 'default'")
    parser.add_argument('output', help='ONNX file to write')
    parser.add_argument('--height', type=int, required=True)
    parser.add_argument('--width', type=int, required=True)
    parser.add_argument('--steps', type=int, help='propagation steps to unroll (default: trained)')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--dynamic', action='store_true', help='dynamic batch, height, width')
    args = parser.parse_args(argv)
    completer = DepthCompleter.from_checkpoint(None if args.checkpoint == 'default'
                                               else args.checkpoint)
    if args.steps is not None:
        completer.steps = args.steps
    out = to_onnx(completer, args.output, args.height, args.width, args.opset, args.dynamic)
    print(f'wrote {out} ({completer.config.propagation}, {completer.steps} steps)')


if __name__ == '__main__':
    main()
