"""Under DDP every image counts once and every rank gets the single-process answer."""

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from frcnn.evaluation import COCOEvaluator, ProposalRecall, VOCEvaluator, merge_per_rank

CLASS_NAMES = ["a", "b", "c"]
NUM_IMAGES = 9


def _image(image_id: int):
    """One image's seeded detections and target (boxes near the ground truth, and false ones)."""
    generator = torch.Generator().manual_seed(image_id)
    num_gt = image_id % 4
    xy = torch.rand(num_gt, 2, generator=generator) * 200
    gt = torch.cat([xy, xy + 10 + torch.rand(num_gt, 2, generator=generator) * 80], dim=1)
    labels = torch.randint(1, 4, (num_gt,), generator=generator)
    boxes = torch.cat(
        [
            gt + torch.randn(num_gt, 4, generator=generator) * 5,
            torch.rand(3, 4, generator=generator).cumsum(1) * 90,
        ]
    )
    pred = {
        "boxes": boxes,
        "scores": torch.rand(num_gt + 3, generator=generator),
        "labels": torch.cat([labels, torch.randint(1, 4, (3,), generator=generator)]),
    }
    target = {"boxes": gt, "labels": labels, "image_id": torch.tensor(image_id),
              "ignore_boxes": torch.zeros(0, 4), "ignore_labels": torch.zeros(0, dtype=torch.int64)}  # fmt: skip
    return pred, target


def _rank_images(rank: int, world_size: int) -> list[int]:
    """DistributedSampler without shuffling: 9 images padded to 10 by repeating image 0, so rank 1
    sees image 0 too (ranks get 0,2,4,6,8 and 1,3,5,7,0)."""
    padded = list(range(NUM_IMAGES)) + list(range(NUM_IMAGES))[: (-NUM_IMAGES) % world_size]
    return padded[rank::world_size]


def _evaluate(image_ids: list[int]) -> dict[str, float]:
    coco, voc, recall = COCOEvaluator(CLASS_NAMES), VOCEvaluator(CLASS_NAMES), ProposalRecall((2, 5), (0.5,))
    for start in range(0, len(image_ids), 2):  # batches of two
        preds, targets = zip(*[_image(i) for i in image_ids[start : start + 2]])
        coco.update(list(preds), list(targets))
        voc.update(list(preds), list(targets))
        recall.update([p["boxes"] for p in preds], list(targets))
    metrics = {f"coco/{k}": v for k, v in coco.compute().items()}
    metrics.update({f"voc/{k}": v for k, v in voc.compute().items()})
    metrics.update(recall.compute())
    return metrics


def test_merge_per_rank_keeps_first_and_sorts():
    merged = merge_per_rank([{3: "r0-3", 1: "r0-1"}, {1: "r1-1", 2: "r1-2"}])
    assert list(merged.items()) == [(1, "r0-1"), (2, "r1-2"), (3, "r0-3")]


def test_padded_ranks_merge_to_the_whole_set():
    """Without a process group: the union of both ranks' stores is the single-process store."""
    single = COCOEvaluator(CLASS_NAMES)
    ranks = [COCOEvaluator(CLASS_NAMES), COCOEvaluator(CLASS_NAMES)]
    for i in range(NUM_IMAGES):
        single.update(*map(list, zip(_image(i))))
    for rank, evaluator in enumerate(ranks):
        for i in _rank_images(rank, 2):
            evaluator.update(*map(list, zip(_image(i))))
    merged = COCOEvaluator(CLASS_NAMES)
    merged.store.records = merge_per_rank([r.store.records for r in ranks])
    assert list(merged.store.records) == list(range(NUM_IMAGES))
    expected, actual = single.compute(), merged.compute()
    assert actual == pytest.approx(expected, nan_ok=True, abs=1e-6)
    # Counting rank 1's copy of image 0 twice would change the answer.
    twice = COCOEvaluator(CLASS_NAMES)
    for rank in range(2):
        for i in _rank_images(rank, 2):
            pred, target = _image(i)
            twice.update([pred], [dict(target, image_id=torch.tensor(100 * rank + i))])
    assert twice.compute()["map"] != pytest.approx(expected["map"], abs=1e-6)


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        metrics = _evaluate(_rank_images(rank, world_size))
    finally:
        dist.destroy_process_group()
    with open(f"{out_dir}/rank{rank}.json", "w") as f:
        json.dump(metrics, f)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    expected = _evaluate(list(range(NUM_IMAGES)))
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.json") as f:
            actual = json.load(f)
        assert actual.keys() == expected.keys()
        for key, value in expected.items():
            assert actual[key] == pytest.approx(value, abs=1e-6) or (
                math.isnan(value) and math.isnan(actual[key])
            ), key
    assert 0 < expected["coco/map"] < 1 and 0 < expected["voc/map_50"] < 1
