"""3 x 3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(4 x 4, 3 x 3): the
FPN's output convolutions and the RPN head's trunk in training, on a CPU.

Shape shorthand: N images, C input and K output channels, H x W the map, Th x Tw the 4 x 4
output tiles (Th = ceil(H / 4)), P = N * Th * Tw tiles, a/b the 6 x 6 points of a tile.

Each 4 x 4 block of outputs is ``A^T [(G g G^T) * (B^T d B)] A`` for the block's 6 x 6 input
window ``d`` and each 3 x 3 filter ``g`` (Lavin & Gray, 2016, with points 0, +-1, +-2): per
(channel in, channel out) pair 36 multiplies instead of 144, so the matmuls, the whole cost of a
direct convolution, shrink 4x; the transforms are two more small matmuls over the tiles (36 x 36
for the input, 16 x 36 for the output) and a gather of the overlapping windows. Run as:

    V = (B^T (x) B^T) windows        (36, P, C)   per chunk of tile rows
    M = V @ U, U = (G (x) G) g       (36, P, K)   36 matmuls
    y = (A^T (x) A^T) M              (16, P, K)   -> the 4 x 4 blocks of the channels-last output

The backward is the same algebra: ``dx`` is the Winograd convolution of the output gradient with
the filters rotated by 180 degrees and their channels swapped (a 3 x 3 "same" convolution's
input gradient), ``dW`` comes from ``dU = V^T @ (A^T (x) A^T)^T dY`` summed over the tiles, then
``(G (x) G)^T dU``; ``V`` is recomputed from the saved input (no transformed copy is kept).

Why: oneDNN runs these convolutions as direct ones at about the machine's matmul rate, so at equal
work there is nothing left to gain; Winograd does less work. On a 2-core Xeon (``bench/winograd_conv.py``,
bench/README.md "Winograd 3 x 3 convolutions") P2 of a 256 px FPN batch, (2, 256, 64, 64) -> 256,
takes ~16 ms forward and ~31 ms backward against oneDNN's ~27 and ~60 ms. The tiles are worked in
chunks of rows so that the transformed tiles stay in cache (unchunked, the same forward took 30 ms),
and every chunk reuses the same scratch buffers (``_Scratch``): fresh buffers of a few MB per chunk
were mapped anew by glibc, and their page faults cost more than the convolution saved. Maps under
``MIN_TILES`` tiles per image (16 x 16 and smaller) run oneDNN's convolution, which is faster there.

Accuracy: float32 throughout, the transforms' constants are small (|B| <= 5, |A| <= 8), so the
result differs from a direct float32 convolution by ~1e-5 of its magnitude (a direct one: ~1e-6);
``tests/model/test_winograd.py`` bounds both against float64. Where it runs: CPU, float32,
channels-last input, no autocast, not under ``torch.compile`` or tracing (export); elsewhere the
module is a plain ``nn.Conv2d`` (cuDNN chooses its own Winograd kernels on a GPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn.layers.memory_format import is_channels_last
from frcnn.layers.module_swap import replace_modules

_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]  # (6, 6) input transform B^T
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]  # (6, 3) filter transform G
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]  # (4, 6) A^T

# Tiles per chunk: the forward's 36 (chunk, C) transformed tiles stay in cache (64-80 tiles were
# the fastest on (2, 256, H, W) maps from 32 x 32 to 100 x 152); the weight gradient sums over the
# tiles, so its chunks are larger (each chunk's matmul reads the (36, C, K) sum once).
_FORWARD_TILES = 72
_WEIGHT_GRAD_TILES = 128
# Maps with fewer output tiles per image than this run oneDNN's direct convolution.
MIN_TILES = 64
MIN_CHANNELS = 64


def _kron(a: list, b: list, like: Tensor) -> Tensor:
    return torch.kron(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).to(like)


def _matrices(like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B^T (x) B^T) (36, 36), (A^T (x) A^T) (16, 36), (G (x) G) (36, 9) in ``like``'s dtype and device."""
    return _kron(_BT, _BT, like), _kron(_AT, _AT, like), _kron(_G, _G, like)


def _filter_transform(weight: Tensor, kg: Tensor) -> Tensor:
    """weight (K, C, 3, 3) -> U (36, C, K)."""
    K, C = weight.shape[:2]
    return (kg @ weight.permute(2, 3, 1, 0).reshape(9, C * K)).view(36, C, K)


