"""Full-resolution prediction heads on the UNet features.

The network uses three: initial depth (1 channel, normalised depth), guidance (the propagation's
affinity logits, `guidance_channels(config)`), and confidence (1 channel logit; the network applies
the sigmoid).
"""
from __future__ import annotations

from torch import nn

from cspn_ros.model.backbone import conv_bn_relu


class ConvHead(nn.Sequential):
    """(B, in_channels, H, W) -> (B, out_channels, H, W): 3x3 conv + BN + ReLU, then a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, bias: float = 0.0) -> None:
        super().__init__(conv_bn_relu(in_channels, in_channels),
                         nn.Conv2d(in_channels, out_channels, 3, padding=1))
        nn.init.constant_(self[-1].bias, bias)
