"""The training rewrite (frozen BatchNorm folded at forward time, channels-last, the sparse RPN
backward) against the model as built: the same outputs and gradients (torchvision's ResNet-18 with
frozen BatchNorm, the first stages frozen as in fine-tuning; a ResNet-18 C4 detector's training
step), the same state-dict keys and values, loading and restoring, and the inference rewrite on
top of it."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torchvision.models import resnet18
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn.layers.inference_rewrite import optimize_for_inference
from frcnn.layers.training_rewrite import (
    FoldedFrozenBatchNorm2d,
    FrozenBNConv2d,
    optimize_for_training,
    restore_training_rewrite,
)
from frcnn.modeling import FasterRCNN
from frcnn.modeling.backbone import build_backbone
from frcnn.modeling.roi_heads import RoIHeads
from frcnn.modeling.roi_heads.box_head import FCHead, ResNetC5Head
from frcnn.modeling.roi_heads.poolers import RoIPooler
from frcnn.modeling.transform import InputTransform

from .builders import small_rpn
from .synthetic import batch
from .test_compile import step


def vary_frozen_batchnorm(module: nn.Module, seed: int = 1) -> None:
    """Every FrozenBatchNorm2d in ``module`` gets varied statistics and affine terms (seeded), so
    that a fold that mixes them up changes the output."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            C = m.weight.shape[0]
            m.weight.copy_(0.5 + torch.rand(C, generator=g))
            m.bias.copy_(0.2 * torch.randn(C, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(C, generator=g))
            m.running_var.copy_(0.5 + torch.rand(C, generator=g))


def frozen_resnet18() -> nn.Module:
    """ResNet-18 with frozen BatchNorm of varied statistics; stem + layer1 frozen, as fine-tuning does."""
    torch.manual_seed(0)
    model = resnet18(norm_layer=FrozenBatchNorm2d)
    vary_frozen_batchnorm(model)
    for stage in (model.conv1, model.layer1):
        stage.requires_grad_(False)
    return model.train()


def outputs_and_grads(model: nn.Module, x: torch.Tensor):
    x = x.clone().requires_grad_()
    out = model(x)
    loss = (out * torch.linspace(-1, 1, out.shape[1])).sum()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *(dict(model.named_parameters())[n] for n in names)])
    return out, dict(zip(["input", *names], grads, strict=True))


def test_folded_training_model_computes_the_same_outputs_and_gradients():
    plain = frozen_resnet18()
    rewritten = optimize_for_training(copy.deepcopy(plain))
    assert sum(isinstance(m, FrozenBNConv2d) for m in rewritten.modules()) == 20  # every conv of ResNet-18
    assert not any(type(m) is FrozenBatchNorm2d for m in rewritten.modules())
    assert rewritten.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 64)
    expected_out, expected = outputs_and_grads(plain, x)
    got_out, got = outputs_and_grads(rewritten, x)
    assert_close(got_out, expected_out, rtol=1e-4, atol=1e-4 * expected_out.abs().max().item())
    assert got.keys() == expected.keys() and "layer2.0.conv1.weight" in got and "conv1.weight" not in got
    for name, grad in expected.items():
        assert_close(got[name], grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item(), msg=name)


