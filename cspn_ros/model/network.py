"""CompletionNet: RGB + sparse depth -> UNet -> initial depth, guidance, confidence -> propagation.

Depths enter and leave in metres (0 = missing). Inside, the UNet sees depths divided by a per-frame
scale (config.depth_normalization): 'median' = median of the valid input depths (so the network is
range-agnostic and scaling the input depths by s scales the output by s), 'fixed' = depth_scale.
The initial depth head predicts normalised depth, as a residual over a base when there is one:
the kernel-regression fill (initial_fill='kernel_regression'), the weight-free nearest-depth fill
(initial_fill='morphological') or the input depth itself (task='refinement'). With
residual='log' the depths the UNet sees are log(depth / scale) (0 where missing, with the validity
mask beside them) and the head's output is a bounded factor on the base:
init = base * exp(max_log_residual * tanh(head)). Propagation runs in metres at the input size,
in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cspn_ros.config import ModelConfig
from cspn_ros.model.backbone import UNet, conv_bn_relu
from cspn_ros.model.heads import ConvHead, merged_heads
from cspn_ros.model.morphological_fill import interpolation_fill, nearest_depth_fill
from cspn_ros.model.propagation import build_propagation

#: The UNet downsamples 5 times; inputs are padded to a multiple of this.
SIZE_MULTIPLE = 32
#: ImageNet statistics used to standardise the [0, 1] RGB input.
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


def median_valid_depth(sparse: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) metres, 0 = missing -> (B,1,1,1) lower median of the valid depths (1 if none).

    Traced, compiled or on a GPU: sort + gather of the whole frame (static shapes, so the graph
    exports to ONNX and captures into CUDA graphs). Eager on the CPU: a selection over the valid
    depths only (same value, about 20 ms less at 640x480).
    """
    if sparse.device.type == 'cpu' and not (torch.jit.is_tracing()
                                            or torch.compiler.is_compiling()):
        medians = [row[row > 0].kthvalue((int((row > 0).sum()) + 1) // 2).values
                   if bool((row > 0).any()) else torch.ones((), dtype=sparse.dtype)
                   for row in sparse.flatten(1)]
        return torch.stack(medians).view(-1, 1, 1, 1)
    flat = sparse.flatten(1)
    valid = flat > 0
    count = valid.sum(dim=1, keepdim=True)
    ordered = torch.where(valid, flat, torch.full_like(flat, float('inf'))).sort(dim=1).values
    median = ordered.gather(1, (count - 1).clamp_min(0) // 2)
    return torch.where(count > 0, median, torch.ones_like(median)).view(-1, 1, 1, 1)


def _log_depth(normalized: torch.Tensor) -> torch.Tensor:
    """log of normalised depths (> 0), 0 where missing (<= 0)."""
    valid = normalized > 0
    return torch.where(valid, torch.log(torch.where(valid, normalized,
                                                     torch.ones_like(normalized))), 0.0)


class CompletionNet(nn.Module):
    """forward(rgb (B,3,H,W) float in [0,1], sparse (B,1,H,W) metres, 0 = missing) -> dict.

    Output dict (all (B,1,H,W) float32 unless noted, depths in metres clamped to
    [0, max_depth]): depth (after propagation), depth_init (before), confidence in [0, 1],
    guidance (B, C, H, W) raw affinity logits. Any H, W: inputs are padded to a multiple of 32
    (RGB replicated, depth with 0 = missing) and outputs cropped back.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.has_weights:
            raise ValueError("propagation='classical' has no network; use classical_fill")
        self.config = config
        self.propagation = build_propagation(config)
        self.fill = None
        base_channels = 0
        if config.initial_fill == 'kernel_regression':
            from cspn_ros.model.kernel_regression import KernelRegressionFill
            self.fill = KernelRegressionFill()
            # A light full-resolution RGB stem predicts the fill's per-pixel kernel parameters.
            self.fill_stem = nn.Sequential(
                conv_bn_relu(3, config.width // 2),
                nn.Conv2d(config.width // 2, KernelRegressionFill.feature_channels(config), 3,
                          padding=1))
            base_channels = 1
        elif config.initial_fill == 'morphological':
            base_channels = 1
        elif config.initial_fill == 'blend':
            base_channels = 2
        has_base = base_channels > 0 or config.task == 'refinement'
        # rgb, normalised sparse depth, validity mask, [kernel-regression fill]
        self.unet = UNet(3 + 2 + base_channels, config.width, config.encoder)
        features = self.unet.out_channels
        # 'blend': channel 0 the log residual, channel 1 the logit of the nearest-surface fill's
        # share against the interpolating fill's.
        self.depth_head = ConvHead(features, 2 if config.initial_fill == 'blend' else 1,
                                   bias=0.0 if has_base else 1.0)
        self.guidance_head = ConvHead(features, self.propagation.guidance_channels(config))
        self.confidence_head = ConvHead(features, 1)
        self.register_buffer('rgb_mean', torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('rgb_std', torch.tensor(RGB_STD).view(1, 3, 1, 1), persistent=False)

    def depth_scale(self, sparse: torch.Tensor) -> torch.Tensor:
        """(B,1,1,1) metres that the network's normalised depth 1.0 stands for."""
        if self.config.depth_normalization == 'median':
            return median_valid_depth(sparse)
        return torch.full_like(sparse[:, :, :1, :1], self.config.depth_scale)

    def forward(self, rgb: torch.Tensor, sparse: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.propagate(*self.predict(rgb, sparse, self.depth_scale(sparse)), sparse)

    def predict(self, rgb: torch.Tensor, sparse: torch.Tensor,
                scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Everything before propagation: rgb (B,3,H,W) [0,1], sparse (B,1,H,W) m, scale
        (B,1,1,1) m (depth_scale) -> initial depth (B,1,H,W) m (not clamped), guidance
        (B,C,H,W) raw, confidence (B,1,H,W) in [0, 1].

        The convolutional part: what the onnxruntime backend runs as a graph (scale computed
        outside, propagate in torch after it)."""
        height, width = sparse.shape[-2:]
        valid = (sparse > 0).to(rgb.dtype)
        sparse_normalized = (sparse / scale).to(rgb.dtype)
        rgb = (rgb - self.rgb_mean) / self.rgb_std
        log_residual = self.config.residual == 'log'
        inputs = [rgb, _log_depth(sparse_normalized) if log_residual else sparse_normalized, valid]
        base = sparse_normalized if self.config.task == 'refinement' else None
        if self.fill is not None:
            base = self.fill(sparse_normalized, self.fill_stem(rgb))
        elif self.config.initial_fill == 'morphological':
            base = nearest_depth_fill(sparse_normalized.float())
        elif self.config.initial_fill == 'blend':
            candidates = torch.cat([nearest_depth_fill(sparse_normalized.float()),
                                    interpolation_fill(sparse_normalized.float())], dim=1)
            log_candidates = _log_depth(candidates)
            inputs.append(log_candidates.to(rgb.dtype))
        if self.fill is not None or self.config.initial_fill == 'morphological':
            inputs.append((_log_depth(base) if log_residual else base).to(rgb.dtype))

        pad = (0, (-width) % SIZE_MULTIPLE, 0, (-height) % SIZE_MULTIPLE)
        rgb_padded = F.pad(inputs[0], pad, mode='replicate')
        depth_padded = F.pad(torch.cat(inputs[1:], dim=1), pad)
        features = self.unet(torch.cat([rgb_padded, depth_padded], dim=1))
        features = features[..., :height, :width]

        heads = [self.depth_head, self.guidance_head, self.confidence_head]
        if torch.onnx.is_in_onnx_export() and not self.training:
            init, guidance, confidence = merged_heads(heads, features)
        else:
            init, guidance, confidence = (head(features) for head in heads)
        init = init.float()
        if self.config.initial_fill == 'blend':
            share = torch.sigmoid(init[:, 1:2])
            base = torch.exp(share * log_candidates[:, :1] + (1 - share) * log_candidates[:, 1:])
            base = torch.where(candidates[:, :1] > 0, base, 0.0)
            init = init[:, :1]
        if log_residual:
            init = base.float() * torch.exp(self.config.max_log_residual * torch.tanh(init))
        elif base is not None:
            init = init + base.float()
        return init * scale, guidance, torch.sigmoid(confidence.float())

    def propagate(self, depth_init: torch.Tensor, guidance: torch.Tensor,
                  confidence: torch.Tensor, sparse: torch.Tensor) -> dict[str, torch.Tensor]:
        """predict's outputs and sparse (B,1,H,W) m -> forward's output dict."""
        depth, _ = self.propagation(depth_init, guidance, sparse, confidence)
        return {'depth': depth.clamp(0.0, self.config.max_depth),
                'depth_init': depth_init.clamp(0.0, self.config.max_depth),
                'confidence': confidence,
                'guidance': guidance}
