"""train.py with the TrainingSpeed callback (``conf/callbacks/training_speed.yaml``) on a backbone
with frozen BatchNorm (ResNet-18, so the fold has pairs to fold): the fit runs folded, the
checkpoint holds the state-dict keys and values of the model as built, a plain model loads it and
predicts what the trained one does, and a run resumed from it continues; compile=true (aot_eager
backend: the same capture without code generation) trains to the same losses as eager."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from frcnn.app.build import build_model
from frcnn.app.callbacks import TrainingSpeed
from frcnn.app.checkpoint import load_checkpoint
from frcnn.layers.reused_grad import ReusedGradLinear
from frcnn.layers.training_rewrite import FoldedFrozenBatchNorm2d, FrozenBNConv2d
from frcnn.layers.winograd import WinogradConv2d
from tests.app.helpers import compose_config, script, tiny_overrides

# fc6 (256 * 5 * 5 -> 512): above frcnn.layers.reused_grad's 2 ** 20 weights, fc7 (512 -> 512) below
RESNET18 = ["backbone=resnet18", "backbone.weights=null", "test=false", "logger=csv",
            "model.roi_heads.box_head.hidden_dim=512"]


def speed_callback(objects) -> TrainingSpeed:
    return next(c for c in objects["trainer"].callbacks if isinstance(c, TrainingSpeed))


@pytest.fixture(scope="module")
def folded_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("folded")
    cfg = compose_config("train", out, [*tiny_overrides(data_dir), *RESNET18])
    with pytest.warns(UserWarning, match="frozen_bn=True without pretrained weights"):
        _, objects = script("train").train(cfg)
    return out, cfg, objects


def test_fit_runs_folded_and_the_checkpoint_is_the_plain_models(folded_run, data_dir):
    out, cfg, objects = folded_run
    assert speed_callback(objects).folded == 15  # every conv of the trunk: stem, layer1..3 (+ downsamples)
    assert speed_callback(objects).reused_grad_layers == 1  # fc6
    assert speed_callback(objects).winograd_layers == 1  # the RPN head's 3 x 3 trunk
    trained = objects["module"].model.eval()
    rewritten = (FrozenBNConv2d, FoldedFrozenBatchNorm2d, ReusedGradLinear, WinogradConv2d)
    assert not any(isinstance(m, rewritten) for m in trained.modules())

    state = load_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]
    with pytest.warns(UserWarning):
        plain = build_model(cfg.model).eval()  # the model as built, never rewritten
    expected_keys = [f"model.{k}" for k in plain.state_dict()]
    assert list(state) == expected_keys
    plain.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    images = [torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        want, got = trained(images).detections[0], plain(images).detections[0]
    assert_close(got["boxes"], want["boxes"], rtol=0, atol=0)
    assert_close(got["scores"], want["scores"], rtol=0, atol=0)


def test_resume_from_a_folded_checkpoint(folded_run, tmp_path, data_dir):
    out, _, _ = folded_run
    ckpt = out / "checkpoints" / "last.ckpt"
    cfg = compose_config("train", tmp_path, [*tiny_overrides(data_dir), *RESNET18, f"ckpt_path={ckpt}",
                                             "trainer.max_epochs=2"])
    with pytest.warns(UserWarning):
        metrics, objects = script("train").train(cfg)
    assert objects["trainer"].global_step == 4  # 2 steps from the checkpoint, 2 more
    assert speed_callback(objects).folded == 15
    assert torch.isfinite(metrics["train/loss"])


@pytest.mark.slow  # two more fits (~20 s); tests/model/test_compile.py checks compiled steps in CI
def test_compiled_fit_logs_the_eager_fits_losses(tmp_path, data_dir):
    """Two 2-step fits from the same seed, eager and compiled: the logged losses agree within
    1e-5 relative (the compiled graph reorders float sums)."""
    losses = []
    for compiled in (False, True):
        cfg = compose_config("train", tmp_path / str(compiled), [
            *tiny_overrides(data_dir), "test=false", "trainer.limit_val_batches=0",
            f"callbacks.training_speed.compile={compiled}", "callbacks.training_speed.compile_backend=aot_eager",
        ])
        metrics, _ = script("train").train(cfg)
        losses.append({k: v for k, v in metrics.items() if k.startswith("train/loss")})
    assert losses[0].keys() == losses[1].keys() and "train/loss" in losses[0]
    for name, value in losses[0].items():
        assert_close(losses[1][name], value, rtol=1e-5, atol=1e-6, msg=name)
