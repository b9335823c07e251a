"""One training step of each model family on CUDA against the same step on the CPU (same weights,
same batch, same sampling: the samplers draw from a CPU generator), and the default run's config for
50 steps with trainer=gpu, in float32 and bf16-mixed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from tests.cuda.conftest import to
from tests.model.builders import small_faster_rcnn, small_rpn_detector
from tests.model.synthetic import batch

pytestmark = pytest.mark.cuda

# Losses of one step within 1e-4 relative (TF32 is off: PyTorch's default for matmuls and cuDNN
# convolutions is on for convolutions, so it is switched off here to compare float32 with float32).
RTOL, ATOL = 1e-4, 1e-5


def _step(model, images, targets):
    model.train()
    losses = model(images, targets).losses
    losses["loss"].backward()
    grads = {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach().cpu() for k, v in losses.items()}, grads


def _families():
    from tests.export.helpers import tiny_fpn_faster_rcnn

    return {
        "crop_and_resize": lambda: small_faster_rcnn(pooler="crop_and_resize"),
        "roi_align": lambda: small_faster_rcnn(pooler="roi_align"),
        "rpn_only": small_rpn_detector,
        "fpn": lambda: tiny_fpn_faster_rcnn(num_classes=2, min_size=128, max_size=160),
    }


@pytest.mark.parametrize("family", ["crop_and_resize", "roi_align", "rpn_only", "fpn"])
def test_one_training_step_equals_the_cpu(cuda, family):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = _families()[family]()
    for part, seed in ((model.rpn, 0), (getattr(model, "roi_heads", None), 1)):
        if part is not None:  # both copies draw the same samples, on either device
            part.generator = torch.Generator().manual_seed(seed)
    twin = copy.deepcopy(model)
    images, targets = batch(2)
    if family == "rpn_only":
        targets = [{**t, "labels": torch.ones_like(t["labels"])} for t in targets]
    cpu_losses, cpu_grads = _step(model, images, targets)
    gpu_losses, gpu_grads = _step(twin.to(cuda), to(images, cuda), to(targets, cuda))
    assert cpu_losses.keys() == gpu_losses.keys()
    for key in cpu_losses:
        assert_close(gpu_losses[key], cpu_losses[key], rtol=RTOL, atol=ATOL, msg=key)
    for name, grad in cpu_grads.items():
        assert_close(gpu_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


VARIANTS = {  # name -> overrides on top of the default run's config
    "fp32": [],
    "bf16_mixed": ["trainer.precision=bf16-mixed"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_default_run_config_for_50_steps_on_the_gpu(cuda, tmp_path, data_dir, variant):
    from tests.app.helpers import compose_config, read_metrics_csv, script, tiny_overrides

    overrides = [o for o in tiny_overrides(data_dir) if not o.startswith(("trainer.accelerator", "trainer.devices",
                                                                           "trainer.limit_train_batches"))]
    trainer = "trainer=gpu" if cuda.type == "cuda" else "trainer=cpu"  # cpu: FRCNN_CUDA_TESTS_ON=cpu
    cfg = compose_config("train", tmp_path, [*overrides, trainer, "trainer.max_steps=50", "trainer.max_epochs=20",
                                             "test=false", *VARIANTS[variant]])
    metrics, objects = script("train").train(cfg)
    assert objects["trainer"].global_step == 50
    assert next(objects["module"].parameters()).device.type == cuda.type
    rows = read_metrics_csv(tmp_path / "csv" / "version_0" / "metrics.csv")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 40 and all(torch.isfinite(torch.tensor(losses)))
    assert 0.0 <= float(metrics["val/map_50"]) <= 1.0 and losses[-1] < losses[0]
