"""Confusion matrix on a hand-made case."""

import torch

from frcnn.evaluation import confusion_matrix


def test_confusion_matrix_by_hand():
    # Image 0: boxes A (label 1), B (2), C (3), and an ignore region of class 1.
    image0 = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]),
        "labels": torch.tensor([1, 2, 3]),
        "ignore_boxes": torch.tensor([[80.0, 80, 100, 100]]),
        "ignore_labels": torch.tensor([1]),
    }
    # By score:  p1 0.9  label 1 on A              -> [1, 1]
    #            p6 0.55 label 2 on nothing        -> [0, 2] false positive
    #            p2 0.8  label 3 on B              -> [2, 3] confusion
    #            p3 0.7  label 1 on A, A taken     -> [0, 1] false positive
    #            p4 0.6  label 2 on the ignore box -> left out
    #            p5 0.3  label 3 on C, below 0.5   -> left out, so C is a miss: [3, 0]
    preds0 = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [80, 80, 100, 100],
                               [50, 50, 60, 60], [200, 200, 210, 210]]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.3, 0.55]),
        "labels": torch.tensor([1, 3, 1, 2, 3, 2]),
    }  # fmt: skip
    # Image 1: nothing at all. Image 2: a box of class 2, no detection -> [2, 0].
    nothing = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    no_dets = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    image2 = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([2])}

    matrix = confusion_matrix([preds0, no_dets, no_dets], [image0, nothing, image2], num_classes=3)
    expected = torch.tensor(
        [
            [0, 1, 1, 0],  # background: false positives by predicted class
            [0, 1, 0, 0],
            [1, 0, 0, 1],
            [1, 0, 0, 0],
        ]
    )
    torch.testing.assert_close(matrix, expected)
    assert matrix.dtype == torch.int64
