"""One run of bench/recipes.py, in its own process: train ``src/train.py``'s way for a CPU budget,
then evaluate on the validation split with and without test-time augmentation; print one JSON line.

    python bench/_recipes_run.py '<json spec>'

The spec: ``overrides`` (Hydra, on conf/train.yaml), ``budget_s`` (CPU seconds of the training
steps), ``max_steps`` (optional: a budget in optimizer steps instead, the CPU one then only a cap),
steps), ``threads``, ``seed``, ``tta`` (name -> ``conf/tta`` block, or null for none), ``run_dir``.

Training is ``train(cfg)`` of src/train.py (the real DataModule, model, module and callbacks), plus
``CPUBudget``: it counts this process's CPU time (all threads) from the start of each training batch
to its end (forward, backward, the optimizer, the EMA update; not the data loading, which runs in
this process between batches with ``num_workers=0``), sets the lr by the fraction of the budget
spent (linear warm-up over the first 10 %, then cosine to 0.01x, as bench/finetune_raccoon.py) and
stops training once the budget is spent. The module then holds what a checkpoint would (the EMA
weights when the EMA callback is on); its state dict is saved as ``model.pt`` in ``run_dir``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from lightning import Callback

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

from _finetune_common import budget_lr_factor  # noqa: E402
from _recipes_probe import EMAProbe, probe_models  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from frcnn.app.callbacks.ema import EMA  # noqa: E402


class CPUBudget(Callback):
    """Training for ``budget_s`` CPU seconds of the training steps, the lr shaped over that budget;
    with ``max_steps``, for that many steps (the lr shaped over them): the step count does not move
    with the machine's load, while the CPU seconds of a step do (shared caches and cores)."""

    def __init__(self, budget_s: float, max_steps: int | None = None, warmup_fraction: float = 0.1,
                 min_factor: float = 0.01) -> None:
        self.budget_s, self.warmup_fraction, self.min_factor = budget_s, warmup_fraction, min_factor
        self.max_steps = max_steps
        self.spent = self.wall = 0.0
        self.steps = self.images = 0
        self.base_lrs: list[float] = []
        self._start = (0.0, 0.0)

    def on_train_start(self, trainer, pl_module) -> None:
        self.base_lrs = [group["lr"] for group in trainer.optimizers[0].param_groups]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        spent = self.steps / self.max_steps if self.max_steps else self.spent / self.budget_s
        factor = budget_lr_factor(spent, self.warmup_fraction, self.min_factor)
        for group, base in zip(trainer.optimizers[0].param_groups, self.base_lrs):
            group["lr"] = base * factor
        self._start = (time.process_time(), time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.spent += time.process_time() - self._start[0]
        self.wall += time.perf_counter() - self._start[1]
        self.steps += 1
        self.images += len(batch[0])
        if self.spent >= self.budget_s or (self.max_steps and self.steps >= self.max_steps):
            trainer.should_stop = True


def compose_run(spec: dict):
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", return_hydra_config=True, overrides=[
            f"paths.output_dir={run_dir}", f"paths.log_dir={run_dir}", f"paths.work_dir={run_dir}",
            f"hydra.run.dir={run_dir}", f"seed={spec['seed']}", f"torch_threads={spec['threads']}",
            *spec["overrides"],
        ])
    HydraConfig.instance().set_config(cfg)
    return cfg


@torch.inference_mode()
def evaluate(model, loader, class_names: list[str], tta: dict | None) -> dict:
    """VOC AP@0.5 (area), COCO map / map_50 and per class AP, seconds per image (wall, CPU)."""
    from frcnn.app.checkpoint import with_tta
    from frcnn.evaluation import COCOEvaluator, VOCEvaluator

    wrapped = with_tta(model, tta).eval()
    voc, coco = VOCEvaluator(class_names), COCOEvaluator(class_names)
    wall, cpu, images = time.perf_counter(), time.process_time(), 0
    for batch_images, targets in loader:
        detections = wrapped(batch_images).detections
        voc.update(detections, targets)
        coco.update(detections, targets)
        images += len(batch_images)
    wall, cpu = (time.perf_counter() - wall) / images, (time.process_time() - cpu) / images
    metrics = coco.compute()
    result = {"voc_map_50": voc.compute()["map_50"], "map": metrics["map"], "map_50": metrics["map_50"],
              "s_per_image": wall, "cpu_s_per_image": cpu}
    result.update({key: value for key, value in metrics.items() if key.startswith(("ap/", "ap50/"))})
    return result


def main() -> None:
    spec = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    torch.set_num_threads(spec["threads"])
    cfg = compose_run(spec)
    train_module = __import__("train")  # src/train.py
    budget = CPUBudget(spec["budget_s"], spec.get("max_steps"))
    original = train_module.instantiate_callbacks
    probes: list[EMAProbe] = []

    def callbacks(config):
        configured = [*original(config), budget]  # the budget's clock runs around every configured callback
        ema = next((c for c in configured if type(c) is EMA), None)
        if ema is not None:  # paired probes of the same trajectory, after the clock (bench/_recipes_probe.py)
            probes.append(EMAProbe(ema.warmup_steps))
        return configured + probes

    train_module.instantiate_callbacks = callbacks
    started = time.process_time()
    _, objects = train_module.train(cfg)
    total_cpu = time.process_time() - started
    module, datamodule = objects["module"], objects["datamodule"]

    from frcnn.layers.inference_rewrite import optimize_for_inference

    probed = probe_models(module, probes[0]) if probes else {}  # before the module's model is folded
    model = module.model.cpu().eval()
    # What a checkpoint would hold (the EMA weights when on), to evaluate other TTA variants later.
    torch.save(model.state_dict(), Path(spec["run_dir"]) / "model.pt")
    optimize_for_inference(model)  # as eval.py does
    loader = datamodule.val_dataloader()
    results = {name: evaluate(model, loader, datamodule.class_names, tta) for name, tta in spec["tta"].items()}
    for name, probe_model in probed.items():
        optimize_for_inference(probe_model.cpu().eval())
        results[f"ema_probe/{name}"] = evaluate(probe_model, loader, datamodule.class_names, None)
    transform = model.transform
    print("RESULT " + json.dumps({
        "steps": budget.steps, "images": budget.images, "train_cpu_s": budget.spent, "train_wall_s": budget.wall,
        "process_cpu_s": total_cpu, "anchors": [list(model.rpn.anchor_generator.sizes),
                                                list(model.rpn.anchor_generator.aspect_ratios)],
        "anchor_fit": OmegaConf.to_container(cfg.anchor_fit) if "anchor_fit" in cfg else {}, "min_size": list(transform.min_size),
        "test_min_size": transform.test_min_size, "eval": results, "load": os.getloadavg()[0],
    }), flush=True)


if __name__ == "__main__":
    main()
