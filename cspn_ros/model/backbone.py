"""UNet encoder-decoder with a ResNet-18/34-style encoder, in plain torch.

Resolutions (input H, W must be multiples of 32): a full-resolution stem, four ResNet stages at
1/2, 1/4, 1/8, 1/16 and one bottleneck block at 1/32; the decoder upsamples x2 with a skip
connection at every level back to full resolution. Channels: stem width/2, stages width x
(1, 2, 4, 8), bottleneck 8 * width; decoder mirrors them and ends with width/2 channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: BasicBlocks per encoder stage, as in ResNet-18 / ResNet-34.
ENCODER_BLOCKS = {'resnet18': (2, 2, 2, 2), 'resnet34': (3, 4, 6, 3)}


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def folded_conv_bn(block: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one convolution computing conv_bn_relu's convolution and eval-mode
    batch norm (the ReLU left out)."""
    conv, batch_norm = block[0], block[1]
    scale = batch_norm.weight / torch.sqrt(batch_norm.running_var + batch_norm.eps)
    return (conv.weight * scale.view(-1, 1, 1, 1),
            batch_norm.bias - batch_norm.running_mean * scale)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, out_channels, stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


def resnet_stage(in_channels: int, out_channels: int, blocks: int) -> nn.Sequential:
    """`blocks` BasicBlocks, the first one halving the resolution."""
    return nn.Sequential(BasicBlock(in_channels, out_channels, stride=2),
                         *(BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)))


class UpBlock(nn.Module):
    """x2 bilinear upsampling, concatenation with the skip features, 3x3 conv + BN + ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fuse = conv_bn_relu(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode='bilinear', align_corners=False)
        if torch.onnx.is_in_onnx_export() and not self.training:
            return self._split_fuse(x, skip)
        return self.fuse(torch.cat([x, skip], dim=1))

    def _split_fuse(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """fuse(cat([x, skip])) in eval mode as conv(x) + conv(skip) with the batch norm folded
        in (same function up to float rounding): no concatenation, which onnxruntime's blocked
        (NCHWc) convolutions cannot take where skip has fewer channels than a block, so the
        exported graph skips two layout conversions per level (about 10 % less time for the
        network before propagation at 640x480 on the 2-core VM)."""
        weight, bias = folded_conv_bn(self.fuse)
        channels = x.shape[1]
        return F.relu(F.conv2d(x, weight[:, :channels], bias, padding=1)
                      + F.conv2d(skip, weight[:, channels:], padding=1))


class UNet(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H, W) features; H, W multiples of 32."""

    def __init__(self, in_channels: int, width: int = 16, encoder: str = 'resnet18') -> None:
        super().__init__()
        blocks = ENCODER_BLOCKS[encoder]
        channels = [width // 2, width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.out_channels = channels[0]
        self.stem = conv_bn_relu(in_channels, channels[0])
        self.encoder = nn.ModuleList(
            resnet_stage(channels[i], channels[i + 1], count)
            for i, count in enumerate((*blocks, 1)))
        self.decoder = nn.ModuleList(
            UpBlock(channels[i + 1], channels[i], channels[i]) for i in reversed(range(5)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for stage in self.encoder:
            skips.append(stage(skips[-1]))
        x = skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return x
