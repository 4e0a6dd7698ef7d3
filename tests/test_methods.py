"""The six self-supervised baselines and the supervised baseline.

Three kinds of checks: the pure losses of ``ops`` against hand-computed numbers and
against literal transcriptions of each paper's pseudocode; each method's ``step``
against its paper's algorithm written out with the method's own modules; and the
plumbing (gradients reach the backbone, momentum copies get none, stop-gradient,
FIFO queues pushed after the step, the loop lowers the loss, the supervised run).
Tiny widths and 16×16 images, one thread: the whole file runs in well under a minute.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnclglf import config, ops
from mnclglf.errors import UserError
from mnclglf.methods import Method, build_method
from mnclglf.methods.mocov2 import grouped_forward
from mnclglf.methods.simsiam import simsiam_loss
from mnclglf.train import pretrain
from mnclglf.train.schedule import set_lr

METHODS = ("mocov2", "simsiam", "simclr", "byol", "nnclr", "fastmoco", "supervised")
MOMENTUM = ("mocov2", "byol", "fastmoco")  # methods with an EMA copy, attribute name below
TARGET_ATTR = {"mocov2": "key_encoder", "byol": "target", "fastmoco": "target"}
N = 8
RAW = {
    "model": {"width": 0.125, "proj_hidden": 32, "proj_out": 32, "pred_hidden": 16},
    "pretrain": {"batch_size": N, "threads": 1, "device": "cpu"},
    "mocov2": {"queue_size": 16, "bn_groups": 2},
    "nnclr": {"queue_size": 16},
}


def cfg_for(name: str, **over) -> config.RunConfig:
    return config.run_config(config.deep_merge(RAW, over), "digits", name)


def make(name: str, **over) -> Method:
    torch.manual_seed(0)
    return build_method(cfg_for(name, **over), 4)


def make_views(method: Method, seed: int = 0, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, 3, size, size, generator=g) for _ in range(method.n_views)]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- ops: hand-computed examples ---------------------------------------------------

def test_ntxent_by_hand():
    # z = [e1, e2 | e2, e1]: each row's positive has cosine 0, the other two cosines are 0 and 1.
    a, b = torch.eye(2), torch.eye(2).flip(0)
    assert float(ops.ntxent(a, b, 1.0)) == pytest.approx(math.log(2 + math.e))
    assert float(ops.ntxent(a, b, 0.5)) == pytest.approx(math.log(2 + math.e ** 2))
    # identical views: positive cosine 1, two negatives with cosine 0.
    assert float(ops.ntxent(torch.eye(2), torch.eye(2), 1.0)) == pytest.approx(math.log(1 + 2 / math.e))


def test_negative_cosine_and_byol_by_hand():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # cosines 1 and 1/√2
    assert float(ops.negative_cosine(p, z)) == pytest.approx(-(1 + 1 / math.sqrt(2)) / 2)
    assert float(ops.byol_loss(p, z)) == pytest.approx(((2 - 2) + (2 - math.sqrt(2))) / 2)


def test_moco_infonce_by_hand():
    q = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    queue = torch.tensor([[0.0, 5.0], [-1.0, 0.0]])
    # row 1: logits [1 | 0, -1]; row 2: logits [-1 | 1, 0]; label 0.
    row1 = math.log(1 + math.exp(-1) + math.exp(-2))
    row2 = math.log(1 + math.exp(2) + math.exp(1))
    assert float(ops.moco_infonce(q, k, queue, 1.0)) == pytest.approx((row1 + row2) / 2)
    assert float(ops.moco_infonce(q[:1], k[:1], queue, 0.5)) == pytest.approx(math.log(1 + math.exp(-2) + math.exp(-4)))


# -- ops: literal transcriptions of the published pseudocode ---------------------

def simclr_algorithm1(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR Algorithm 1: z_{2k-1}, z_{2k} are the two views of x_k; the l(i, j) loop."""
    n = a.shape[0]
    z = torch.stack([a, b], dim=1).reshape(2 * n, -1)  # z[2k] = a[k], z[2k+1] = b[k] (0-based)
    s = [[float(F.cosine_similarity(z[i], z[j], dim=0)) for j in range(2 * n)] for i in range(2 * n)]

    def l(i: int, j: int) -> float:
        den = sum(math.exp(s[i][k] / tau) for k in range(2 * n) if k != i)
        return -math.log(math.exp(s[i][j] / tau) / den)

    return torch.tensor(sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n)) / (2 * n))


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_ntxent_matches_simclr_algorithm1(tau):
    a, b = rand(5, 7, seed=1), rand(5, 7, seed=2)
    assert torch.allclose(ops.ntxent(a, b, tau), simclr_algorithm1(a, b, tau), atol=1e-5)


