"""CompletionNet: any input size, output contract, median normalisation, tasks."""
import numpy as np
import pytest
import torch

from cspn_ros.config import ModelConfig
from cspn_ros.model.network import CompletionNet, median_valid_depth


def make_inputs(generator, batch, height, width, density=0.1, scale=20.0):
    rgb = torch.rand(batch, 3, height, width, generator=generator)
    keep = torch.rand(batch, 1, height, width, generator=generator) < density
    sparse = torch.where(keep, torch.rand(batch, 1, height, width, generator=generator) * scale
                         + 0.5, torch.zeros(()))
    return rgb, sparse


def run(net, rgb, sparse):
    with torch.inference_mode():
        return net.eval()(rgb, sparse)


@pytest.mark.parametrize('height, width', [(24, 40), (37, 53), (5, 3), (64, 48)])
def test_output_contract_for_any_size(height, width):
    torch.manual_seed(height * 100 + width)
    config = ModelConfig(width=8, steps=4, max_depth=15.0)
    net = CompletionNet(config)
    rgb, sparse = make_inputs(torch.Generator().manual_seed(height + width), 2, height, width,
                              density=0.3)
    outputs = run(net, rgb, sparse)
    assert set(outputs) == {'depth', 'depth_init', 'confidence', 'guidance'}
    for key in ('depth', 'depth_init', 'confidence'):
        assert outputs[key].shape == (2, 1, height, width)
        assert outputs[key].dtype == torch.float32
        assert torch.isfinite(outputs[key]).all()
    assert outputs['guidance'].shape == (2, 8, height, width)
    assert outputs['depth'].min() >= 0 and outputs['depth'].max() <= 15.0
    assert outputs['depth_init'].min() >= 0 and outputs['depth_init'].max() <= 15.0
    assert outputs['confidence'].min() >= 0 and outputs['confidence'].max() <= 1
    keep = (sparse > 0) & (sparse <= 15.0)
    assert torch.equal(outputs['depth'][keep], sparse[keep])


def test_median_valid_depth_matches_numpy():
    generator = torch.Generator().manual_seed(21)
    _, sparse = make_inputs(generator, 4, 9, 13, density=0.2)
    sparse[2] = 0.0  # no valid point: scale 1, never NaN
    sparse[3] = 0.0
    sparse[3, 0, 4, 5] = 7.5
    result = median_valid_depth(sparse).flatten()
    for b in range(4):
        values = np.sort(sparse[b].numpy()[sparse[b].numpy() > 0])
        expected = values[(len(values) - 1) // 2] if len(values) else 1.0
        assert result[b].item() == expected


def test_median_valid_depth_is_the_same_traced_and_eager():
    """Eager on the CPU it selects among the valid depths; traced (ONNX, compile) it sorts the
    frame: the same value."""
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31, ())))
    _, example = make_inputs(generator, 3, 16, 20, density=0.1)
    traced = torch.jit.trace(median_valid_depth, example)
    for density in (0.0, 0.01, 0.3):
        _, sparse = make_inputs(generator, 3, 16, 20, density=density)
        assert torch.equal(traced(sparse), median_valid_depth(sparse)), density


def test_median_normalisation_is_scale_equivariant():
    torch.manual_seed(4)
    net = CompletionNet(ModelConfig(width=8, steps=6, max_depth=1e4))
    rgb, sparse = make_inputs(torch.Generator().manual_seed(8), 2, 24, 40)
    reference = run(net, rgb, sparse)
    for factor in (4.0, 3.7, 0.13):
        scaled = run(net, rgb, sparse * factor)
        for key in ('depth', 'depth_init'):
            torch.testing.assert_close(scaled[key], reference[key] * factor,
                                       rtol=1e-4, atol=1e-5 * factor)
        torch.testing.assert_close(scaled['confidence'], reference['confidence'],
                                   rtol=1e-4, atol=1e-5)


def test_fixed_normalisation_is_not_scale_equivariant():
    torch.manual_seed(4)
    net = CompletionNet(ModelConfig(width=8, steps=2, depth_normalization='fixed',
                                    max_depth=1e4))
    rgb, sparse = make_inputs(torch.Generator().manual_seed(8), 1, 24, 40)
    reference, scaled = run(net, rgb, sparse), run(net, rgb, sparse * 4.0)
    assert not torch.allclose(scaled['depth_init'], reference['depth_init'] * 4.0, rtol=1e-3)


