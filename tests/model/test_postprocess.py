import torch
from torch.testing import assert_close

from frcnn.modeling.batched import top_k_per_group
from frcnn.modeling.boxes import BoxCoder
from frcnn.modeling.roi_heads.postprocess import postprocess_detections


def _logits(probabilities):
    return torch.log(torch.tensor(probabilities))


def test_overlapping_boxes_of_different_classes_both_survive():
    proposals = [torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 10.0, 52.0, 50.0]])]
    logits = _logits([[0.1, 0.8, 0.1], [0.1, 0.2, 0.7]])  # roi 0 -> class 1, roi 1 -> class 2
    dets = postprocess_detections(logits, torch.zeros(2, 8), proposals, [(100, 100)], BoxCoder(), 0.5, 0.5)[0]
    assert_close(dets["labels"], torch.tensor([1, 2]))
    assert_close(dets["scores"], torch.tensor([0.8, 0.7]))
    assert_close(dets["boxes"], proposals[0])


def test_same_class_duplicates_are_suppressed():
    proposals = [torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 10.0, 52.0, 50.0], [60.0, 60.0, 90.0, 90.0]])]
    logits = _logits([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])
    dets = postprocess_detections(logits, torch.zeros(3, 4), proposals, [(100, 100)], BoxCoder(), 0.05, 0.5)[0]
    assert_close(dets["scores"], torch.tensor([0.9, 0.7]))
    assert_close(dets["boxes"], proposals[0][[0, 2]])


def test_decode_clip_threshold_and_caps_per_image():
    proposals = [torch.tensor([[80.0, 80.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3) + torch.tensor([[0.0], [20.0], [40.0]])]
    deltas = torch.zeros(4, 4)
    deltas[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # shift right by one width (weights 1) -> clipped at 90
    logits = _logits([[0.2, 0.8], [0.1, 0.9], [0.4, 0.6], [0.96, 0.04]])
    dets = postprocess_detections(logits, deltas, proposals, [(90, 90), (100, 100)], BoxCoder(), 0.05, 0.5, 1, 1)
    assert_close(dets[0]["boxes"], torch.tensor([[90.0, 80.0, 90.0, 90.0]])[:0])  # zero width after clip: dropped
    assert_close(dets[1]["boxes"], torch.tensor([[0.0, 0.0, 10.0, 10.0]]))  # cap 1 per class keeps the best
    dets = postprocess_detections(logits, torch.zeros(4, 4), proposals, [(90, 90), (100, 100)], BoxCoder(), 0.05, 0.5, 100, 2)
    assert_close(dets[1]["scores"], torch.tensor([0.9, 0.6]))
    assert_close(dets[0]["boxes"], torch.tensor([[80.0, 80.0, 90.0, 90.0]]))


def test_no_proposals_gives_empty_detections():
    dets = postprocess_detections(torch.zeros(0, 3), torch.zeros(0, 8), [torch.zeros(0, 4)], [(10, 10)], BoxCoder())
    assert dets[0]["boxes"].shape == (0, 4) and dets[0]["labels"].dtype == torch.int64


def test_top_k_per_group():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    groups = torch.tensor([1, 0, 1, 1, 0])
    assert top_k_per_group(scores, groups, 2).tolist() == [1, 4, 3, 2]
