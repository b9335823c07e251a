"""EMA of the weights: the update rule for two steps by hand, validation / checkpoints / resume on
the EMA, and a short real training run whose EMA weights differ from the raw ones."""

from __future__ import annotations

import math

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from frcnn.app.callbacks import EMA
from frcnn.app.callbacks.ema import RAW_KEY, ema_decay
from tests.app.helpers import compose_config, script, tiny_overrides

DECAY, WARMUP = 0.9, 2.0
D1 = 0.9 * (1 - math.exp(-0.5))  # 0.354122
D2 = 0.9 * (1 - math.exp(-1.0))  # 0.568909
D3 = 0.9 * (1 - math.exp(-1.5))  # 0.699183
# One weight p = 0 trained by SGD (lr 1) on loss -p: p = 1, 2, 3 after each step; ema_0 = 0.
EMA1 = (1 - D1) * 1.0  # 0.645878
EMA2 = D2 * EMA1 + (1 - D2) * 2.0  # 1.229627
EMA3 = D3 * EMA2 + (1 - D3) * 3.0  # 1.764177


class OneWeight(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))  # integers follow the weights
        self.seen: dict[str, float] = {}

    def training_step(self, batch, batch_idx):
        self.count += 1
        return -self.p.sum()

    def validation_step(self, batch, batch_idx):
        self.seen["val"] = float(self.p)

    def test_step(self, batch, batch_idx):
        self.seen["test"] = float(self.p)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(10, 1)), batch_size=1)

    val_dataloader = test_dataloader = train_dataloader


def trainer(max_steps: int, enable_checkpointing: bool = False, **kwargs) -> Trainer:
    return Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                   enable_checkpointing=enable_checkpointing, enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, **kwargs)


def test_decay_warm_up():
    assert ema_decay(DECAY, WARMUP, 1) == pytest.approx(0.354122, abs=1e-6)
    assert ema_decay(DECAY, WARMUP, 2) == pytest.approx(0.568909, abs=1e-6)
    assert ema_decay(DECAY, 0, 1) == DECAY


def test_two_steps_checkpoint_and_resume(tmp_path):
    module, ema = OneWeight(), EMA(DECAY, WARMUP)
    every_2 = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=2, save_top_k=-1)
    trainer(4, callbacks=[ema, every_2], limit_val_batches=0, enable_checkpointing=True).fit(module)
    saved = torch.load(tmp_path / "step=2.ckpt", weights_only=True)
    assert float(saved["state_dict"]["p"]) == pytest.approx(EMA2, abs=1e-6)  # what eval / export load
    assert float(saved[RAW_KEY]["p"]) == pytest.approx(2.0)  # the weight being trained

    # Resume at step 2: the raw weight (2) trains on, the EMA and its update count continue.
    resumed_module, resumed = OneWeight(), EMA(DECAY, WARMUP)
    trainer(3, callbacks=[resumed], limit_val_batches=0).fit(resumed_module, ckpt_path=tmp_path / "step=2.ckpt",
                                                             weights_only=True)
    assert resumed.updates == 3
    assert float(resumed.average["p"]) == pytest.approx(EMA3, abs=1e-6)
    assert float(resumed_module.p.detach()) == pytest.approx(EMA3, abs=1e-6)  # after training: the EMA
    assert int(resumed.average["count"]) == 3  # an integer buffer is copied, not averaged


def test_validation_runs_on_the_ema_and_testing_a_checkpoint_keeps_it(tmp_path):
    module, ema = OneWeight(), EMA(DECAY, WARMUP)
    run = trainer(2, callbacks=[ema], val_check_interval=2, limit_val_batches=1)
    run.fit(module)
    assert module.seen["val"] == pytest.approx(EMA2, abs=1e-6)  # validated after step 2, on the EMA
    run.save_checkpoint(tmp_path / "a.ckpt")
    torch.nn.init.constant_(module.p, 7.0)
    run.test(module, ckpt_path=tmp_path / "a.ckpt", weights_only=True)  # train.py's test on the best checkpoint
    assert module.seen["test"] == pytest.approx(EMA2, abs=1e-6)


def test_a_training_run_with_the_ema_callback(tmp_path, data_dir):
    """``callbacks=[default,ema]`` reaches the training: the checkpoints' weights are the EMA's, not the raw ones."""
    overrides = [*tiny_overrides(data_dir), "callbacks=[default,ema]", "callbacks.ema.decay=0.5",
                 "callbacks.ema.warmup_steps=0", "trainer.limit_train_batches=3", "test=false",
                 "callbacks.validation_images.num_images=0", "logger=csv"]
    cfg = compose_config("train", tmp_path / "run", overrides)
    _, objects = script("train").train(cfg)
    assert any(isinstance(c, EMA) for c in objects["trainer"].callbacks)
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    ema, raw = checkpoint["state_dict"], checkpoint[RAW_KEY]
    trained = [k for k, v in raw.items() if v.is_floating_point() and "rpn.head" in k]
    assert trained and any(not torch.equal(ema[k], raw[k]) for k in trained)
    from frcnn.app.checkpoint import module_from_checkpoint

    loaded = module_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt").state_dict()
    for key in trained:  # eval.py, predict.py, export.py and Detector rebuild the EMA weights
        torch.testing.assert_close(loaded[key], ema[key])
