"""MNCLGLF (`paper` variant) against a literal, line-by-line transcription of Algorithm 1."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from mnclglf import config, ops
from mnclglf.methods.mnclglf import MNCLGLF


def build(raw: dict, **mnclglf: object) -> MNCLGLF:
    raw = copy.deepcopy(raw)
    raw["mnclglf"] = {**raw.get("mnclglf", {}), **mnclglf}
    cfg = config.run_config(raw, "digits", "mnclglf")
    torch.manual_seed(0)
    return MNCLGLF(cfg, num_classes=10)


# ---- Algorithm 1, transcribed line by line (only renamed to valid Python) -----------------
def NN(Q, z):  # noqa: N802 - the paper's name
    Q, z = F.normalize(Q, dim=1), F.normalize(z, dim=1)  # l2-normalize
    sim = torch.mm(z, Q.t())
    index = sim.argmax(dim=1)  # top-1 NN indices
    return Q[index]


def NN_stored(Q, z):  # noqa: N802
    # The pseudocode returns the normalised row; the stored row differs only in scale,
    # and L() normalises its inputs, so the loss is the same. We return the stored row to
    # compare what is enqueued.
    index = torch.mm(F.normalize(z, dim=1), F.normalize(Q, dim=1).t()).argmax(dim=1)
    return Q[index]


def L(h, p, tau):  # noqa: N802 - contrastive loss
    h, p = F.normalize(h, dim=1), F.normalize(p, dim=1)  # l2-normalize
    h = h.split(p.shape[0])
    loss = 0
    for _h in h:
        logits = torch.mm(_h, p.t())
        labels = torch.arange(p.shape[0])
        loss += F.cross_entropy(logits / tau, labels)
    return loss / len(h)


def divide(x):
    n, c, hh, ww = x.shape
    h, w = hh // 2, ww // 2
    return torch.cat([x[:, :, 0:h, 0:w], x[:, :, 0:h, w:], x[:, :, h:, 0:w], x[:, :, h:, w:]])


def combine(vd, k):
    chunks = vd.split(vd.shape[0] // 4)
    return torch.cat([torch.stack([chunks[i] for i in c]).mean(0) for c in itertools.combinations(range(4), k)])


def algorithm1(f_o, f_s, f_m, Q, x1, x2, x3, tau, lam, k):
    p1, p2, p3 = f_o(x1), f_o(x2), f_o(x3)  # the back-propagation network encode, project, predict
    with torch.no_grad():
        z1, z2 = f_m(x1), f_m(x2)  # the momentum network encode, project
        z1, z2 = NN_stored(Q, z1), NN_stored(Q, z2)  # top-1 NN
        y_1, y_3 = divide(x1), divide(x3)  # divide step
        vd_1, vd_3 = f_s[0](y_1), f_s[0](y_3)  # the stop-gradient network encode
        v_1, v_3 = combine(vd_1, k), combine(vd_3, k)  # combine step
        c_1, c_3 = f_s[1](v_1), f_s[1](v_3)  # project
    loss_s = (L(c_1, p3, tau) + L(c_3, p1, tau)) / 2
    loss_m = (L(z1, p2, tau) + L(z2, p1, tau)) / 2
    loss_total = loss_s + lam * loss_m
    return loss_total, loss_s, loss_m, z1
# --------------------------------------------------------------------------------------------


def literal_networks(method: MNCLGLF):
    """Separate copies with the same weights: f_o, f_s (θ_s = θ_o), f_m (its own EMA weights)."""
    backbone, projector, predictor = (copy.deepcopy(m) for m in (method.backbone, method.projector, method.predictor))
    f_o = torch.nn.Sequential(backbone, projector, predictor)
    f_s = [copy.deepcopy(backbone), copy.deepcopy(projector)]
    f_m = copy.deepcopy(method.momentum)
    return f_o, f_s, f_m


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_step_equals_algorithm1_loss_and_gradients(tiny_raw: dict, k: int) -> None:
    method = build(tiny_raw, k=k, enqueue="neighbour")
    method.train()
    g = torch.Generator().manual_seed(1)
    x1, x2, x3 = (torch.randn(8, 3, 8, 8, generator=g) for _ in range(3))
    f_o, f_s, f_m = literal_networks(method)
    for m in (f_o, *f_s, f_m):
        m.train()
    Q = method.queue.bank.clone()

    out = method.step([x1, x2, x3], None, g)
    out.loss.backward()
    ref_total, ref_s, ref_m, ref_z1 = algorithm1(f_o, f_s, f_m, Q, x1, x2, x3, 1.0, 6.0, k)
    ref_total.backward()

    assert out.loss.item() == pytest.approx(ref_total.item(), abs=1e-5)
    assert out.logs["loss_s"].item() == pytest.approx(ref_s.item(), abs=1e-5)
    assert out.logs["loss_m"].item() == pytest.approx(ref_m.item(), abs=1e-5)
    ours = dict(method.backbone.named_parameters()) | {f"proj.{n}": p for n, p in method.projector.named_parameters()} \
        | {f"pred.{n}": p for n, p in method.predictor.named_parameters()}
    theirs = dict(f_o[0].named_parameters()) | {f"proj.{n}": p for n, p in f_o[1].named_parameters()} \
        | {f"pred.{n}": p for n, p in f_o[2].named_parameters()}
    for name, p in ours.items():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    # update_queue(Q, z1): the literal reading enqueues the looked-up neighbours.
    method.after_step()
    torch.testing.assert_close(method.queue.bank[:8], ref_z1)


def test_no_gradient_reaches_stop_gradient_or_momentum_pass(tiny_raw: dict) -> None:
    method = build(tiny_raw)
    x = torch.randn(8, 3, 8, 8)
    c = method.local_embeddings(x)
    assert not c.requires_grad
    assert all(not p.requires_grad for p in method.momentum.parameters())
    out = method.step([x, x.flip(3), x.flip(2)], None, torch.Generator())
    out.loss.backward()
    assert all(p.grad is None for p in method.momentum.parameters())


def test_sg_bn_stats_frozen_leaves_running_stats(tiny_raw: dict) -> None:
    method = build(tiny_raw, sg_bn_stats="frozen")
    before = {n: b.clone() for n, b in method.backbone.named_buffers() if "running" in n}
    method.local_embeddings(torch.randn(8, 3, 8, 8))
    after = dict(method.backbone.named_buffers())
    assert all(torch.equal(before[n], after[n]) for n in before)
    method = build(tiny_raw, sg_bn_stats="update")
    before = {n: b.clone() for n, b in method.backbone.named_buffers() if "running_mean" in n}
    method.local_embeddings(torch.randn(8, 3, 8, 8))
    assert any(not torch.equal(before[n], dict(method.backbone.named_buffers())[n]) for n in before)


def test_sg_bn_batch_running_normalises_patches_with_running_statistics(tiny_raw: dict) -> None:
    """``sg_bn_batch: running``: the stop-gradient pass is f_o with BatchNorm in eval mode
    (running mean and variance), ``batch`` normalises with the patches' own statistics; train
    mode is restored."""
    torch.manual_seed(1)
    x = torch.randn(8, 3, 8, 8)
    out = {}
    for mode in ("running", "batch"):
        m = build(tiny_raw, sg_bn_batch=mode)
        bns = [b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
        gen = torch.Generator().manual_seed(2)
        for bn in bns:  # running statistics far from any batch's
            bn.running_mean.uniform_(-1, 1, generator=gen)
            bn.running_var.uniform_(0.5, 2, generator=gen)
        m.train()
        out[mode] = m.local_embeddings(x)
        assert all(bn.training for bn in bns)
        ref = copy.deepcopy(m)
        ref.eval() if mode == "running" else ref.train()
        with torch.no_grad():
            want = ref.projector(ops.combine(ref.backbone(ref.divide(x)), ref.mc.k, parts=4))
        assert torch.allclose(out[mode], want, rtol=1e-5, atol=1e-6), mode
    assert not torch.allclose(out["running"], out["batch"], rtol=1e-3, atol=1e-3)


def test_theta_s_equals_theta_o_after_every_step_and_ema(tiny_raw: dict) -> None:
    """f_s is f_o's own modules, so after any optimiser step it encodes with θ_o; f_m follows Eq. 2-3."""
    method = build(tiny_raw)
    opt = torch.optim.SGD(method.param_groups(), lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    m = method.mc.ema
    for _ in range(3):
        xs = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(3)]
        theta_m = [p.clone() for p in method.momentum.parameters()]
        out = method.step(xs, None, g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_step()
        theta_o = list(method.backbone.parameters()) + list(method.projector.parameters())
        for tm_old, tm_new, to in zip(theta_m, method.momentum.parameters(), theta_o):
            torch.testing.assert_close(tm_new, m * tm_old + (1 - m) * to)
        # θ_s = θ_o: the stop-gradient pass equals a fresh copy of f_o's encoder + projector.
        x = torch.randn(8, 3, 8, 8, generator=g)
        f_s = torch.nn.Sequential(copy.deepcopy(method.backbone), copy.deepcopy(method.projector))
        with torch.no_grad():
            ref = f_s[1](ops.combine(f_s[0](ops.divide(x)), method.mc.k))
        torch.testing.assert_close(method.local_embeddings(x), ref)


def test_one_combined_embedding_uses_a_single_block(tiny_raw: dict) -> None:
    method = build(tiny_raw, combined_positive="one")
    c = torch.arange(6 * 4 * 2, dtype=torch.float32).view(24, 2)
    block = method.pick_one(c, 4, torch.tensor(3))
    assert torch.equal(block, c[12:16])
