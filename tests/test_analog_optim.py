"""Tests of the analog optimizers (Analog SGD, Tiki-Taka) in hybridc.analog.optimizers."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hybridc.analog.optimizers import AnalogSGD, TikiTaka, soft_bounds_update_

DT = torch.float64


def _tensors():
    w = torch.tensor([[0.3, -0.2, 0.0], [0.45, -0.49, 0.1]], dtype=DT)
    g = torch.tensor([[0.5, 0.4, -1.0], [-2.0, 1.5, 0.0]], dtype=DT)
    return w, g


# ---------------------------------------------------------------------------------------
# one step against the formula
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_analog_sgd_one_step_matches_formula(foreach, weight_decay):
    w0, g = _tensors()
    lr, tau = 0.05, 0.5
    w = w0.clone().requires_grad_()
    w.grad = g.clone()
    opt = AnalogSGD([w], lr=lr, tau=tau, weight_decay=weight_decay, foreach=foreach)
    opt.step()
    ge = g + weight_decay * w0
    expected = w0 - lr * ge - (lr / tau) * ge.abs() * w0
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-15)
    # elementwise, by hand, for one entry: w=0.45, g=-2 -> 0.45 + 0.1 - 0.2*0.45 (no decay)
    if weight_decay == 0.0:
        assert w[1, 0].item() == pytest.approx(0.45 + 0.1 - 0.2 * 0.45, abs=1e-15)
    assert opt.state[w]["step"] == 1


@pytest.mark.parametrize("foreach", [False, True])
def test_tiki_taka_steps_match_formula(foreach):
    w0, g1 = _tensors()
    g2 = torch.tensor([[-0.1, 0.2, 0.3], [0.7, -0.6, 0.05]], dtype=DT)
    a, beta, tau = 0.1, 0.3, 0.5
    w = w0.clone().requires_grad_()
    opt = TikiTaka([w], lr=a, tau=tau, transfer_lr=beta, foreach=foreach)

    p_ref, w_ref = torch.zeros_like(w0), w0.clone()
    for g in (g1, g2):
        w.grad = g.clone()
        opt.step()
        p_ref = p_ref - a * g - (a / tau) * g.abs() * p_ref
        w_ref = w_ref + beta * p_ref - (beta / tau) * p_ref.abs() * w_ref
        torch.testing.assert_close(opt.state[w]["P"], p_ref, rtol=0, atol=1e-15)
        torch.testing.assert_close(w.detach(), w_ref, rtol=0, atol=1e-15)
    # first step by hand for one entry: P = -0.1*0.5 = -0.05; W = 0.3 - 0.015 - 0.6*0.05*0.3
    w_chk = TikiTaka([w1 := w0.clone().requires_grad_()], lr=a, tau=tau, transfer_lr=beta)
    w1.grad = g1.clone()
    w_chk.step()
    assert w_chk.state[w1]["P"][0, 0].item() == pytest.approx(-0.05, abs=1e-15)
    assert w1[0, 0].item() == pytest.approx(0.3 - 0.015 - 0.6 * 0.05 * 0.3, abs=1e-15)


def test_tiki_taka_transfer_every_and_tau_p():
    w0, g = _tensors()
    a, beta, tau, tau_p = 0.1, 0.3, 0.5, 2.0
    w = w0.clone().requires_grad_()
    opt = TikiTaka([w], lr=a, tau=tau, transfer_lr=beta, transfer_every=2, tau_p=tau_p)
    w.grad = g.clone()
    opt.step()
    p1 = -a * g  # P0 = 0
    torch.testing.assert_close(opt.state[w]["P"], p1, rtol=0, atol=1e-15)
    assert torch.equal(w.detach(), w0)  # no transfer at step 1
    opt.step()
    p2 = p1 - a * g - (a / tau_p) * g.abs() * p1
    torch.testing.assert_close(opt.state[w]["P"], p2, rtol=0, atol=1e-15)
    # transfer of P_2 at step 2; P is not reset afterwards
    torch.testing.assert_close(w.detach(), w0 + beta * p2 - (beta / tau) * p2.abs() * w0, rtol=0, atol=1e-15)


def test_param_without_grad_is_skipped_and_groups_have_own_hyperparameters():
    w0, g = _tensors()
    a = w0.clone().requires_grad_()
    b = w0.clone().requires_grad_()
    c = w0.clone().requires_grad_()
    opt = AnalogSGD([{"params": [a]}, {"params": [b, c], "tau": 2.0, "lr": 0.01}], lr=0.05, tau=0.5)
    a.grad, b.grad = g.clone(), g.clone()
    opt.step()
    torch.testing.assert_close(a.detach(), w0 - 0.05 * g - 0.1 * g.abs() * w0, rtol=0, atol=1e-15)
    torch.testing.assert_close(b.detach(), w0 - 0.01 * g - 0.005 * g.abs() * w0, rtol=0, atol=1e-15)
    assert torch.equal(c.detach(), w0) and c not in opt.state


# ---------------------------------------------------------------------------------------
# limits, bounds, helpers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_analog_sgd_infinite_tau_is_sgd(weight_decay):
    torch.manual_seed(0)
    model_a = torch.nn.Linear(5, 3).double()
    model_b = copy.deepcopy(model_a)
    model_c = copy.deepcopy(model_a)
    opt_a = AnalogSGD(model_a.parameters(), lr=0.1, tau=math.inf, weight_decay=weight_decay)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.1, weight_decay=weight_decay)
    opt_c = AnalogSGD(model_c.parameters(), lr=0.1, tau=1e12, weight_decay=weight_decay)
    x, y = torch.randn(16, 5, dtype=DT), torch.randn(16, 3, dtype=DT)
    for _ in range(5):
        for m, o in ((model_a, opt_a), (model_b, opt_b), (model_c, opt_c)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for pa, pb, pc in zip(model_a.parameters(), model_b.parameters(), model_c.parameters()):
        assert torch.equal(pa, pb)  # tau = inf: bit-identical to torch.optim.SGD
        torch.testing.assert_close(pc, pb, rtol=0, atol=1e-10)  # tau -> inf: converges to it


def test_clamp_keeps_device_range():
    w0 = torch.tensor([0.9, -0.9, 0.5], dtype=DT)
    g = torch.tensor([-100.0, 100.0, 0.0], dtype=DT)  # huge steps: alpha*|g| > tau
    w = w0.clone().requires_grad_()
    w.grad = g
    AnalogSGD([w], lr=0.1, tau=1.0).step()
    assert w.abs().max().item() <= 1.0
    assert w[0].item() == 1.0 and w[1].item() == -1.0 and w[2].item() == 0.5
    w2 = w0.clone().requires_grad_()
    w2.grad = g
    AnalogSGD([w2], lr=0.1, tau=1.0, clamp=False).step()  # bare recursion overshoots
    torch.testing.assert_close(w2.detach(), w0 - 0.1 * g - 0.1 * g.abs() * w0)
    # for moderate steps the soft bounds alone keep |W| <= tau (clamp is a no-op)
    torch.manual_seed(1)
    w3 = (torch.rand(1000, dtype=DT) * 2 - 1).requires_grad_()
    opt = AnalogSGD([w3], lr=0.1, tau=1.0, clamp=False)
    for _ in range(50):
        w3.grad = torch.randn(1000, dtype=DT) * 5  # alpha*|g| mostly < tau
        w3.grad.clamp_(-10, 10)
        opt.step()
        assert w3.abs().max().item() <= 1.0


def test_soft_bounds_update_helper():
    w0, d = _tensors()
    w = w0.clone()
    soft_bounds_update_(w, d, 2.0)
    torch.testing.assert_close(w, w0 + d - d.abs() / 2.0 * w0, rtol=0, atol=1e-15)
    w = w0.clone()
    soft_bounds_update_(w, d, math.inf)
    assert torch.equal(w, w0 + d)


def _make(kind, params, **kw):
    if kind == "analog_sgd":
        return AnalogSGD(params, lr=0.05, tau=0.7, weight_decay=0.01, **kw)
    return TikiTaka(params, lr=0.05, tau=0.7, transfer_lr=0.2, transfer_every=2, weight_decay=0.01, **kw)


@pytest.mark.parametrize("kind", ["analog_sgd", "tiki_taka"])
def test_foreach_matches_loop_and_mixed_dtypes(kind):
    torch.manual_seed(0)
    base = [torch.randn(4, 3) * 0.3, torch.randn(7, dtype=DT) * 0.3, torch.randn(2, 2) * 0.3]
    grads = [[torch.randn_like(t) for t in base] for _ in range(3)]
    ref = [t.clone().requires_grad_() for t in base]
    ps = [t.clone().requires_grad_() for t in base]
    ref_opt = _make(kind, ref, foreach=False)
    opt = _make(kind, ps, foreach=True)
    for gs in grads:
        for p, r, g in zip(ps, ref, gs):
            p.grad, r.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    for p, r in zip(ps, ref):
        assert p.dtype == r.dtype
        torch.testing.assert_close(p, r, rtol=0, atol=1e-12 if p.dtype == DT else 1e-6)


def test_closure_is_called_and_loss_returned():
    torch.manual_seed(0)
    w = torch.zeros(3, dtype=DT, requires_grad=True)
    target = torch.tensor([0.2, -0.1, 0.05], dtype=DT)
    for opt in (AnalogSGD([w], lr=0.1, tau=1.0), TikiTaka([w], lr=0.1, tau=1.0, transfer_lr=0.1)):
        calls = []

        def closure(opt=opt, calls=calls):
            opt.zero_grad()
            loss = ((w - target) ** 2).sum()
            loss.backward()
            calls.append(1)
            return loss

        loss = opt.step(closure)
        assert len(calls) == 1 and loss.item() > 0 and w.grad is not None


def test_invalid_arguments():
    p = [torch.zeros(2, requires_grad=True)]
    bad_sgd = [
        {"lr": 0.0, "tau": 1.0},
        {"lr": -1.0, "tau": 1.0},
        {"lr": 0.1, "tau": 0.0},
        {"lr": 0.1, "tau": -2.0},
        {"lr": 0.1, "tau": float("nan")},
        {"lr": math.inf, "tau": 1.0},
        {"lr": "0.1", "tau": 1.0},
        {"lr": 0.1, "tau": 1.0, "weight_decay": -0.1},
    ]
    for kw in bad_sgd:
        with pytest.raises(ValueError):
            AnalogSGD(p, **kw)
    bad_tt = [
        {"lr": 0.1, "tau": 1.0, "transfer_lr": 0.0},
        {"lr": 0.1, "tau": 0.0, "transfer_lr": 0.1},
        {"lr": -0.1, "tau": 1.0, "transfer_lr": 0.1},
        {"lr": 0.1, "tau": 1.0, "transfer_lr": 0.1, "transfer_every": 0},
        {"lr": 0.1, "tau": 1.0, "transfer_lr": 0.1, "transfer_every": 1.5},
        {"lr": 0.1, "tau": 1.0, "transfer_lr": 0.1, "tau_p": -1.0},
        {"lr": 0.1, "tau": 1.0, "transfer_lr": 0.1, "weight_decay": -1.0},
    ]
    for kw in bad_tt:
        with pytest.raises(ValueError):
            TikiTaka(p, **kw)
    with pytest.raises(ValueError, match="tau"):
        AnalogSGD([{"params": p, "tau": -1.0}], lr=0.1, tau=1.0)
    with pytest.raises(ValueError, match="transfer_every"):
        TikiTaka([{"params": p, "transfer_every": 0}], lr=0.1, tau=1.0, transfer_lr=0.1)
    opt = TikiTaka(p, lr=0.1, tau=1.0, transfer_lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": 0.0})


# ---------------------------------------------------------------------------------------
# state_dict
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["analog_sgd", "tiki_taka"])
def test_state_dict_round_trip(kind):
    torch.manual_seed(0)

    def make(params):
        if kind == "analog_sgd":
            return AnalogSGD(params, lr=0.05, tau=0.8, weight_decay=0.01)
        return TikiTaka(params, lr=0.05, tau=0.8, transfer_lr=0.3, transfer_every=3)

    shapes = [(4, 3), (3,)]
    ps = [(torch.randn(s) * 0.2).requires_grad_() for s in shapes]
    opt = make(ps)
    for _ in range(4):  # step 4: the next transfer (every 3) happens at step 6
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in ps]
    if kind == "tiki_taka":
        assert all("P" in s for s in saved["state"].values())
        assert any(s["P"].abs().sum() > 0 for s in saved["state"].values())

    next_grads = [[torch.randn_like(p) for p in ps] for _ in range(3)]
    for gs in next_grads:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()

    ps2 = [t.clone().requires_grad_() for t in saved_params]
    opt2 = make(ps2)
    opt2.load_state_dict(saved)
    for gs in next_grads:
        for p, g in zip(ps2, gs):
            p.grad = g.clone()
        opt2.step()
    for p, p2 in zip(ps, ps2):
        assert torch.equal(p, p2)
    for p, p2 in zip(ps, ps2):
        s1, s2 = opt.state[p], opt2.state[p2]
        assert s1["step"] == s2["step"] == 7
        if kind == "tiki_taka":
            assert torch.equal(s1["P"], s2["P"])


def test_state_dict_restores_hyperparameters():
    p = [torch.zeros(2, requires_grad=True)]
    opt = TikiTaka(p, lr=0.05, tau=0.8, transfer_lr=0.3, transfer_every=3, tau_p=2.0)
    opt2 = TikiTaka([torch.zeros(2, requires_grad=True)], lr=1.0, tau=1.0, transfer_lr=1.0)
    opt2.load_state_dict(opt.state_dict())
    g = opt2.param_groups[0]
    assert (g["lr"], g["tau"], g["transfer_lr"], g["transfer_every"], g["tau_p"]) == (0.05, 0.8, 0.3, 3, 2.0)


# ---------------------------------------------------------------------------------------
# convergence: least squares, Tiki-Taka exact vs Analog SGD biased
# ---------------------------------------------------------------------------------------


def _least_squares(n=100, d=8, w_inf=0.4, seed=0):
    """f(W) = 1/(2n)||AW - b||^2 with exact minimiser W* (residual orthogonal to range(A))."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=DT)
    signs = torch.tensor([1.0, -1.0], dtype=DT).repeat(d)[:d]
    w_star = signs * torch.linspace(0.5, 1.0, d, dtype=DT) * w_inf  # ||W*||_inf = w_inf
    q, _ = torch.linalg.qr(a)
    z = torch.randn(n, generator=g, dtype=DT)
    r = z - q @ (q.T @ z)
    r = r / r.norm() * math.sqrt(n)  # unit residual std -> noisy stochastic gradients at W*
    return a, a @ w_star + r, w_star