class _Scratch:
    """Flat buffers reused by every chunk of one call (``take(name, shape)``: a view of the first
    numel elements): each chunk's temporaries would otherwise be allocations of a few MB, which
    glibc may map afresh (page faults, ~10 us per 4 KB on a VM) every time."""

    def __init__(self, like: Tensor) -> None:
        self.like, self.buffers = like, {}

    def take(self, name: str, shape: tuple[int, ...]) -> Tensor:
        numel = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < numel:
            buffer = self.buffers[name] = self.like.new_empty(numel)
        return buffer[:numel].view(shape)


def _slab(pixels: Tensor, n: int, top: int, height: int, width: int, left: int, out: Tensor) -> Tensor:
    """Rows [top, top + height) and columns [left, left + width) of image n of pixels (N, H, W, C)
    into out (height, width, C), zeros where that reaches past the map (the padding)."""
    _, H, W, C = pixels.shape
    y0, y1, x0, x1 = max(top, 0), min(top + height, H), max(left, 0), min(left + width, W)
    if y1 <= y0 or x1 <= x0:
        return out.zero_()
    # only the border past the map is zeroed (the whole slab was: P2 at 800 px, ~90 ms a step)
    out[: y0 - top].zero_()
    out[y1 - top :].zero_()
    out[:, : x0 - left].zero_()
    out[:, x1 - left :].zero_()
    out[y0 - top : y1 - top, x0 - left : x1 - left] = pixels[n, y0:y1, x0:x1]
    return out


