"""ValidationPlots: the confusion matrix of the whole validation (each image once, also across DDP
ranks), hand-counted; the two PNGs of each plotted validation; the same images in an offline W&B run."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from frcnn.app.callbacks import ValidationPlots
from frcnn.evaluation import COCOEvaluator
from tests.app.helpers import CLASS_NAMES, compose_config, script, tiny_overrides

PLOTS = ("confusion_matrix", "pr_curves")
CIRCLE, SQUARE, TRIANGLE = 1, 2, 3
FAR = [40.0, 40.0, 60.0, 60.0]  # overlaps no ground-truth box of any pattern
A, B, C = [2.0, 2.0, 20.0, 20.0], [22.0, 2.0, 38.0, 30.0], [5.0, 30.0, 30.0, 55.0]


def _pattern(kind: int, epoch: int) -> tuple[list, list]:
    """-> (ground truth [(box, label)], detections [(box, label, score)]) of one of five scenes."""
    if kind == 0:  # a match, a class confusion, a false positive (not in epoch 2) and one below 0.3
        dets = [(A, CIRCLE, 0.9), (B, TRIANGLE, 0.8), ([1.0, 1.0, 4.0, 4.0], SQUARE, 0.1)]
        return [(A, CIRCLE), (B, SQUARE)], dets + ([] if epoch == 2 else [(FAR, SQUARE, 0.7)])
    if kind == 1:  # a miss
        return [(C, TRIANGLE)], []
    if kind == 2:  # a false positive on an image without objects
        return [], [(FAR, CIRCLE, 0.95)]
    if kind == 3:  # IoU 180 / 468 = 0.38 < 0.5: a false positive and a miss, not a match
        return [(A, CIRCLE)], [([10.0, 2.0, 28.0, 20.0], CIRCLE, 0.6)]
    return [(B, SQUARE)], [(B, SQUARE, 0.9)]  # kind 4: a match


def _matrix(cells: dict[tuple[int, int], int]) -> torch.Tensor:
    matrix = torch.zeros(4, 4, dtype=torch.int64)
    for (true, predicted), count in cells.items():
        matrix[true, predicted] = count
    return matrix


# [true, predicted] counts of each pattern, by hand; index 0 = background
COUNTS = {
    0: _matrix({(CIRCLE, CIRCLE): 1, (SQUARE, TRIANGLE): 1, (0, SQUARE): 1}),
    1: _matrix({(TRIANGLE, 0): 1}),
    2: _matrix({(0, CIRCLE): 1}),
    3: _matrix({(0, CIRCLE): 1, (CIRCLE, 0): 1}),
    4: _matrix({(SQUARE, SQUARE): 1}),
}
EPOCH_2_PATTERN_0 = _matrix({(CIRCLE, CIRCLE): 1, (SQUARE, TRIANGLE): 1})


def _image(image_id: int, epoch: int = 0):
    """Image ``image_id`` shows pattern ``image_id % 5``: a 64 x 64 image, its target, its detections."""
    truth, dets = _pattern(image_id % 5, epoch)
    target = {"boxes": torch.tensor([b for b, _ in truth]).reshape(-1, 4),
              "labels": torch.tensor([lab for _, lab in truth], dtype=torch.int64), "image_id": torch.tensor(image_id),
              "ignore_boxes": torch.zeros(0, 4), "ignore_labels": torch.zeros(0, dtype=torch.int64)}  # fmt: skip
    pred = {"boxes": torch.tensor([b for b, _, _ in dets]).reshape(-1, 4),
            "labels": torch.tensor([lab for _, lab, _ in dets], dtype=torch.int64),
            "scores": torch.tensor([s for _, _, s in dets])}  # fmt: skip
    return torch.rand(3, 64, 64), target, pred


def _validate(callback, trainer, module, image_ids: list[int], epoch: int) -> None:
    """One validation epoch through the callback's hooks, in batches of two, as Lightning calls them
    (the module's COCO evaluation runs before on_validation_end)."""
    callback.on_validation_epoch_start(trainer, module)
    evaluator = module.evaluators["val"]
    evaluator.reset()
    for start in range(0, len(image_ids), 2):
        images, targets, preds = zip(*[_image(i, epoch) for i in image_ids[start : start + 2]])
        evaluator.update(list(preds), list(targets))
        callback.on_validation_batch_end(trainer, module, list(preds), (list(images), list(targets)), start // 2)
    evaluator.compute()
    callback.on_validation_end(trainer, module)


def _png_size(path) -> tuple[int, int]:
    """(width, height) of a valid PNG file."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes every pixel: a truncated file fails here
        return image.size


def test_each_plotted_validation_writes_its_matrix_and_pngs(tmp_path):
    callback = ValidationPlots(tmp_path, iou_threshold=0.5, score_threshold=0.3, every_n_epochs=2)
    module = SimpleNamespace(class_names=CLASS_NAMES, evaluators={"val": COCOEvaluator(CLASS_NAMES)})
    padded = [0, 1, 2, 3, 4, 0]  # image 0 again, as a DistributedSampler pads: counted once

    trainer = SimpleNamespace(sanity_checking=True, current_epoch=0, global_step=0, is_global_zero=True, loggers=[])
    _validate(callback, trainer, module, padded, epoch=0)
    assert callback.matrix is None and not any(tmp_path.iterdir())  # the sanity check is not plotted

    every_pattern = sum(COUNTS.values())
    assert every_pattern.tolist() == [[0, 2, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]]
    for epoch in range(3):
        trainer = SimpleNamespace(sanity_checking=False, current_epoch=epoch, global_step=10 * epoch,
                                  is_global_zero=True, loggers=[])  # fmt: skip
        _validate(callback, trainer, module, padded, epoch)
        if epoch == 0:
            assert torch.equal(callback.matrix, every_pattern)
    # epoch 1 is not plotted (the matrix stays epoch 0's... and is then replaced by epoch 2's own)
    assert torch.equal(callback.matrix, every_pattern - COUNTS[0] + EPOCH_2_PATTERN_0)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_000", "epoch_002"]  # every_n_epochs=2
    for folder in tmp_path.iterdir():
        assert sorted(p.stem for p in folder.iterdir()) == list(PLOTS)
        assert _png_size(folder / "pr_curves.png") == (700, 600)
        assert _png_size(folder / "confusion_matrix.png") == (500, 500)
        assert all((folder / f"{name}.png").stat().st_size > 10_000 for name in PLOTS)


def test_iou_threshold_must_be_a_coco_one():
    assert ValidationPlots(iou_threshold=0.75).iou_threshold == 0.75
    with pytest.raises(ValueError, match="COCO"):
        ValidationPlots(iou_threshold=0.3)  # COCOeval has no PR curve there: refused up front


def _rank_images(rank: int, world_size: int) -> list[int]:
    """DistributedSampler without shuffling: 9 images padded to 10 by repeating image 0 on rank 1."""
    padded = list(range(9)) + [0]
    return padded[rank::world_size]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        callback = ValidationPlots(None, score_threshold=0.3)
        module = SimpleNamespace(class_names=CLASS_NAMES, evaluators={"val": COCOEvaluator(CLASS_NAMES)})
        trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, global_step=0,
                                  is_global_zero=rank == 0, loggers=[])  # fmt: skip
        _validate(callback, trainer, module, _rank_images(rank, world_size), epoch=0)
    finally:
        dist.destroy_process_group()
    torch.save(callback.matrix, f"{out_dir}/rank{rank}.pt")


def test_two_process_gloo_counts_every_image_once(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    expected = sum(COUNTS[i % 5] for i in range(9))  # images 0..8, each once
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), expected), rank
    # Summing the ranks' matrices would count rank 1's copy of image 0 twice.
    assert COUNTS[0].sum() > 0


def test_offline_wandb_run_gets_the_plots(tmp_path, data_dir, monkeypatch):
    """A real tiny run: the matrix covers the validation's real boxes and detections, and the W&B
    media are the PNGs written to save_dir, pixel for pixel."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_config("train", tmp_path, [
        *tiny_overrides(data_dir), "logger=wandb", "test=false",
        "callbacks.validation_plots.score_threshold=0.05",  # the tiny untrained model scores low
    ])  # fmt: skip
    _, objects = script("train").train(cfg)

    (callback,) = [c for c in objects["trainer"].callbacks if isinstance(c, ValidationPlots)]
    records = objects["module"].evaluators["val"].store.records  # the last validation's, kept
    assert len(records) == 8  # the tiny val split, every image
    # every ground-truth box is either matched or missed: its row; every detection kept is either a
    # match, a confusion or a false positive: its column (shapes has no ignore boxes)
    gt_per_class = np.bincount(np.concatenate([r.gt_labels for r in records.values()]), minlength=4)
    kept = np.concatenate([r.pred_labels[r.pred_scores >= 0.05] for r in records.values()])
    assert callback.matrix[1:].sum(dim=1).tolist() == gt_per_class[1:].tolist()
    assert callback.matrix[:, 1:].sum(dim=0).tolist() == np.bincount(kept, minlength=4)[1:].tolist()
    assert callback.matrix[0, 0] == 0 and kept.size > 0

    saved = tmp_path / "val_plots" / "epoch_000"
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    media = run_dir / "files" / "media" / "images" / "val" / "plots"
    for name in PLOTS:
        (logged,) = media.glob(f"{name}_*.png")
        np.testing.assert_array_equal(np.asarray(Image.open(logged)), np.asarray(Image.open(saved / f"{name}.png")))
    (records,) = run_dir.glob("run-*.wandb")
    data = records.read_bytes()
    assert all(f"val/plots/{name}".encode() in data for name in PLOTS)