def test_state_dict_is_unchanged_and_loading_reaches_the_fold():
    plain = frozen_resnet18()
    rewritten = optimize_for_training(copy.deepcopy(plain))
    state, expected = rewritten.state_dict(), plain.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert_close(state[key], value, rtol=0, atol=0)

    other = frozen_resnet18()  # another checkpoint: new BatchNorm statistics and weights
    with torch.no_grad():
        for key, value in other.state_dict().items():
            value.mul_(1.1) if key.endswith(("running_var", "weight")) else value.add_(0.05)
    rewritten.load_state_dict(other.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(rewritten.eval()(x), other.eval()(x), rtol=1e-4, atol=1e-4)


def test_restore_gives_the_original_modules_with_the_same_parameters():
    plain = frozen_resnet18()
    rewritten = optimize_for_training(copy.deepcopy(plain))
    params = dict(rewritten.named_parameters())
    restored = restore_training_rewrite(rewritten)
    assert type(restored.layer2[0].conv1) is nn.Conv2d and type(restored.layer2[0].bn1) is FrozenBatchNorm2d
    assert not any(isinstance(m, (FrozenBNConv2d, FoldedFrozenBatchNorm2d)) for m in restored.modules())
    for name, p in restored.named_parameters():
        assert p is params[name]  # an optimizer built on the rewritten model keeps working
    assert restored.conv1.weight.is_contiguous()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(restored.eval()(x), plain.eval()(x), rtol=1e-5, atol=1e-5)


def test_inference_rewrite_of_a_training_rewritten_model_folds_once():
    plain = frozen_resnet18().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = plain(x)
        got = optimize_for_inference(optimize_for_training(copy.deepcopy(plain)))(x)
    assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def resnet18_detector():
    """A ResNet-18 C4 Faster R-CNN (frozen BatchNorm of varied statistics, stem + layer1 frozen),
    with the small test RPN and heads: a detector whose trunk the fold rewrites."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="frozen_bn=True without pretrained weights"):
        backbone = build_backbone("resnet18", trainable_layers=3)
    vary_frozen_batchnorm(backbone)
    return FasterRCNN(
        backbone, 2, rpn=small_rpn(),
        roi_heads=partial(RoIHeads, pooler=RoIPooler("roi_align", 7), box_head=partial(FCHead, hidden_dim=128),
                          generator=torch.Generator().manual_seed(1)),
        transform=partial(InputTransform, 128, 128),
    )


def test_rewritten_detector_training_step_equals_the_plain_step():
    """Losses within 1e-5 relative, every gradient within 1e-4 of its tensor's largest entry: the
    fold and channels-last reorder the convolutions' float sums, the sparse RPN backward its own."""
    plain = resnet18_detector().train()
    rewritten = optimize_for_training(copy.deepcopy(plain))
    assert sum(isinstance(m, FrozenBNConv2d) for m in rewritten.modules()) == 15  # stem, layer1..3
    images, targets = batch(2)
    expected_losses, expected_grads = step(plain, images, targets)
    got_losses, got_grads = step(rewritten, images, targets)
    for name, value in expected_losses.items():
        assert_close(got_losses[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert got_grads.keys() == expected_grads.keys() and "backbone.body.layer2.0.conv1.weight" in got_grads
    for name, grad in expected_grads.items():
        assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item(), msg=name)


def resnet18_c4_detector():
    """The C4 design: ResNet-18 to layer3, RoIAlign 14x14, layer4 as the box head."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="frozen_bn=True without pretrained weights"):
        backbone = build_backbone("resnet18", trainable_layers=3)
    vary_frozen_batchnorm(backbone)
    vary_frozen_batchnorm(backbone.c5, seed=2)
    return FasterRCNN(
        backbone, 2, rpn=small_rpn(),
        roi_heads=partial(RoIHeads, pooler=RoIPooler("roi_align", 14), box_head=ResNetC5Head, batch_size_per_image=8,
                          generator=torch.Generator().manual_seed(1)),
        transform=partial(InputTransform, 128, 128),
    )


def test_c4_head_gets_channels_last_rois_and_no_pooled_size_copy_runs():
    """With the rewrite the pooled RoIs reach conv5 channels-last, so no operation copies a
    pooled-size tensor in the training step (before: conv5's two first convolutions converted the
    contiguous RoIs, forward and backward, and RoIAlign's backward its channels-last gradient:
    five copies); the step's losses and gradients are the plain model's."""
    plain = resnet18_c4_detector().train()
    rewritten = optimize_for_training(copy.deepcopy(plain))
    seen = []
    rewritten.roi_heads.box_head.c5.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    images, targets = batch(2)
    expected_losses, expected_grads = step(plain, images, targets)
    with torch.profiler.profile(record_shapes=True) as prof:
        got_losses, got_grads = step(rewritten, images, targets)
    (pooled,) = seen
    assert pooled.shape == (16, 256, 14, 14) and rewritten.roi_heads.box_head.input_memory_format == torch.channels_last
    assert not pooled.is_contiguous() and pooled.is_contiguous(memory_format=torch.channels_last)
    copies = [e for e in prof.events() if e.name == "aten::copy_" and list(pooled.shape) in e.input_shapes]
    assert copies == []
    assert plain.roi_heads.box_head.input_memory_format == torch.contiguous_format
    for name, value in expected_losses.items():
        assert_close(got_losses[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert "roi_heads.box_head.c5.0.conv1.weight" in got_grads and got_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item(), msg=name)