def _transformed_windows(pixels: Tensor, n: int, row: int, rows: int, kb: Tensor, scratch: _Scratch) -> Tensor:
    """V of tile rows [row, row + rows) of image n: (B^T (x) B^T) times the 6 x 6 input windows at
    stride 4 of the map padded by one -> (36, rows * Tw, C)."""
    _, _, W, C = pixels.shape
    Tw = -(-W // 4)
    Wp = 4 * Tw + 2
    slab = _slab(pixels, n, 4 * row - 1, 4 * rows + 2, Wp, -1, scratch.take("slab", (4 * rows + 2, Wp, C)))
    windows = scratch.take("windows", (6, 6, rows, Tw, C))
    windows.copy_(slab.as_strided((6, 6, rows, Tw, C), (Wp * C, C, 4 * Wp * C, 4 * C, 1)))  # overlapping: a gather
    v = scratch.take("v", (36, rows * Tw * C))
    return torch.mm(kb, windows.view(36, -1), out=v).view(36, rows * Tw, C)


def _row_chunks(Th: int, Tw: int, tiles: int) -> list[tuple[int, int]]:
    """[row, row + rows) spans of tile rows, ~``tiles`` tiles each."""
    step = max(1, -(-tiles // Tw))
    return [(r, min(step, Th - r)) for r in range(0, Th, step)]


def winograd_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x (N, C, H, W), weight (K, C, 3, 3), bias (K,) or None -> conv2d(x, weight, bias, padding=1)
    (N, K, H, W), channels-last, by F(4 x 4, 3 x 3) (module docstring). Not differentiable itself:
    ``conv3x3`` / ``WinogradConv2d`` are."""
    N, C, H, W = x.shape
    K = weight.shape[0]
    Th, Tw = -(-H // 4), -(-W // 4)
    kb, ka, kg = _matrices(x)
    u = _filter_transform(weight.to(x.dtype), kg)
    pixels = x.permute(0, 2, 3, 1)  # (N, H, W, C): a view of channels-last memory
    exact = H == 4 * Th and W == 4 * Tw
    out = x.new_empty((N, 4 * Th, 4 * Tw, K)) if not exact else torch.empty(
        (N, K, H, W), dtype=x.dtype, device=x.device, memory_format=torch.channels_last).permute(0, 2, 3, 1)
    scratch = _Scratch(x)
    for n in range(N):
        for row, rows in _row_chunks(Th, Tw, _FORWARD_TILES):
            v = _transformed_windows(pixels, n, row, rows, kb, scratch)
            m = torch.bmm(v, u, out=scratch.take("m", (36, rows * Tw, K)))
            blocks = torch.mm(ka, m.view(36, -1), out=scratch.take("blocks", (16, rows * Tw * K)))
            blocks = blocks.view(4, 4, rows, Tw, K).permute(2, 0, 3, 1, 4)  # (rows, 4, Tw, 4, K)
            target = out[n, 4 * row : 4 * (row + rows)].view(rows, 4, Tw, 4, K)
            if bias is not None:
                torch.add(blocks, bias.to(x.dtype), out=target)
            else:
                target.copy_(blocks)
    y = out.permute(0, 3, 1, 2)  # (N, K, H', W') channels-last strides
    return y if exact else y[:, :, :H, :W].contiguous(memory_format=torch.channels_last)


def _weight_grad(x: Tensor, grad: Tensor) -> Tensor:
    """x (N, C, H, W), the output gradient grad (N, K, H, W) -> dW (K, C, 3, 3) of
    ``winograd_conv3x3(x, W)``: dU = sum over tiles of V^T @ (A^T (x) A^T)^T dY (36, C, K), then
    dW = (G (x) G)^T dU."""
    N, C, H, W = x.shape
    K = grad.shape[1]
    Th, Tw = -(-H // 4), -(-W // 4)
    kb, ka, kg = _matrices(x)
    pixels, grad_pixels = x.permute(0, 2, 3, 1), grad.permute(0, 2, 3, 1)
    du = x.new_zeros((36, C, K))
    scratch = _Scratch(x)
    for n in range(N):
        for row, rows in _row_chunks(Th, Tw, _WEIGHT_GRAD_TILES):
            v = _transformed_windows(pixels, n, row, rows, kb, scratch)
            # the output gradient's 4 x 4 blocks on the tile grid (0 past the map), point (p, q) major
            g = _slab(grad_pixels, n, 4 * row, 4 * rows, 4 * Tw, 0, scratch.take("grad", (4 * rows, 4 * Tw, K)))
            blocks = scratch.take("grad_blocks", (4, 4, rows, Tw, K))
            blocks.copy_(g.view(rows, 4, Tw, 4, K).permute(1, 3, 0, 2, 4))
            dm = torch.mm(ka.t(), blocks.view(16, -1), out=scratch.take("dm", (36, rows * Tw * K)))
            du.baddbmm_(v.transpose(1, 2), dm.view(36, rows * Tw, K))
    dw = (kg.t() @ du.view(36, C * K)).view(3, 3, C, K)  # (i, j, C, K)
    return dw.permute(3, 2, 0, 1)  # (K, C, 3, 3), in (3, 3, C, K) memory: the caller lays it out


class _Winograd3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return winograd_conv3x3(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        needs_x, needs_w, needs_b = ctx.needs_input_grad
        grad_x = grad_w = grad_b = None
        if needs_x:  # a "same" 3 x 3 convolution's input gradient: the rotated, transposed filters
            grad_x = winograd_conv3x3(grad, weight.flip(2, 3).transpose(0, 1))
            if not is_channels_last(x):
                grad_x = grad_x.contiguous()
        if needs_w:
            memory_format = torch.channels_last if is_channels_last(weight) else torch.contiguous_format
            grad_w = _weight_grad(x, grad).to(weight.dtype).contiguous(memory_format=memory_format)
        if needs_b and ctx.has_bias:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


def applies(x: Tensor, weight: Tensor) -> bool:
    """Whether the Winograd path runs for this input (module docstring): a CPU float32
    channels-last map of at least ``MIN_TILES`` tiles per image, outside autocast, compile, tracing."""
    H, W = x.shape[-2:]
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and is_channels_last(x)
        and -(-H // 4) * -(-W // 4) >= MIN_TILES
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def eligible(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` that is a 3 x 3 "same" convolution: stride 1, padding 1, no dilation
    or groups, zero padding, at least ``MIN_CHANNELS`` channels in and out."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
    )


def conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv2d(x, weight, bias, padding=1)``, differentiable, by Winograd where ``applies``."""
    if applies(x, weight):
        return _Winograd3x3.apply(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1)


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (3 x 3, stride 1, padding 1) that convolves by ``conv3x3``; the same
    Parameters and state-dict keys as the convolution it replaces (``use_winograd``)."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> WinogradConv2d:
        return _same_parameters(cls, conv)

    def forward(self, x: Tensor) -> Tensor:
        return conv3x3(x, self.weight, self.bias)

    def plain(self) -> nn.Conv2d:
        return _same_parameters(nn.Conv2d, self)


def _same_parameters(cls: type[nn.Conv2d], conv: nn.Conv2d) -> nn.Conv2d:
    new = cls(conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None, device="meta")
    new.weight, new.bias = conv.weight, conv.bias
    return new.train(conv.training)


def use_winograd(model: nn.Module) -> int:
    """Swap every ``eligible`` convolution below ``model`` for a ``WinogradConv2d``; -> how many."""
    return replace_modules(model, lambda m: WinogradConv2d.from_conv(m) if eligible(m) else None)


def restore_winograd(model: nn.Module) -> int:
    """Undo ``use_winograd``; -> how many."""
    return replace_modules(model, lambda m: m.plain() if isinstance(m, WinogradConv2d) else None)
