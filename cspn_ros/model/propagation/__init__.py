"""Spatial propagation schemes, one module per scheme with the same interface.

`XPropagation(config)`: `guidance_channels(config) -> int` (staticmethod: channels the guidance
head must produce), `forward(init (B,1,H,W), guidance (B,C,H,W), sparse (B,1,H,W), confidence
(B,1,H,W) | None) -> (depth (B,1,H,W), aux dict)`, and a `steps` attribute that may be changed
at run time.
"""
from __future__ import annotations

from torch import nn

from cspn_ros.config import ModelConfig


def build_propagation(config: ModelConfig) -> nn.Module:
    """The propagation module for config.propagation: 'cspn', 'cspnpp' or 'nlspn' (lazy)."""
    if config.propagation == 'cspn':
        from cspn_ros.model.propagation.cspn import CSPNPropagation
        return CSPNPropagation(config)
    if config.propagation == 'cspnpp':
        from cspn_ros.model.propagation.cspnpp import CSPNPlusPlusPropagation
        return CSPNPlusPlusPropagation(config)
    if config.propagation == 'nlspn':
        from cspn_ros.model.propagation.nlspn import NLSPNPropagation
        return NLSPNPropagation(config)
    raise ValueError(f'propagation {config.propagation!r} has no network module '
                     "('classical' runs cspn_ros.model.fill.classical_fill instead)")
