"""COCO mAP under DDP: 2 CPU processes (trainer=ddp_sim) give exactly the single-process numbers.

One checkpoint (the tiny detector trained for 64 steps, so it detects something), evaluated by
src/eval.py on an ODD validation set of 9 images: in process on 1 CPU, and as a subprocess with
trainer=ddp_sim. ``DistributedSampler`` pads 9 images to 10 for 2 ranks, so rank 1 sees the first image
again; the evaluator gathers every rank's images and keeps each image id once, so nothing may change.

Eval batch size 1 on both sides: the detector pads a batch to its largest image (rounded up to the
stride), and batch padding changes detections slightly. With batches of 1 every image goes through
exactly the same tensors whichever rank and batch it lands in; with batches of 2 the ranks' batches
would differ from the single process's, and the numbers would agree only when every batch happens to
pad to the same size.
"""

from __future__ import annotations

import math

import pytest
from torch.utils.data import DistributedSampler

from frcnn.data import ShapesGenerator
from frcnn.evaluation import COCOEvaluator
from tests.app.helpers import (
    CLASS_NAMES,
    column,
    compose_config,
    read_metrics_csv,
    run_script,
    script,
    tiny_overrides,
)

# 9 validation images (odd: the sampler must pad for 2 ranks); 32 training images, 8 steps an epoch.
DDP_SHAPES = {"num_train": 32, "num_val": 9, "min_image_size": 96, "max_image_size": 128}
NUM_VAL = DDP_SHAPES["num_val"]
EPOCHS = 8  # 64 steps: mAP about 0.01, mAR@100 about 0.2 (an untrained detector scores ~0)
# The COCO numbers eval.py logs (module.SUMMARY_KEYS and the per-class AP); the losses are left
# out: under DDP their epoch mean counts the padded image twice.
METRIC_KEYS = [
    *(f"val/{key}" for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")),
    *(f"val/ap/{name}" for name in CLASS_NAMES),
]


def shapes_overrides(data_dir) -> list[str]:
    """tiny_overrides' data=shapes, on this module's dataset (later overrides win)."""
    return [f"paths.data_dir={data_dir}",
            *(f"data.train.generator.{key}={value}" for key, value in DDP_SHAPES.items())]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(data_dir, checkpoint path): the tiny detector after 64 steps (AdamW 6e-3, 5 warm-up steps)."""
    data_dir = tmp_path_factory.mktemp("ddp_data")
    ShapesGenerator(data_dir / "shapes", **DDP_SHAPES).ensure()
    out = tmp_path_factory.mktemp("ddp_train")
    cfg = compose_config("train", out, [
        *tiny_overrides(data_dir), *shapes_overrides(data_dir),
        "trainer.limit_train_batches=null", f"trainer.max_epochs={EPOCHS}",
        f"trainer.check_val_every_n_epoch={EPOCHS}",  # one validation, at the end: last.ckpt is saved then
        "optimizer.lr=0.006", "schedule.warmup_steps=5",
        "callbacks.validation_images.num_images=0", "test=false", "logger=csv",
    ])
    _, objects = script("train").train(cfg)
    assert objects["trainer"].global_step == EPOCHS * DDP_SHAPES["num_train"] // 4
    return data_dir, out / "checkpoints" / "last.ckpt"


def eval_overrides(data_dir, ckpt) -> list[str]:
    return [
        f"ckpt_path={ckpt}", "split=val", "data=shapes", *shapes_overrides(data_dir),
        "data.num_workers=0", "data.batch_size=4", "data.eval_batch_size=1",
        "torch_threads=1", "trainer.enable_progress_bar=false",
    ]


def test_ddp_sim_eval_gives_the_single_process_map(checkpoint, tmp_path):
    data_dir, ckpt = checkpoint

    # Single process, in process: its evaluator's records are inspected below.
    cfg = compose_config("eval", tmp_path / "single", [*eval_overrides(data_dir, ckpt),
                                                       "trainer.accelerator=cpu", "trainer.devices=1"])
    metrics, objects = script("eval").evaluate(cfg)
    single = {key: float(metrics[key]) for key in METRIC_KEYS}
    evaluator = objects["module"].evaluators["val"]
    dataset = objects["datamodule"].datasets["val"]
    assert len(dataset) == NUM_VAL and len(evaluator.store.gathered()) == NUM_VAL

    # Non-trivial numbers: the detector finds objects of every class.
    assert math.isnan(single["val/map_large"])  # no object above 96^2 px in images of at most 128 px
    for key, value in single.items():
        if key != "val/map_large":
            assert 0 < value <= 1, (key, value)
    assert single["val/mar_100"] > 0.05

    # Under 2 ranks the sampler repeats the first image on rank 1; counted twice, it would change
    # the numbers: equality below means each image counted once.
    assert list(DistributedSampler(range(NUM_VAL), num_replicas=2, rank=1, shuffle=False))[-1] == 0
    padded_id = dataset.records[0].image_id
    doubled = COCOEvaluator(objects["module"].class_names, objects["module"].label_to_category_id)
    records = evaluator.store.records
    doubled.store.records = {**records, max(records) + 1: records[padded_id]}
    doubled_metrics = doubled.compute()
    assert any(doubled_metrics[key.removeprefix("val/")] != value for key, value in single.items()
               if not math.isnan(value))

    # 2 processes (popen re-runs eval.py for rank 1), same checkpoint, same data.
    run_dir = tmp_path / "ddp"
    proc = run_script("eval", [*eval_overrides(data_dir, ckpt), "trainer=ddp_sim", f"hydra.run.dir={run_dir}"],
                      timeout=300)
    output = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output and "Starting with 2 processes" in output
    rows = read_metrics_csv(run_dir / "csv" / "version_0" / "metrics.csv")  # rank 0's logger
    ddp = {}
    for key in METRIC_KEYS:
        ((_, ddp[key]),) = column(rows, key)  # logged once
    for key in METRIC_KEYS:
        same = ddp[key] == single[key] or (math.isnan(ddp[key]) and math.isnan(single[key]))
        assert same, (key, ddp[key], single[key])
    # Rank 0 alone prints COCO's full summary (mAR@1/10, AP50 per class...): the single process's, to the digit.
    assert proc.stdout.count(f"{ckpt} on the val split:") == 1
    assert evaluator.summary() in proc.stdout


def test_two_nodes_on_loopback_give_the_single_process_map(checkpoint, tmp_path):
    """trainer.num_nodes=2, one process per node (NODE_RANK 0 and 1, MASTER_ADDR=127.0.0.1, gloo), as
    two machines would run it; docs/reliability.md has the SLURM command for a real cluster."""
    import socket
    import subprocess
    import sys

    from tests.app.helpers import ROOT, script_env

    data_dir, ckpt = checkpoint
    cfg = compose_config("eval", tmp_path / "single", [*eval_overrides(data_dir, ckpt),
                                                       "trainer.accelerator=cpu", "trainer.devices=1"])
    metrics, _ = script("eval").evaluate(cfg)
    single = {key: float(metrics[key]) for key in METRIC_KEYS}

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    procs = []
    for node in (0, 1):
        env = dict(script_env(), NODE_RANK=str(node), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        args = [*eval_overrides(data_dir, ckpt), "trainer=ddp_sim", "trainer.devices=1", "trainer.num_nodes=2",
                f"hydra.run.dir={tmp_path / f'node{node}'}"]
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "src" / "eval.py"), *args], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outputs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    rows = read_metrics_csv(tmp_path / "node0" / "csv" / "version_0" / "metrics.csv")  # global rank 0 logs
    for key in METRIC_KEYS:
        ((_, value),) = column(rows, key)
        assert value == single[key] or (math.isnan(value) and math.isnan(single[key])), (key, value, single[key])
