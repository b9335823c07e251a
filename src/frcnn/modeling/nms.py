"""Greedy NMS that stops at ``k`` kept boxes per group: the RPN keeps the best ``post_nms_top_n``
(300-2000) of the 1000-12000 candidates per image and level, and NMS over all of them was the
largest single op of a CPU training step early in training (a third of a MobileNetV2 raccoon step
from the ImageNet weights; ~12 % once the RPN's boxes cluster, bench/README.md "Training speed-ups").

Greedy NMS decides each box from the boxes ranked above it alone, so NMS over the ``m`` best boxes
keeps exactly the boxes NMS over all of them keeps among those ``m``. The first ``k`` kept boxes
therefore come out of NMS over the shortest prefix that holds them; here that prefix is found by
trying 3 k boxes and growing by the kept fraction seen. NMS costs about (boxes kept) x (boxes
looked at), so stopping at 600 kept of 12000 (~1500 boxes looked at, against ~4000 kept of 12000)
does ~1/30 of the work.

The groups are independent, and torchvision's CPU NMS runs on one thread with the GIL released:
with more than one torch thread and enough boxes, the groups go to a small thread pool
(``_map_groups``), so the two images x five levels of an FPN training step use both cores
(bench/README.md, "Fused SGD and threaded proposal NMS").

Shape shorthand: E boxes, G groups (the RPN's (image, level) pairs), boxes (x1, y1, x2, y2).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from frcnn.modeling.batched import top_k_per_group

FIRST_TRY = 3  # boxes looked at first, per box wanted (600 kept of the RPN's 12000 took 1300-2100)
GROWTH = 1.25  # margin over the boxes the kept fraction so far says are needed
THREADED_MIN_BOXES = 2000  # fewer boxes in all: one thread (a pool's hand-off costs ~0.1 ms)
MAX_WORKERS = 4

_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, pool): a forked child makes its own


def nms_top_k(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float, k: int) -> Tensor:
    """boxes (E, 4), scores (E,), groups (E,) int64 >= 0 -> indices of the first ``k`` boxes greedy
    NMS keeps in each group (``batched_nms``'s survivors cut to the ``k`` best of each group),
    ordered by group, then by decreasing score. Boxes of equal score rank in input order.

    On CPU it looks only at the prefix of each group's ranking that holds its first ``k`` survivors;
    elsewhere (CUDA's NMS is one parallel pass) and when tracing or compiling for export, it runs
    ``batched_nms`` over everything and cuts. The two give the same boxes.
    """
    if k <= 0 or boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if boxes.device.type != "cpu" or torch.jit.is_tracing() or torch.compiler.is_compiling():
        keep = batched_nms(boxes, scores, groups, iou_threshold)
        return keep[top_k_per_group(scores[keep], groups[keep], k)]
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]  # by group, best first
    ranked_groups = order.split(torch.bincount(groups).tolist())
    threads = len(ranked_groups) > 1 and boxes.shape[0] >= THREADED_MIN_BOXES
    kept = _map_groups(lambda ranked: _first_k(boxes, ranked, iou_threshold, k), ranked_groups, threads)
    return torch.cat(kept)


def _map_groups(fn: Callable[[Tensor], Tensor], groups: Sequence[Tensor], threads: bool) -> list[Tensor]:
    """[fn(g) for g in groups], in order; with ``threads``, on up to ``torch.get_num_threads()``
    pool threads (``MAX_WORKERS`` at most), one group at a time each."""
    workers = min(torch.get_num_threads(), MAX_WORKERS, len(groups)) if threads else 1
    if workers < 2:
        return [fn(g) for g in groups]
    global _pool
    if _pool is None or _pool[0] != os.getpid() or _pool[1] != workers:
        if _pool is not None and _pool[0] == os.getpid():
            _pool[2].shutdown(wait=False)
        _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="frcnn-nms"))
    return list(_pool[2].map(fn, groups))


def _first_k(boxes: Tensor, ranked: Tensor, iou_threshold: float, k: int) -> Tensor:
    """ranked (R,) indices of one group's boxes, best first -> its first ``k`` NMS survivors.

    Rounds over consecutive slices of the ranking: NMS over the survivors so far, ranked first,
    followed by the slice. Survivors of greedy NMS never suppress one another, so they all stay,
    and they suppress the slice's boxes as NMS over the whole prefix would (greedy NMS decides a
    box from the survivors ranked above it alone): exact. The first slice is ``FIRST_TRY`` k boxes
    (all of them where that is half or more); each next one reaches as far as the survivors' rate
    so far says ``k`` needs, with a margin.
    """
    count = ranked.numel()
    end = count if 2 * FIRST_TRY * k >= count else int(FIRST_TRY * k)
    survivors = ranked[:0]
    done = 0
    while True:
        candidates = torch.cat([survivors, ranked[done:end]])
        # Scores by rank (float32: exact integers up to 2^24): torchvision's sort then keeps this
        # order exactly, ties included.
        rank_scores = torch.arange(candidates.numel(), 0, -1, dtype=torch.float32)
        survivors = candidates[nms(boxes[candidates].float(), rank_scores, iou_threshold)]  # by rank
        done = end
        if survivors.numel() >= k or done == count:
            return survivors[:k]
        needed = done * k / max(survivors.numel(), 1) * GROWTH
        end = min(count, max(done + 64, int(needed) + 1))
