"""No training is lost: however a fit ends, last.ckpt holds its final step (the signals are in
test_preemption.py). The default experiment validates every 3rd epoch; these runs validate never
or rarely, as such runs do."""

from __future__ import annotations

import logging

import pytest
import torch
from lightning import Callback

from tests.app.helpers import compose_config, script, tiny_overrides

STEPS_PER_EPOCH = 2  # tiny_overrides: limit_train_batches=2


def run(tmp_path, data_dir, *extra):
    cfg = compose_config("train", tmp_path, [*tiny_overrides(data_dir), "trainer.check_val_every_n_epoch=3",
                                             "trainer.max_epochs=100", *extra])
    return script("train").train(cfg)


def last_step(tmp_path) -> int:
    return int(torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])


def test_max_steps_mid_epoch_without_validation_and_the_test_says_which_weights(tmp_path, data_dir, caplog):
    with caplog.at_level(logging.INFO):
        _, objects = run(tmp_path, data_dir, "trainer.max_steps=5", "test=true")
    assert objects["trainer"].global_step == 5 == last_step(tmp_path)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 2  # written after the final step, mid-epoch: a resume goes on in epoch 2
    assert (f"no best checkpoint (no validation ran): testing the final step's weights, "
            f"{tmp_path / 'checkpoints' / 'last.ckpt'} (global step 5)") in caplog.text


def test_max_epochs_between_validations(tmp_path, data_dir):
    _, objects = run(tmp_path, data_dir, "trainer.max_epochs=2", "test=false")  # validation would be at epoch 3
    assert objects["trainer"].global_step == 2 * STEPS_PER_EPOCH == last_step(tmp_path)


def test_max_time(tmp_path, data_dir):
    _, objects = run(tmp_path, data_dir, "trainer.max_time=00:00:00:02", "trainer.max_epochs=10000", "test=false")
    assert objects["trainer"].global_step > 0
    assert objects["trainer"].global_step == last_step(tmp_path)


def test_early_stopping(tmp_path, data_dir):
    # val/map never improves by 1: the second validation (epoch 1) stops training.
    stopper = "+callbacks.early_stopping."
    _, objects = run(tmp_path, data_dir, f"{stopper}_target_=lightning.pytorch.callbacks.EarlyStopping",
                     f"{stopper}monitor=val/map", f"{stopper}mode=max", f"{stopper}patience=0",
                     f"{stopper}min_delta=1.0", "trainer.check_val_every_n_epoch=1", "test=false")
    assert objects["trainer"].current_epoch == 2 and objects["trainer"].should_stop
    assert objects["trainer"].global_step == 2 * STEPS_PER_EPOCH == last_step(tmp_path)


class FailInStep(Callback):
    """Raises inside the training step ``step`` (before its backward), as an out-of-memory error would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated failure in step {self.step}")


def test_an_error_inside_a_step_keeps_the_steps_before_it(tmp_path, data_dir):
    target = f"{__name__}.FailInStep"
    with pytest.raises(RuntimeError, match="simulated failure in step 3") as raised:
        run(tmp_path, data_dir, f"+callbacks.fail._target_={target}", "+callbacks.fail.step=3", "test=false")
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert raised.value.checkpoint_path == str(last) and raised.value.checkpoint_step == 3
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 3  # steps 0..2 trained, step 3 failed before its update
    # The data position counts the trained batches only: a resume retries the batch that failed.
    (loader,) = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader["batch_sampler"]["position"] == 3 % STEPS_PER_EPOCH
