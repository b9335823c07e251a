"""frcnn.app.fused_sgd.SGD against torch.optim.SGD's per-tensor loop: same parameters and momentum
buffers after several steps, for every layout the training rewrite produces and the hyperparameters
SGD takes; which parameters take the fused views; state dicts load across the two classes."""

from __future__ import annotations

import copy

import pytest
import torch

from frcnn.app import fused_sgd
from frcnn.app.fused_sgd import SGD


def _params(layouts: str = "mixed", dtype=torch.float64) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 3, 3, 3), (16, 8, 1, 1), (5, 7), (7,), (4, 1, 3, 3), (1, 6, 1, 1)]
    out = []
    for i, shape in enumerate(shapes):
        t = torch.randn(shape, generator=g, dtype=dtype)
        if len(shape) == 4 and (layouts == "channels_last" or (layouts == "mixed" and i % 2 == 0)):
            t = t.contiguous(memory_format=torch.channels_last)
        out.append(torch.nn.Parameter(t))
    return out


def _grads(params, step: int, like_param: bool = True) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    grads = []
    for p in params:
        v = torch.randn(p.shape, generator=g, dtype=p.dtype)
        grads.append(torch.empty_like(p).copy_(v) if like_param else v.contiguous())
    return grads


def _run(cls, params, steps: int, set_grads=None, **kw):
    params = [torch.nn.Parameter(p.detach().clone(memory_format=torch.preserve_format)) for p in params]
    opt = cls(params, **kw)
    for step in range(steps):
        grads = set_grads(params, step) if set_grads else _grads(params, step)
        for p, gr in zip(params, grads):
            p.grad = gr
        opt.step()
    return params, opt


HYPER = [
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
    dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.9, weight_decay=1e-2, maximize=True),
    dict(lr=0.1),  # no momentum: no buffers
    dict(lr=0.1, weight_decay=1e-2),
]


@pytest.mark.parametrize("layouts", ["contiguous", "channels_last", "mixed"])
@pytest.mark.parametrize("hyper", HYPER, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_matches_torch_sgd(layouts, hyper):
    start = _params(layouts)
    ours, opt = _run(SGD, start, 4, **hyper)
    ref, ref_opt = _run(torch.optim.SGD, start, 4, foreach=False, **hyper)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert a.stride() == b.stride()  # the update leaves every layout as it was
        if hyper.get("momentum", 0):
            buf, ref_buf = opt.state[a]["momentum_buffer"], ref_opt.state[b]["momentum_buffer"]
            torch.testing.assert_close(buf, ref_buf, rtol=1e-12, atol=1e-12)
            assert buf.stride() == a.stride()
        else:
            assert opt.state[a].get("momentum_buffer") is None


def test_every_dense_parameter_takes_the_fused_kernel(monkeypatch):
    """All parameters whose gradient shares their layout go to one fused call per (first step,
    device, dtype); a gradient in another layout goes to torch's per-tensor update."""
    calls, reference = [], []
    real_fused = torch._fused_sgd_
    monkeypatch.setattr(torch, "_fused_sgd_", lambda ps, *a, **k: (calls.append([p.numel() for p in ps]), real_fused(ps, *a, **k)))
    real_ref = fused_sgd._sgd_reference
    monkeypatch.setattr(fused_sgd, "_sgd_reference", lambda ps, *a, **k: (reference.append(len(ps)), real_ref(ps, *a, **k)))
    start = _params("mixed")

    def contiguous_grad_for_first(params, step):
        grads = _grads(params, step)
        grads[0] = grads[0].contiguous()  # param 0 is channels-last: its gradient now is not
        return grads

    ours, _ = _run(SGD, start, 2, set_grads=contiguous_grad_for_first, lr=0.1, momentum=0.9, weight_decay=1e-2)
    ref, _ = _run(torch.optim.SGD, start, 2, set_grads=contiguous_grad_for_first, foreach=False, lr=0.1, momentum=0.9,
                  weight_decay=1e-2)
    assert calls == [[p.numel() for p in start[1:]]] * 2
    assert reference == [1, 1]
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_parameters_without_gradient_and_late_first_steps():
    """A parameter without a gradient is left alone; one whose first gradient comes at step 2
    starts its buffer then, as torch's SGD does, while the others carry on."""
    start = _params("mixed")

    def late(params, step):
        grads = _grads(params, step)
        if step < 2:
            grads[3] = None
        return grads

    ours, opt = _run(SGD, start, 4, set_grads=late, lr=0.1, momentum=0.9, weight_decay=1e-2)
    ref, _ = _run(torch.optim.SGD, start, 4, set_grads=late, foreach=False, lr=0.1, momentum=0.9, weight_decay=1e-2)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_float32_and_bfloat16():
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        start = _params("mixed", dtype)
        ours, _ = _run(SGD, start, 3, lr=0.1, momentum=0.9, weight_decay=1e-2)
        ref, _ = _run(torch.optim.SGD, start, 3, foreach=False, lr=0.1, momentum=0.9, weight_decay=1e-2)
        for a, b in zip(ours, ref):
            assert a.dtype == dtype
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_state_dict_loads_across_classes():
    """Ours -> torch's and torch's (contiguous buffers) -> ours continue the same trajectory."""
    start = _params("channels_last")
    hyper = dict(lr=0.1, momentum=0.9, weight_decay=1e-2)
    full, _ = _run(torch.optim.SGD, start, 4, foreach=False, **hyper)

    for first_cls, second_cls in ((SGD, torch.optim.SGD), (torch.optim.SGD, SGD)):
        params, opt = _run(first_cls, start, 2, **({"foreach": False} if first_cls is torch.optim.SGD else {}), **hyper)
        state = copy.deepcopy(opt.state_dict())
        if first_cls is torch.optim.SGD:  # buffers in another layout than the weights
            for s in state["state"].values():
                s["momentum_buffer"] = s["momentum_buffer"].contiguous()
        second = second_cls(params, **hyper)
        second.load_state_dict(state)
        for step in (2, 3):
            for p, gr in zip(params, _grads(params, step)):
                p.grad = gr
            second.step()
        for a, b in zip(params, full):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_closure_and_fused_false():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = SGD([w], lr=0.5, momentum=0.9)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 5.0
    assert w.tolist() == [0.0, 0.0]  # w - 0.5 * 2w
    off = SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, fused=False)
    assert off.defaults["foreach"] is None and not off.fused_layout


def test_dense_order_rejects_gaps():
    t = torch.zeros(4, 6)[:, ::2]
    assert fused_sgd._dense_order(t) is None
    cl = torch.zeros(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    order = fused_sgd._dense_order(cl)
    assert order == [0, 2, 3, 1]
    assert cl.permute(order).is_contiguous()