def moco_algorithm1(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    """MoCo Algorithm 1 (q, k normalised as in the released code; ``queue`` is C×K)."""
    n, c = q.shape
    k = k.detach()
    l_pos = torch.bmm(q.view(n, 1, c), k.view(n, c, 1)).view(n, 1)
    l_neg = torch.mm(q.view(n, c), queue.view(c, -1))
    logits = torch.cat([l_pos, l_neg], dim=1)
    labels = torch.zeros(n, dtype=torch.long)
    return nn.CrossEntropyLoss()(logits / t, labels)


def test_moco_infonce_matches_moco_algorithm1():
    q, k = rand(6, 5, seed=1), rand(6, 5, seed=2)
    queue = F.normalize(rand(11, 5, seed=3), dim=1)  # MoCo stores normalised keys
    expected = moco_algorithm1(F.normalize(q, dim=1), F.normalize(k, dim=1), queue.T.contiguous(), 0.2)
    assert torch.allclose(ops.moco_infonce(q, k, queue, 0.2), expected, atol=1e-6)


def test_byol_loss_matches_byol_regression_loss():
    p, z = rand(6, 5, seed=1), rand(6, 5, seed=2)
    x, y = F.normalize(p, dim=-1), F.normalize(z, dim=-1)
    expected = (2 - 2 * (x * y).sum(dim=-1)).mean()
    assert torch.allclose(ops.byol_loss(p, z), expected, atol=1e-6)


def simsiam_D(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam Algorithm 1's D, verbatim."""
    return -(F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1).mean()


def test_simsiam_loss_matches_algorithm1_and_stops_gradient():
    p1, p2, z1, z2 = (rand(6, 5, seed=s).requires_grad_() for s in range(4))
    loss, d12, d21 = simsiam_loss(p1, p2, z1, z2)
    assert torch.allclose(loss, simsiam_D(p1, z2) / 2 + simsiam_D(p2, z1) / 2, atol=1e-6)
    assert torch.allclose(d12, simsiam_D(p1, z2)) and torch.allclose(d21, simsiam_D(p2, z1))
    loss.backward()
    assert z1.grad is None and z2.grad is None  # stop-gradient: nothing flows into z
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


# -- each method's step against its paper's algorithm, with the method's modules --

def test_simclr_step_is_algorithm1_on_one_joint_batch():
    m = make("simclr")
    views = make_views(m)
    out = m.step(views, None, torch.Generator())
    with torch.no_grad():
        z = m.project(torch.cat(views))
    assert torch.allclose(out.loss, simclr_algorithm1(z[:N], z[N:], 1.0), atol=1e-5)


def test_simsiam_step_is_algorithm1():
    m = make("simsiam")
    x1, x2 = make_views(m)
    out = m.step([x1, x2], None, torch.Generator())
    f, h = m.project, m.predictor
    z1, z2 = f(x1), f(x2)
    p1, p2 = h(z1), h(z2)
    assert torch.allclose(out.loss, simsiam_D(p1, z2) / 2 + simsiam_D(p2, z1) / 2, atol=1e-6)


def test_byol_step_is_symmetric_regression_loss_against_the_target():
    m = make("byol")
    x1, x2 = make_views(m)
    out = m.step([x1, x2], None, torch.Generator())
    with torch.no_grad():
        t1, t2 = m.target(x1), m.target(x2)
    p1, p2 = m.predictor(m.project(x1)), m.predictor(m.project(x2))

    def reg(x, y):
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
        return (2 - 2 * (x * y).sum(dim=-1)).mean()

    assert torch.allclose(out.loss, reg(p1, t2) + reg(p2, t1), atol=1e-5)


def test_mocov2_step_is_algorithm1():
    m = make("mocov2", mocov2={"bn_groups": 1, "shuffle_bn": False})
    x_q, x_k = make_views(m)
    queue = m.queue.bank.clone()
    out = m.step([x_q, x_k], None, torch.Generator())
    q = F.normalize(m.project(x_q), dim=1)
    with torch.no_grad():
        k = F.normalize(m.key_encoder(x_k), dim=1)
    assert torch.allclose(out.loss, moco_algorithm1(q, k, queue.T.contiguous(), 1.0), atol=1e-5)


def test_grouped_forward_normalises_per_shuffled_group_and_restores_order():
    x = rand(N, 3, seed=4)
    perm = torch.tensor([5, 0, 7, 2, 1, 6, 3, 4])
    bn = nn.BatchNorm1d(3, affine=False)
    out = grouped_forward(bn, x, 2, perm)
    for rows in perm.view(2, N // 2):  # each group: the rows of one slice of x[perm]
        xs = x[rows]
        expected = (xs - xs.mean(0)) / torch.sqrt(xs.var(0, unbiased=False) + bn.eps)
        assert torch.allclose(out[rows], expected, atol=1e-5)
    lin = nn.Linear(3, 4)
    assert torch.allclose(grouped_forward(lin, x, 4, perm), lin(x), atol=1e-6)
    assert torch.allclose(grouped_forward(bn, x, 2), torch.cat([bn(x[:4]), bn(x[4:])]), atol=1e-6)


def test_mocov2_queries_use_per_group_batchnorm():
    m = make("mocov2")  # bn_groups 2, shuffle_bn on
    x_q, x_k = make_views(m)
    out = m.step([x_q, x_k], None, torch.Generator().manual_seed(0))
    assert torch.allclose(out.embedding, torch.cat([m.project(x_q[:4]), m.project(x_q[4:])]), atol=1e-5)
    assert not torch.allclose(out.embedding, m.project(x_q), atol=1e-3)


def test_mocov2_rejects_groups_that_do_not_split_the_batch():
    with pytest.raises(UserError, match="bn_groups"):
        make("mocov2", mocov2={"bn_groups": 3})


def test_nnclr_step_is_the_papers_pseudocode():
    m = make("nnclr")
    m.queue.bank.copy_(rand(16, 32, seed=5))
    x1, x2 = make_views(m)
    out = m.step([x1, x2], None, torch.Generator())

    def NN(z, Q):
        return Q[(F.normalize(z, dim=1) @ F.normalize(Q, dim=1).T).argmax(dim=1)]

    def L(nn_, p, temperature):
        nn_, p = F.normalize(nn_, dim=1), F.normalize(p, dim=1)
        logits = nn_ @ p.T / temperature
        return F.cross_entropy(logits, torch.arange(p.shape[0]))

    z1, z2 = m.project(x1), m.project(x2)
    p1, p2 = m.predictor(z1), m.predictor(z2)
    Q = m.queue.bank
    expected = L(NN(z1, Q), p2, 1.0) / 2 + L(NN(z2, Q), p1, 1.0) / 2
    assert torch.allclose(out.loss, expected, atol=1e-5)


def test_fastmoco_step_matches_the_released_combinatorial_patches():
    """Fast-MoCo's released forward: column-major 2×2 split, sum/k over combinations, InfoNCE per chunk."""
    m = make("fastmoco")
    x1, x2 = make_views(m)
    out = m.step([x1, x2], None, torch.Generator())

    def local_split(x):
        cols = x.split(x.size(3) // 2, dim=3)
        return torch.cat([part for col in cols for part in col.split(x.size(2) // 2, dim=2)], dim=0)

    def online(x):
        z_pre = m.backbone(local_split(x))
        splits = list(z_pre.split(z_pre.size(0) // 4, dim=0))
        mix = torch.cat([sum(c) / 2 for c in itertools.combinations(splits, r=2)], dim=0)
        return m.predictor(m.projector(mix))

    def info_nce(p1, z1, p2, z2, temperature=1.0):
        z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
        chunks = [(p, z2) for p in p1.split(z2.size(0))] + [(p, z1) for p in p2.split(z1.size(0))]
        total = sum(F.cross_entropy(F.normalize(p, dim=-1) @ z.T / temperature, torch.arange(p.shape[0]))
                    for p, z in chunks)
        return total / len(chunks)

    with torch.no_grad():
        z1, z2 = m.target(x1), m.target(x2)
    assert torch.allclose(out.loss, info_nce(online(x1), z1, online(x2), z2), atol=1e-5)
    assert out.embedding.shape == (6 * N, 32)


# -- plumbing shared by every method ------------------------------------------------

@pytest.mark.parametrize("name", METHODS)
def test_step_gives_finite_loss_that_reaches_the_backbone(name):
    m = make(name)
    out = m.step(make_views(m), torch.arange(N) % 4, torch.Generator().manual_seed(0))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.embedding is not None and not out.embedding.requires_grad
    assert all(not v.requires_grad and v.ndim == 0 for v in out.logs.values())
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.stem.parameters())


@pytest.mark.parametrize("name", MOMENTUM)
def test_momentum_copy_gets_no_gradient_and_follows_the_ema(name):
    m = make(name)
    target = getattr(m, TARGET_ATTR[name])
    out = m.step(make_views(m), None, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in target.parameters())
    in_groups = {id(p) for g in m.param_groups() for p in g["params"]}
    assert not in_groups & {id(p) for p in target.parameters()}
    online = nn.Sequential(m.backbone, m.projector)
    before = [p.clone() for p in target.parameters()]
    buffers = [b.clone() for b in target.buffers()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    m.after_step()
    ema = getattr(m.cfg, name).ema
    for old, new, o in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(new, ema * old + (1 - ema) * o, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(buffers, target.buffers()))  # BN buffers are its own


@pytest.mark.parametrize("name", ["mocov2", "nnclr"])
def test_queue_is_pushed_after_the_step_in_fifo_order(name):
    over = {"queue_size": 2 * N} | ({"bn_groups": 1, "shuffle_bn": False} if name == "mocov2" else {})
    m = make(name, **{name: over})
    pushed = []
    for step in range(3):
        views = make_views(m, seed=step)
        with torch.no_grad():  # MoCo enqueues the normalised keys, NNCLR the view-1 projections
            expected = F.normalize(m.key_encoder(views[1]), dim=1) if name == "mocov2" else None
        bank = m.queue.bank.clone()
        out = m.step(views, None, torch.Generator())
        assert torch.equal(m.queue.bank, bank)  # step() itself leaves the queue alone
        m.after_step()
        pushed.append(expected if expected is not None else out.embedding)
        assert torch.allclose(m.queue.bank[(step % 2) * N:(step % 2 + 1) * N], pushed[-1], atol=1e-5)
    assert torch.allclose(m.queue.bank[N:], pushed[1], atol=1e-5)  # the third batch overwrote the oldest only


def test_simsiam_predictor_lr_is_fixed():
    for fixed in (True, False):
        m = make("simsiam", simsiam={"fixed_predictor_lr": fixed})
        opt = pretrain.build_optimizer(m.cfg, m)
        set_lr(opt, 0.01)
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        assert lrs == {"body": 0.01, "predictor": 0.1 if fixed else 0.01}


def test_supervised_has_no_projector_and_uses_labels():
    m = make("supervised")
    assert m.uses_labels and m.n_views == 1 and m.projector is None and m.predictor is None
    out = m.step(make_views(m), torch.arange(N) % 4, torch.Generator())
    assert out.embedding.shape == (N, m.backbone.out_dim) and 0 <= float(out.logs["train_top1"]) <= 100


def coloured_images(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes of distinct colours with per-pixel noise (uint8 N×3×size×size)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    colours = torch.tensor([[220.0, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]])
    x = colours[labels].view(n, 3, 1, 1) + 25 * torch.randn(n, 3, size, size, generator=g)
    return x.clamp(0, 255).to(torch.uint8), labels


@pytest.mark.parametrize("name", METHODS)
def test_train_step_lowers_the_loss_on_a_fixed_batch(name):
    # MoCo's queue must stay mostly random here (on one repeated batch it would fill with its own
    # positives), and its shuffle-BN groups need more than two samples each (batch 16, 4 groups).
    cfg = cfg_for(name, pretrain={"batch_size": 16}, mocov2={"queue_size": 4096, "bn_groups": 4})
    images, labels = coloured_images(32, 16)
    s = pretrain.setup(cfg, images, labels, 4)
    idx = torch.arange(16)
    losses = []
    for step in range(10):
        s.gens["augment"].manual_seed(123)  # the same views every step
        losses.append(float(pretrain.train_step(s, idx, step, 1000)[0]))
    assert losses[-1] < losses[0], losses


def test_train_supervised_writes_test_accuracy(tmp_path):
    from mnclglf.data.store import save_meta, save_split
    from mnclglf.train.supervised import train_supervised

    root = tmp_path / "data"
    for split, n, seed in (("train", 64, 0), ("test", 32, 1)):
        x, y = coloured_images(n, 8, seed)
        save_split(root, "digits", split, x.numpy(), y.numpy().astype(np.int64))
    save_meta(root, "digits", {"classes": ["red", "green", "blue", "yellow"]})
    raw = config.deep_merge(RAW, {"data_root": str(root), "pretrain": {"epochs": 5, "batch_size": 16}})
    cfg = config.run_config(raw, "digits", "supervised")
    metrics_path = tmp_path / "metrics.json"
    metrics = train_supervised(cfg, tmp_path / "out", tmp_path / "ckpt", metrics_path, progress=False)
    saved = json.loads(metrics_path.read_text())
    assert saved == metrics
    assert saved["dataset"] == "digits" and saved["method"] == "supervised" and saved["epochs"] == 5
    assert 0 <= saved["top1"] <= saved["top5"] <= 100
    assert saved["top1"] > 25 + 25  # chance is 25 %
    assert (tmp_path / "out" / pretrain.ENCODER_FILE).is_file()
