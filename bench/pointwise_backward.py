"""1 x 1 convolutions' backward on a channels-last CPU input: oneDNN's ``convolution_backward``
against the matmuls of ``frcnn.layers.folded_conv._matmul_conv_backward`` (what the folded
convolutions of the training rewrite run there).

A 1 x 1 convolution is a matmul over the pixels: with channels last, the input's pixels are the
rows of an (N * H * W, C_in) matrix without a copy (every ``stride``-th pixel for a strided one,
gathered then), so dW = grad_rows^T @ pixel_rows and dx = grad_rows @ W, the skipped pixels of a
strided convolution getting zeros. Shapes: the 1 x 1 convolutions of the ResNet-50 trunk and head
in ``bench/vs_torchvision.py`` (C4: batch 2 at 384 px, layer4 as the box head over 32 RoIs of
14 x 14; FPN: batch 2 at 256 px). Float32, the process's torch threads; both gradients (dx, dW).
The variants run interleaved; medians of ``--repeats``, and the rate over the machine's large-matmul
rate (``torch.mm`` 4096^3) measured in the same run. The gradients are checked against oneDNN's.

    .venv/bin/python bench/pointwise_backward.py [--record]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
from _common import machine, record

from frcnn.layers.folded_conv import _matmul_conv_backward

SECTION = "## 1 x 1 convolutions' backward as matmuls"
# name, N, C_in, map side, C_out, stride
CASES = [
    ("C4 head: layer4 downsample", 32, 1024, 14, 2048, 2),
    ("C4 head: layer4.0 conv1", 32, 1024, 14, 512, 1),
    ("C4 head: layer4 conv3", 32, 512, 7, 2048, 1),
    ("C4 head: layer4 conv1", 32, 2048, 7, 512, 1),
    ("C4 trunk: layer2 downsample", 2, 256, 96, 512, 2),
    ("C4 trunk: layer3 downsample", 2, 512, 48, 1024, 2),
    ("C4 trunk: layer3 conv1", 2, 1024, 24, 256, 1),
    ("C4 trunk: layer3 conv3", 2, 256, 24, 1024, 1),
    ("FPN: layer2 conv3", 2, 128, 32, 512, 1),
    ("FPN: layer3 conv1", 2, 1024, 16, 256, 1),
    ("FPN: layer4 downsample", 2, 1024, 16, 2048, 2),
    ("FPN: layer4 conv1", 2, 2048, 8, 512, 1),
    ("FPN: layer4 conv3", 2, 512, 8, 2048, 1),
]


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) * 1e3  # the first call warms up


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--record", action="store_true", help="write the table into bench/README.md")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    gemm = 2 * 4096**3 / (median_ms(lambda: a @ b, 5) / 1e3)
    rows = []
    for name, N, C_in, side, C_out, stride in CASES:
        x = torch.randn(N, C_in, side, side).contiguous(memory_format=torch.channels_last)
        w = torch.randn(C_out, C_in, 1, 1).contiguous(memory_format=torch.channels_last)
        grad = torch.randn_like(F.conv2d(x, w, None, stride)).contiguous(memory_format=torch.channels_last)
        s = [stride, stride]

        onednn = partial(torch.ops.aten.convolution_backward, grad, x, w, None, s, [0, 0], [1, 1], False, [0, 0], 1,
                         [True, True, False])
        matmuls = partial(_matmul_conv_backward, grad, x, w, s, [0, 0], [1, 1], True, True)

        for got, expected in zip(matmuls(), onednn()[:2], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3 * expected.abs().max().item())
        times = {"oneDNN": [], "matmuls": []}
        for r in range(args.repeats):
            for k, fn in (("oneDNN", onednn), ("matmuls", matmuls)) if r % 2 == 0 else (("matmuls", matmuls), ("oneDNN", onednn)):
                times[k].append(median_ms(fn, 1))
        flops = 2 * 2 * N * (side // stride) ** 2 * C_in * C_out  # dx and dW
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((name, f"{N} x {C_in} x {side} x {side} -> {C_out}, stride {stride}", med["oneDNN"], med["matmuls"],
                     flops / (med["oneDNN"] / 1e3) / gemm, flops / (med["matmuls"] / 1e3) / gemm))
        print(f"{name}: oneDNN {med['oneDNN']:.1f} ms, matmuls {med['matmuls']:.1f} ms", flush=True)
    lines = [
        SECTION, "",
        f"{datetime.date.today().isoformat()}, `.venv/bin/python bench/pointwise_backward.py"
        f"{' --record' if args.record else ''}`, {machine(torch.device('cpu'))}. "
        f"{__doc__.split(chr(10) + chr(10))[1].replace(chr(10), ' ').replace('``', '`')} "
        f"Large-matmul rate {gemm / 1e9:.0f} GFLOP/s.", "",
        "| convolution | shape | oneDNN ms | matmuls ms | matmuls / oneDNN | oneDNN, share of the matmul rate | matmuls, share |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {n} | {shape} | {o:.1f} | {m:.1f} | {m / o:.2f} | {ro:.2f} | {rm:.2f} |" for n, shape, o, m, ro, rm in rows]
    total_o, total_m = sum(r[2] for r in rows), sum(r[3] for r in rows)
    lines += ["", f"Sum over the rows (each once): oneDNN {total_o:.0f} ms, matmuls {total_m:.0f} ms ({total_m / total_o:.2f})."]
    markdown = "\n".join(lines) + "\n"
    print("\n" + markdown)
    if args.record:
        record(SECTION, markdown)


if __name__ == "__main__":
    sys.exit(main())
