"""Training-time speed-ups of the detector, each switchable (``conf/callbacks/training_speed.yaml``).

For the fit only: the rewrite is applied in ``setup("fit")`` (before the optimizer is built and the
model moves to its device) and undone in ``teardown("fit")``, so the test after training, eval.py
and predict.py see the model as built. None of it changes the state dict: checkpoints save, load
and resume as without it (``frcnn.layers.training_rewrite``, ``frcnn.modeling.compile``).

    python src/train.py callbacks.training_speed.compile=true        # + torch.compile (Inductor)
    python src/train.py callbacks.training_speed.enabled=false       # everything off
"""

from __future__ import annotations

import logging
import time

from lightning import Callback, LightningModule, Trainer

from frcnn.layers.reused_grad import ReusedGradLinear
from frcnn.layers.training_rewrite import FrozenBNConv2d, optimize_for_training, restore_training_rewrite
from frcnn.layers.winograd import WinogradConv2d
from frcnn.modeling.compile import compile_for_training, uncompile

log = logging.getLogger(__name__)


class TrainingSpeed(Callback):
    """Args:
        enabled: False leaves the detector exactly as built (the sparse RPN backward, on by
            default in ``RPNHead``, is then switched by ``sparse_rpn_backward`` still).
        fold_frozen_bn: frozen BatchNorm folded into the convolution before it, at forward time.
        channels_last: convolution weights (hence activations) channels-last.
        sparse_rpn_backward: the RPN head's backward only where the sampled anchors are.
        reuse_grad_memory: the large fully connected layers' weight gradients (the box head's
            fc6) written into the same memory every step (``frcnn.layers.reused_grad``).
        winograd: the 3 x 3 "same" convolutions outside the trunk (FPN outputs, RPN head) by
            Winograd's F(4 x 4, 3 x 3) on a CPU, where the map is large enough
            (``frcnn.layers.winograd``; float rounding differs from oneDNN's, ~1e-5 relative).
        compile: the backbone, box head and predictor through ``torch.compile`` in training steps.
        compile_dynamic: the recompilation policy for varying image sizes (``frcnn.modeling.compile``:
            None = automatic dynamic, True, False).
        compile_mode: ``torch.compile``'s ``mode`` (None, "max-autotune", ...).
        compile_backend: ``torch.compile``'s ``backend`` ("inductor"; the tests use "aot_eager").
    """

    def __init__(
        self,
        enabled: bool = True,
        fold_frozen_bn: bool = True,
        channels_last: bool = True,
        sparse_rpn_backward: bool = True,
        reuse_grad_memory: bool = True,
        winograd: bool = True,
        compile: bool = False,
        compile_dynamic: bool | None = None,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
    ) -> None:
        self.enabled = enabled
        self.fold_frozen_bn = fold_frozen_bn
        self.channels_last = channels_last
        self.sparse_rpn_backward = sparse_rpn_backward
        self.reuse_grad_memory = reuse_grad_memory
        self.winograd = winograd
        self.compile = compile
        self.compile_dynamic = compile_dynamic
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend
        self.folded = 0  # conv -> frozen BatchNorm pairs folded in this fit (0 when off)
        self.reused_grad_layers = 0  # fully connected layers with reused weight-gradient memory
        self.winograd_layers = 0  # 3 x 3 convolutions by Winograd
        self._applied = False
        self._fit_start = 0.0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self._applied:
            return
        model = pl_module.model
        if not self.enabled:
            optimize_for_training(model, fold_frozen_bn=False, channels_last=False,
                                  sparse_rpn_backward=self.sparse_rpn_backward, reuse_grad_memory=False,
                                  winograd=False)
            return
        optimize_for_training(model, self.fold_frozen_bn, self.channels_last, self.sparse_rpn_backward,
                              self.reuse_grad_memory, self.winograd)
        self.folded = sum(isinstance(m, FrozenBNConv2d) for m in model.modules())
        self.reused_grad_layers = sum(isinstance(m, ReusedGradLinear) for m in model.modules())
        self.winograd_layers = sum(isinstance(m, WinogradConv2d) for m in model.modules())
        if self.compile:
            compile_for_training(model, dynamic=self.compile_dynamic, mode=self.compile_mode,
                                 backend=self.compile_backend)
        self._applied = True
        log.info("training speed-ups: %d frozen BatchNorm folded, channels_last=%s sparse_rpn_backward=%s "
                 "reuse_grad_memory=%s winograd=%d layers compile=%s", self.folded, self.channels_last,
                 self.sparse_rpn_backward, self.reuse_grad_memory, self.winograd_layers, self.compile)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.compile and trainer.global_step == 1:  # the first step compiled the graphs
            log.info("first training step (compilation included): %.1f s", time.perf_counter() - self._fit_start)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not self._applied:
            return
        uncompile(pl_module.model)
        restore_training_rewrite(pl_module.model)
        self._applied = False
