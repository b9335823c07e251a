"""Each device-dependent operation on CUDA against its CPU result: RoI pooling forward and backward
(on CUDA the forward is torchvision's kernel, the backward our separable matmuls), the box coder,
the matcher, proposal selection and post-processing (NMS), and the inference rewrite."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close
from torchvision.ops import roi_align as torchvision_roi_align

from frcnn.layers.inference_rewrite import optimize_for_inference
from frcnn.layers.roi_align import crop_and_resize, roi_align
from frcnn.modeling.boxes import BoxCoder
from frcnn.modeling.matcher import Matcher
from frcnn.modeling.roi_heads import postprocess_detections
from frcnn.modeling.rpn import select_proposals
from tests.cuda.conftest import to
from tests.model.builders import small_faster_rcnn
from tests.model.synthetic import batch

pytestmark = pytest.mark.cuda


def _rois(n: int = 40, size: float = 120.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.7
    wh = 4 + torch.rand(n, 2, generator=g) * size * 0.3
    index = torch.randint(0, 2, (n, 1), generator=g).float()
    return torch.cat([index, xy, xy + wh], dim=1)  # (n, 5)


@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_forward_and_backward_equal_the_cpu(cuda, aligned):
    features = torch.randn(2, 16, 20, 24, generator=torch.Generator().manual_seed(1))
    rois = _rois()
    grad = torch.randn(40, 16, 7, 7, generator=torch.Generator().manual_seed(2))
    results = []
    for device in ("cpu", cuda):
        f = features.to(device).requires_grad_(True)
        out = roi_align(f, rois.to(device), 7, 1 / 8, 2, aligned)
        out.backward(grad.to(device))
        results.append((out.detach().cpu(), f.grad.cpu()))
    (cpu_out, cpu_grad), (gpu_out, gpu_grad) = results
    assert_close(gpu_out, cpu_out, rtol=1e-5, atol=1e-5)
    assert_close(gpu_grad, cpu_grad, rtol=1e-5, atol=1e-5)
    # and torchvision's own CUDA RoIAlign, value and gradient
    f = features.to(cuda).requires_grad_(True)
    reference = torchvision_roi_align(f, rois.to(cuda), (7, 7), 1 / 8, 2, aligned)
    reference.backward(grad.to(cuda))
    assert_close(gpu_out, reference.detach().cpu(), rtol=1e-5, atol=1e-5)
    assert_close(gpu_grad, f.grad.cpu(), rtol=1e-5, atol=1e-5)


def test_crop_and_resize_equals_the_cpu(cuda):
    features = torch.randn(2, 8, 16, 16, generator=torch.Generator().manual_seed(3))
    rois = _rois(size=16.0)
    assert_close(crop_and_resize(features.to(cuda), rois.to(cuda), 14).cpu(), crop_and_resize(features, rois, 14),
                 rtol=1e-5, atol=1e-5)


def test_box_coder_and_matcher_equal_the_cpu(cuda):
    g = torch.Generator().manual_seed(4)
    reference = _rois(200, seed=5)[:, 1:]
    deltas = torch.randn(200, 8, generator=g) * 0.3
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    assert_close(coder.decode(deltas.to(cuda), reference.to(cuda)).cpu(), coder.decode(deltas, reference))
    gt = reference[:20] + torch.randn(20, 4, generator=g)
    assert_close(coder.encode(reference[:20].to(cuda), gt.to(cuda)).cpu(), coder.encode(reference[:20], gt))
    iou = torch.rand(3, 5, 200, generator=g)
    iou[1, 3:] = -1.0  # padded ground truth
    matcher = Matcher(0.5, 0.3, 0.1, allow_low_quality_matches=True)
    for a, b in zip(matcher(iou.to(cuda)), matcher(iou)):
        assert torch.equal(a.cpu(), b)


def test_proposal_selection_and_postprocessing_equal_the_cpu(cuda):
    g = torch.Generator().manual_seed(6)
    anchors = _rois(500, 200.0, seed=7)[:, 1:]
    logits, deltas = torch.randn(2, 500, generator=g) * 2, torch.randn(2, 500, 4, generator=g) * 0.2
    sizes = [(200, 180), (150, 200)]
    args = (sizes, [300, 200], BoxCoder(), 200, 50, 0.6, 1e-3, 0.0)
    cpu = select_proposals(anchors, logits, deltas, *args)
    gpu = select_proposals(anchors.to(cuda), logits.to(cuda), deltas.to(cuda), *args)
    for a, b in zip(gpu.boxes + gpu.logits, cpu.boxes + cpu.logits):
        assert_close(a.cpu(), b)
    class_logits, box_deltas = torch.randn(100, 4, generator=g) * 2, torch.randn(100, 12, generator=g) * 0.1
    proposals = [cpu.boxes[0], cpu.boxes[1]]
    proposals = [p[:50] for p in proposals]
    args = ([(200, 180), (150, 200)], BoxCoder((10.0, 10.0, 5.0, 5.0)), 0.05, 0.5, 100, 100)
    want = postprocess_detections(class_logits, box_deltas, proposals, *args)
    got = postprocess_detections(class_logits.to(cuda), box_deltas.to(cuda), to(proposals, cuda), *args)
    for a, b in zip(got, want):
        for key in ("boxes", "scores", "labels"):
            assert_close(a[key].cpu(), b[key], rtol=1e-5, atol=1e-4)


def test_inference_rewrite_keeps_the_cuda_detections(cuda):
    model = small_faster_rcnn(pooler="roi_align").to(cuda).eval()
    rewritten = optimize_for_inference(copy.deepcopy(model))
    images, _ = batch(2)
    with torch.inference_mode():
        want, got = model(to(images, cuda)), rewritten(to(images, cuda))
        on_cpu = model.cpu()(images)
    for a, b, c in zip(got.detections, want.detections, on_cpu.detections):
        assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-3)
        assert_close(a["scores"], b["scores"], rtol=0, atol=1e-4)
        assert_close(b["boxes"].cpu(), c["boxes"], rtol=0, atol=1e-3)  # and CUDA = CPU