def test_no_valid_points_gives_finite_output():
    torch.manual_seed(0)
    net = CompletionNet(ModelConfig(width=8, steps=3))
    rgb, _ = make_inputs(torch.Generator().manual_seed(1), 1, 20, 30)
    outputs = run(net, rgb, torch.zeros(1, 1, 20, 30))
    assert all(torch.isfinite(value).all() for value in outputs.values())


def test_refinement_initial_depth_is_a_residual_over_the_input():
    """With the depth head's last layer zeroed, depth_init is the input depth itself."""
    torch.manual_seed(2)
    net = CompletionNet(ModelConfig(width=8, steps=0, task='refinement', max_depth=1e4))
    torch.nn.init.zeros_(net.depth_head[-1].weight)
    torch.nn.init.zeros_(net.depth_head[-1].bias)
    rgb, dense = make_inputs(torch.Generator().manual_seed(3), 1, 24, 40, density=0.8)
    outputs = run(net, rgb, dense)
    torch.testing.assert_close(outputs['depth_init'], dense, rtol=1e-6, atol=1e-6)


def test_resnet34_encoder_and_gradients():
    torch.manual_seed(1)
    net = CompletionNet(ModelConfig(width=8, steps=2, encoder='resnet34')).train()
    rgb, sparse = make_inputs(torch.Generator().manual_seed(2), 2, 32, 32)
    outputs = net(rgb, sparse)
    (outputs['depth'].mean() + outputs['confidence'].mean()).backward()
    for name in ('unet.stem.0.weight', 'guidance_head.1.weight', 'confidence_head.1.weight'):
        gradient = dict(net.named_parameters())[name].grad
        assert gradient is not None and gradient.abs().sum() > 0, name


def test_kernel_regression_fill_feeds_the_unet():
    pytest.importorskip('cspn_ros.model.kernel_regression')
    torch.manual_seed(5)
    net = CompletionNet(ModelConfig(width=8, steps=2, initial_fill='kernel_regression'))
    rgb, sparse = make_inputs(torch.Generator().manual_seed(6), 1, 29, 35)
    outputs = run(net, rgb, sparse)
    assert outputs['depth'].shape == (1, 1, 29, 35)
    assert net.unet.stem[0].in_channels == 6


def test_up_block_split_for_export_computes_the_concatenated_convolution():
    """The export form of UpBlock (batch norm folded, convolution split over its two inputs)
    is the eval-mode block up to float rounding."""
    from cspn_ros.model.backbone import UpBlock
    torch.manual_seed(int(torch.randint(0, 2 ** 31, ())))
    block = UpBlock(16, 8, 8).eval()
    batch_norm = block.fuse[1]
    with torch.no_grad():
        batch_norm.running_mean.uniform_(-0.5, 0.5)
        batch_norm.running_var.uniform_(0.5, 2.0)
        batch_norm.weight.uniform_(0.5, 1.5)
        batch_norm.bias.uniform_(-0.2, 0.2)
        x, skip = torch.randn(2, 16, 6, 10), torch.randn(2, 8, 12, 20)
        upsampled = torch.nn.functional.interpolate(x, scale_factor=2.0, mode='bilinear',
                                                    align_corners=False)
        expected = block(x, skip)
        torch.testing.assert_close(block._split_fuse(upsampled, skip), expected,
                                   rtol=1e-5, atol=1e-5)
    assert expected.abs().max() > 0.1


@pytest.mark.parametrize('config', [ModelConfig(width=16, initial_fill='morphological',
                                                residual='log'),
                                    ModelConfig(width=8, initial_fill='blend', residual='log',
                                                affinity='convex')])
def test_merged_heads_for_export_compute_each_head(config):
    """The export form of the three heads (two convolutions in all) gives every head's output
    up to float rounding (blend: 2 depth channels; convex: k*k guidance channels)."""
    from cspn_ros.model.heads import merged_heads
    torch.manual_seed(int(torch.randint(0, 2 ** 31, ())))
    net = CompletionNet(config).eval()
    heads = [net.depth_head, net.guidance_head, net.confidence_head]
    with torch.no_grad():
        for head in heads:
            head[0][1].running_mean.uniform_(-0.5, 0.5)
            head[0][1].running_var.uniform_(0.5, 2.0)
        features = torch.randn(2, net.unet.out_channels, 12, 20)
        for merged, head in zip(merged_heads(heads, features), heads):
            expected = head(features)
            assert merged.shape == expected.shape
            torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-5)
