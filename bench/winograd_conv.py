"""Winograd F(4 x 4, 3 x 3) against oneDNN's direct convolution on the 3 x 3 shapes the training
rewrite sends to it (``frcnn.layers.winograd``): forward, backward (dx + dW + db), and the rounding
of both against a float64 convolution. CPU, float32, channels-last, interleaved rounds (the order
reversed every round), medians and [min, max].

    .venv/bin/python bench/winograd_conv.py --rounds 9

Shapes: the FPN's P2 / P3 outputs and RPN trunk at 256 px (batch 2, 256 -> 256), P2 at 800 x 1216
(the seed's size), and two the rewrite leaves to oneDNN (P4 at 256 px: 16 x 16, under MIN_TILES;
ResNet-50 C4's RPN trunk at 384 px, 1024 -> 512 on 24 x 24) to show why.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from frcnn.layers.winograd import _Winograd3x3

SHAPES = [  # (N, C, K, H, W)
    (2, 256, 256, 64, 64),
    (2, 256, 256, 32, 32),
    (1, 256, 256, 200, 304),
    (2, 256, 256, 16, 16),
    (2, 1024, 512, 24, 24),
]


def _one(kind: str, x, w, b, grad) -> tuple[float, float]:
    x.grad = w.grad = b.grad = None
    start = time.perf_counter()
    y = _Winograd3x3.apply(x, w, b) if kind == "winograd" else F.conv2d(x, w, b, padding=1)
    middle = time.perf_counter()
    y.backward(grad)
    return middle - start, time.perf_counter() - middle


def _relative_errors(x, w, b, grad) -> dict[str, float]:
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = F.conv2d(xd, wd, bd, padding=1)
    ref.backward(grad.double())
    out = {}
    for kind in ("onednn", "winograd"):
        x.grad = w.grad = None
        y = _Winograd3x3.apply(x, w, b) if kind == "winograd" else F.conv2d(x, w, b, padding=1)
        y.backward(grad)
        out[kind] = max(((t.double() - r).abs().max() / r.abs().max()).item()
                        for t, r in ((y, ref), (x.grad, xd.grad), (w.grad, wd.grad)))
    return out


def _cell(samples: list[tuple[float, float]], i: int) -> str:
    v = [t[i] * 1e3 for t in samples]
    return f"{statistics.median(v):.1f} [{min(v):.1f}, {max(v):.1f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} torch threads; ms, median [min, max] of {args.rounds} interleaved rounds")
    print("| N, C -> K, H x W | oneDNN fwd | Winograd fwd | oneDNN bwd | Winograd bwd | fwd + bwd ratio | "
          "max rel. error oneDNN / Winograd |")
    print("| --- | --- | --- | --- | --- | ---: | --- |")
    for N, C, K, H, W in SHAPES:
        x = torch.randn(N, C, H, W).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = (torch.randn(K, C, 3, 3) / (3 * C**0.5)).contiguous(memory_format=torch.channels_last).requires_grad_()
        b = torch.randn(K, requires_grad=True)
        grad = torch.randn(N, K, H, W).contiguous(memory_format=torch.channels_last)
        times = {"onednn": [], "winograd": []}
        for kind in times:  # warm-up
            _one(kind, x, w, b, grad)
        for r in range(args.rounds):
            for kind in (("onednn", "winograd") if r % 2 == 0 else ("winograd", "onednn")):
                times[kind].append(_one(kind, x, w, b, grad))

        total = {k: statistics.median(f + bw for f, bw in v) for k, v in times.items()}
        errors = _relative_errors(x, w, b, grad)
        print(f"| {N}, {C} -> {K}, {H} x {W} | {_cell(times['onednn'], 0)} | {_cell(times['winograd'], 0)} | "
              f"{_cell(times['onednn'], 1)} | {_cell(times['winograd'], 1)} | {total['onednn'] / total['winograd']:.2f} | "
              f"{errors['onednn']:.1e} / {errors['winograd']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
