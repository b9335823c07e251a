"""ValidationPlots: the confusion matrix of the whole validation (each image once, also across DDP
ranks), the three PNGs of each plotted validation, and the same images in an offline W&B run."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from frcnn.app.callbacks import ValidationPlots
from frcnn.metrics import COCOEvaluator, confusion_matrix
from tests.app.helpers import CLASS_NAMES, compose_config, script, tiny_overrides

PLOTS = ("confusion_matrix", "images", "pr_curves")


def _image(image_id: int, epoch: int = 0):
    """One 64 x 64 image, its seeded target and detections (near the boxes, with a random class and
    score, plus a false one); another epoch gives other detections."""
    generator = torch.Generator().manual_seed(100 * epoch + image_id)
    num_gt = 1 + image_id % 3
    xy = torch.rand(num_gt, 2, generator=generator) * 30
    gt = torch.cat([xy, xy + 10 + torch.rand(num_gt, 2, generator=generator) * 20], dim=1)  # (G, 4)
    labels = torch.randint(1, 4, (num_gt,), generator=generator)
    target = {"boxes": gt, "labels": labels, "image_id": torch.tensor(image_id),
              "ignore_boxes": torch.zeros(0, 4), "ignore_labels": torch.zeros(0, dtype=torch.int64)}  # fmt: skip
    pred = {
        "boxes": torch.cat([gt + torch.randn(num_gt, 4, generator=generator), torch.tensor([[40.0, 40, 60, 60]])]),
        "scores": torch.rand(num_gt + 1, generator=generator),
        "labels": torch.randint(1, 4, (num_gt + 1,), generator=generator),
    }
    return torch.rand(3, 64, 64, generator=generator), target, pred


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


def _expected_matrix(image_ids: list[int], epoch: int) -> torch.Tensor:
    _, targets, preds = zip(*[_image(i, epoch) for i in image_ids])
    return confusion_matrix(list(preds), list(targets), len(CLASS_NAMES), iou_threshold=0.5, score_threshold=0.3)


def _png_size(path) -> tuple[int, int]:
    """(width, height) of a valid PNG file."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes every pixel: a truncated file fails here
        return image.size


def test_each_plotted_validation_writes_its_matrix_and_pngs(tmp_path):
    callback = ValidationPlots(tmp_path, num_images=3, iou_threshold=0.5, score_threshold=0.3, every_n_epochs=2)
    module = SimpleNamespace(class_names=CLASS_NAMES, evaluators={"val": COCOEvaluator(CLASS_NAMES)})
    padded = [0, 1, 2, 3, 4, 0]  # image 0 again, as a DistributedSampler pads: counted once

    trainer = SimpleNamespace(sanity_checking=True, current_epoch=0, global_step=0, is_global_zero=True, loggers=[])
    _validate(callback, trainer, module, padded, epoch=0)
    assert callback.matrix is None and not any(tmp_path.iterdir())  # the sanity check is not plotted

    for epoch in range(3):
        trainer = SimpleNamespace(sanity_checking=False, current_epoch=epoch, global_step=10 * epoch,
                                  is_global_zero=True, loggers=[])  # fmt: skip
        _validate(callback, trainer, module, padded, epoch)
        if epoch % 2 == 0:
            expected = _expected_matrix([0, 1, 2, 3, 4], epoch)
            assert torch.equal(callback.matrix, expected)
            # the data reach every kind of cell: matches, false positives, misses
            assert expected.diagonal()[1:].sum() > 0 and expected[0].sum() > 0 and expected[:, 0].sum() > 0
    assert not torch.equal(_expected_matrix([0, 1, 2, 3, 4], 0), callback.matrix)  # epoch 2's own counts

    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_000", "epoch_002"]  # every_n_epochs=2
    for folder in tmp_path.iterdir():
        assert sorted(p.stem for p in folder.iterdir()) == list(PLOTS)
        assert _png_size(folder / "pr_curves.png") == (700, 600)
        assert _png_size(folder / "confusion_matrix.png") == (500, 500)
        assert _png_size(folder / "images.png") == (1000, 1200)  # 3 rows of 4 inches, 10 wide
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
    expected = _expected_matrix(list(range(9)), epoch=0)
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pt"), expected), rank
    # Summing the ranks' matrices would count rank 1's copy of image 0 twice.
    assert _expected_matrix([0], epoch=0).sum() > 0


def test_offline_wandb_run_gets_the_plots(tmp_path, data_dir, monkeypatch):
    """A real tiny run: the matrix is the one of the evaluator's validation detections, and the
    W&B media are the PNGs written to save_dir, pixel for pixel."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_config("train", tmp_path, [
        *tiny_overrides(data_dir), "logger=wandb", "test=false", "callbacks.validation_plots.num_images=2",
        "callbacks.validation_plots.score_threshold=0.05",  # the tiny untrained model scores low
    ])  # fmt: skip
    _, objects = script("train").train(cfg)

    (callback,) = [c for c in objects["trainer"].callbacks if isinstance(c, ValidationPlots)]
    records = objects["module"].evaluators["val"].store.records  # the last validation's, kept
    assert len(records) == 8  # the tiny val split, every image
    preds = [{"boxes": torch.from_numpy(r.pred_boxes), "scores": torch.from_numpy(r.pred_scores),
              "labels": torch.from_numpy(r.pred_labels)} for r in records.values()]  # fmt: skip
    targets = [{"boxes": torch.from_numpy(r.gt_boxes), "labels": torch.from_numpy(r.gt_labels)} for r in records.values()]
    expected = confusion_matrix(preds, targets, len(CLASS_NAMES), iou_threshold=0.5, score_threshold=0.05)
    assert torch.equal(callback.matrix, expected)
    assert expected[1:].sum() == sum(len(t["labels"]) for t in targets) and expected[:, 1:].sum() > 0

    saved = tmp_path / "val_plots" / "epoch_000"
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    media = run_dir / "files" / "media" / "images" / "val" / "plots"
    for name in PLOTS:
        (logged,) = media.glob(f"{name}_*.png")
        np.testing.assert_array_equal(np.asarray(Image.open(logged)), np.asarray(Image.open(saved / f"{name}.png")))
    (records,) = run_dir.glob("run-*.wandb")
    data = records.read_bytes()
    assert all(f"val/plots/{name}".encode() in data for name in PLOTS)