def _train(opt_factory, a, b, steps, runs, seed):
    """``runs`` independent single-sample SGD runs at once (rows of a (runs, d) parameter)."""
    n, d = a.shape
    w = torch.zeros(runs, d, dtype=DT, requires_grad=True)
    opt = opt_factory([w])
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (steps, runs), generator=gen)
    a_s, b_s = a[idx], b[idx]
    for k in range(steps):
        ak = a_s[k]
        w.grad = ak * ((ak * w.detach()).sum(1) - b_s[k])[:, None]
        opt.step()
    return w.detach()


def test_tiki_taka_converges_exactly_where_analog_sgd_has_floor():
    a, b, w_star = _least_squares()
    tau, lr, steps, runs = 0.5, 0.01, 5000, 8  # ||W*||_inf / tau = 0.8
    sigma = (a.abs() * (a @ w_star - b).abs()[:, None]).mean().item()  # E|g(W*)|
    beta = 0.1 * lr * sigma / tau
    w_sgd = _train(lambda p: torch.optim.SGD(p, lr=lr), a, b, steps, runs, seed=1)
    w_asgd = _train(lambda p: AnalogSGD(p, lr=lr, tau=tau), a, b, steps, runs, seed=1)
    w_tt = _train(lambda p: TikiTaka(p, lr=lr, tau=tau, transfer_lr=beta), a, b, steps, runs, seed=1)
    err = {
        k: ((w - w_star) ** 2).sum(1).mean().item()
        for k, w in (("sgd", w_sgd), ("asgd", w_asgd), ("tt", w_tt))
    }
    w2 = (w_star @ w_star).item()
    # Analog SGD is stuck at a biased point a sizeable fraction of ||W*||^2 away ...
    assert err["asgd"] > 0.15 * w2, err
    # ... while Tiki-Taka is an order of magnitude closer, at the noise level of digital SGD
    assert err["tt"] < 0.1 * err["asgd"], err
    assert err["tt"] < 1.5 * err["sgd"], err
    # with a weak device bound (large tau) Analog SGD's bias shrinks: the floor grows with ||W*||/tau
    w_asgd_big = _train(lambda p: AnalogSGD(p, lr=lr, tau=8 * tau), a, b, steps, runs, seed=1)
    assert ((w_asgd_big - w_star) ** 2).sum(1).mean().item() < 0.5 * err["asgd"]


# ---------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["analog_sgd", "tiki_taka"])
def test_cuda_matches_cpu(kind):
    torch.manual_seed(0)
    base = [torch.randn(16, 8) * 0.3, torch.randn(8) * 0.3]
    grads = [[torch.randn_like(t) for t in base] for _ in range(4)]

    cpu = [t.clone().requires_grad_() for t in base]
    gpu = [t.cuda().requires_grad_() for t in base]
    oc, og = _make(kind, cpu), _make(kind, gpu)  # foreach defaults to True on CUDA
    for gs in grads:
        for pc, pg, g in zip(cpu, gpu, gs):
            pc.grad, pg.grad = g.clone(), g.cuda()
        oc.step()
        og.step()
    for pc, pg in zip(cpu, gpu):
        torch.testing.assert_close(pg.cpu(), pc, rtol=1e-5, atol=1e-6)
    sd = og.state_dict()
    og2 = _make(kind, [t.detach().clone().requires_grad_() for t in gpu])
    og2.load_state_dict(sd)
    if kind == "tiki_taka":
        assert all(s["P"].is_cuda for s in og2.state.values())
