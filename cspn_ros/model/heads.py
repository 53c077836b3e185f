"""Full-resolution prediction heads on the UNet features.

The network uses three: initial depth (1 channel, normalised depth), guidance (the propagation's
affinity logits, `guidance_channels(config)`), and confidence (1 channel logit; the network applies
the sigmoid).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cspn_ros.model.backbone import conv_bn_relu, folded_conv_bn


class ConvHead(nn.Sequential):
    """(B, in_channels, H, W) -> (B, out_channels, H, W): 3x3 conv + BN + ReLU, then a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, bias: float = 0.0) -> None:
        super().__init__(conv_bn_relu(in_channels, in_channels),
                         nn.Conv2d(in_channels, out_channels, 3, padding=1))
        nn.init.constant_(self[-1].bias, bias)


def merged_heads(heads: list[ConvHead], features: torch.Tensor) -> list[torch.Tensor]:
    """[head(features) for head in heads] (eval mode) from two convolutions in all: the heads'
    first layers (batch norm folded in) stacked into one, their last layers as one
    block-diagonal convolution over the stacked hidden features. The same function up to float
    rounding; the form the ONNX export takes, because onnxruntime's blocked (NCHWc)
    convolutions run one 3x8-channel layer faster than three half-empty 8-channel ones and
    convert layouts once instead of per head."""
    with torch.no_grad():
        folded = [folded_conv_bn(head[0]) for head in heads]
        last = [head[-1] for head in heads]
        width = last[0].in_channels
        first_weight, first_bias, last_weight, last_bias = (_constant(t) for t in (
            torch.cat([weight for weight, _ in folded]), torch.cat([bias for _, bias in folded]),
            torch.cat([F.pad(conv.weight, (0, 0, 0, 0, index * width,
                                           (len(heads) - 1 - index) * width))
                       for index, conv in enumerate(last)]),
            torch.cat([conv.bias for conv in last])))
    hidden = F.relu(F.conv2d(features, first_weight, first_bias, padding=1))
    outputs = F.conv2d(hidden, last_weight, last_bias, padding=1)
    return list(outputs.split([conv.out_channels for conv in last], dim=1))


def _constant(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of tensor that a trace (ONNX export) records as a constant, not as the ops that
    made it."""
    return torch.from_numpy(tensor.detach().cpu().numpy().copy()).to(tensor.device)
