"""Multi-scale training: one shorter side drawn per batch from the transform's own seeded generator,
the max size kept, evaluation at a fixed size."""

from __future__ import annotations

from functools import partial

import torch

from frcnn.modeling.transform import InputTransform
from tests.model.builders import small_faster_rcnn

SIZES = (100, 120, 140)
# torch.randint(3, (1,), generator=torch.Generator().manual_seed(seed)), drawn 8 times:
# seed 0 -> indices 2, 0, 2, 0, 1, 0, 1, 1; seed 1 -> 1, 2, 0, 2, 1, 1, 2, 2.
DRAWN = {0: [140, 100, 140, 100, 120, 100, 120, 120], 1: [120, 140, 100, 140, 120, 120, 140, 140]}


def transform(**kwargs) -> InputTransform:
    return InputTransform(SIZES, 1000, size_divisible=16, image_mean=(0.0,) * 3, image_std=(1.0,) * 3, **kwargs)


def test_one_size_per_batch_in_the_seeded_order():
    for seed, expected in DRAWN.items():
        t = transform(size_seed=seed).train()
        drawn = []
        for _ in range(8):
            batch = t([torch.rand(3, 50, 80), torch.rand(3, 60, 60)])
            shorter = [min(size) for size in batch.image_sizes]
            assert shorter[0] == shorter[1]  # both images of the batch at one scale
            drawn.append(shorter[0])
        assert drawn == expected


def test_the_draw_ignores_the_global_generator():
    a, b = transform(size_seed=0).train(), transform(size_seed=0).train()
    first = [min(a([torch.rand(3, 50, 80)]).image_sizes[0]) for _ in range(4)]
    torch.manual_seed(123)
    torch.rand(100)  # another consumer of the global stream (the RPN's sampling, say)
    assert [min(b([torch.rand(3, 50, 80)]).image_sizes[0]) for _ in range(4)] == first == DRAWN[0][:4]


def test_max_size_is_kept_and_targets_follow():
    t = InputTransform((100, 140), 150, size_divisible=16, image_mean=(0.0,) * 3, image_std=(1.0,) * 3).train()
    for _ in range(6):
        target = {"boxes": torch.tensor([[10.0, 5.0, 110.0, 45.0]]), "labels": torch.tensor([1])}
        batch = t([torch.rand(3, 50, 200)], [target])
        h, w = batch.image_sizes[0]
        # scale = min(s / 50, 150 / 200) = 0.75 for s = 100 and 140: the max size wins for both
        assert (h, w) == (37, 150)
        torch.testing.assert_close(batch.targets[0]["boxes"], torch.tensor([[7.5, 3.7, 82.5, 33.3]]))


def test_evaluation_uses_the_test_size():
    assert transform().test_min_size == 140  # the last of the list
    t = transform(test_min_size=120).eval()
    for _ in range(3):
        assert t([torch.rand(3, 50, 80)]).image_sizes[0] == (120, 192)
    with t.evaluated_at(100):  # test-time augmentation's scales
        assert t([torch.rand(3, 50, 80)]).image_sizes[0] == (100, 160)
    assert t([torch.rand(3, 50, 80)]).image_sizes[0] == (120, 192)


def test_a_training_step_reaches_the_draw():
    """The detector's forward resizes each training batch to the drawn size (seen by the backbone)."""
    model = small_faster_rcnn()
    model.transform = partial(InputTransform, (96, 128, 160), 1000, size_seed=1)(backbone=model.backbone)
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    model.train()
    target = {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])}
    for _ in range(4):
        model([torch.rand(3, 64, 64)], [target]).losses["loss"].backward()
    # seed 1 draws indices 1, 2, 0, 2: square 64 px images -> 128, 160, 96, 160 (multiples of 16)
    assert seen == [(128, 128), (160, 160), (96, 96), (160, 160)]
