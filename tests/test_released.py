"""The `released` variant of MNCLGLF (run `mnclglf-released`) against shared/paper/released-code.md.

What it pins: the configuration is every fact of the released code, each its own
parameter; under it the step is a literal transcription of the released forward and
loss; loss_s has no gradient at all (the total gradient is λ·∇loss_m) unless
`loss_s_grad: true`; the views, patch order, look-ups and enqueue are the released
ones; the loop's warm-up, clipping and fixed predictor lr; the 224-style linear-eval
transforms; the variant's place in the payload and in Table 3. The `paper` variant is
tests/test_mnclglf.py. Width 0.125, 16×16 views, batch 8, one thread.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mnclglf import config, ops
from mnclglf.errors import UserError
from mnclglf.methods.mnclglf import MNCLGLF
from mnclglf.train import pretrain as pt

ROOT = Path(__file__).resolve().parents[1]
PARAMS = config.read_params(ROOT / "params.yaml")
N = 8
RAW = {
    "model": {"width": 0.125, "proj_hidden": 32, "proj_out": 32, "pred_hidden": 16},
    "pretrain": {"batch_size": N, "threads": 1, "device": "cpu"},
    "mnclglf": PARAMS["mnclglf"],
    "mnclglf-released": PARAMS["mnclglf-released"],
    "overrides": {"digits": {"mnclglf": {"queue_size": 64}, "mnclglf-released": {"augment": {"size": 16}}}},
}


def cfg_for(run: str = "mnclglf-released", **mnclglf) -> config.RunConfig:
    raw = copy.deepcopy(RAW)
    section = raw[run]["mnclglf"] if run in config.VARIANT_RUNS else raw["mnclglf"]
    section.update(mnclglf)
    return config.run_config(raw, "digits", run)


def make(run: str = "mnclglf-released", **mnclglf) -> MNCLGLF:
    torch.manual_seed(0)
    m = MNCLGLF(cfg_for(run, **mnclglf), num_classes=10)
    return m.train()


def views(seed: int = 1, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, 3, size, size, generator=g) for _ in range(3)]


def perturb(m: MNCLGLF) -> None:
    """θ_o ≠ θ_m, so that the EMA update and its timing are visible."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in itertools.chain(m.backbone.parameters(), m.projector.parameters()):
            p.add_(0.05 * torch.randn(p.shape, generator=g))


# ---- the released code's forward and loss, transcribed from released-code.md ----------------
def local_split(x):  # the image is cut into two column halves, each column into top and bottom
    cols = x.split(x.size(3) // 2, dim=3)
    xs = []
    for col in cols:
        xs += col.split(x.size(2) // 2, dim=2)
    return torch.cat(xs, dim=0)


def nn_lookup(bank, z):  # searched with normalised copies, returns the raw stored row
    sim = F.normalize(z, dim=1) @ F.normalize(bank, dim=1).T
    return bank[sim.argmax(dim=1)]


def ntxent_simclr(a, b, t=1.0):
    """SimCLR's NT-Xent written from its formula: ℓ(i,j) = −log e^{s_ij/t} / Σ_{k≠i} e^{s_ik/t}, mean over 2N."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        num = torch.exp(z[i] @ z[j] / t)
        den = sum(torch.exp(z[i] @ z[k] / t) for k in range(2 * n) if k != i)
        total = total - torch.log(num / den)
    return total / (2 * n)


def released_loss_literal(p1, k1, p2, k2, p3, j3, j1, t=1.0, a=6.0, loss_s_grad=False):
    n = p1.shape[0]
    q1, q2 = F.normalize(p1, dim=1), F.normalize(p2, dim=1)
    if not loss_s_grad:
        q1, q2 = q1.detach(), q2.detach()
    terms = []
    for k in k1.detach().split(n):  # each of the 6 chunks of k1 against p2
        terms.append(F.cross_entropy(q2 @ F.normalize(k, dim=1).T / t, torch.arange(n)))
    for k in k2.detach().split(n):  # each chunk of k2 against p1
        terms.append(F.cross_entropy(q1 @ F.normalize(k, dim=1).T / t, torch.arange(n)))
    loss_s = sum(terms) / len(terms)
    loss_m = 0.5 * ntxent_simclr(j3, p1) + 0.5 * ntxent_simclr(j1, p3)
    return loss_s + a * loss_m, loss_s, loss_m


def released_forward(m: MNCLGLF, x1, x2, x3):
    """The released ``FastMoCo.forward`` on copies of ``m``'s modules; returns its 7 outputs and the bank after."""
    f = torch.nn.Sequential(copy.deepcopy(m.backbone), copy.deepcopy(m.projector))
    h = copy.deepcopy(m.predictor)
    ema = copy.deepcopy(m.momentum)
    bank = m.queue.bank.clone()
    z1, z2, z3 = f(x1), f(x2), f(x3)
    p1, p2, p3 = h(z1), h(z2), h(z3)
    with torch.no_grad():
        for q, t in zip(f.parameters(), ema.parameters()):  # momentum update first
            t.mul_(0.99).add_(q, alpha=0.01)
        k1_pre, k2_pre = f[0](local_split(x1)), f[0](local_split(x2))
        k1 = torch.cat([sum(c) / 2 for c in itertools.combinations(k1_pre.split(N), 2)])
        k2 = torch.cat([sum(c) / 2 for c in itertools.combinations(k2_pre.split(N), 2)])
        k1, k2 = f[1](k1), f[1](k2)
        j1, j3 = ema(x1), ema(x3)
        j3_raw = j3
        j1, j3 = nn_lookup(bank, j1), nn_lookup(bank, j3)
    return (p1, k1, p2, k2, p3, j3, j1), f, h, ema, j3_raw


# ---- configuration ---------------------------------------------------------------------------
def test_released_run_configuration_is_the_released_code() -> None:
    cfg = config.run_config(PARAMS, "cifar10", "mnclglf-released")
    le = config.linear_eval_config(PARAMS, "cifar10", "mnclglf-released")
    mc, a, p = cfg.mnclglf, cfg.augment, cfg.pretrain
    assert cfg.method == "mnclglf-released" and config.base_method(cfg.method) == "mnclglf"
    assert (mc.variant, mc.sg_views, mc.momentum_views, mc.enqueue_view, mc.enqueue, mc.queue_overflow) == \
        ("released", "x1x2", "x1x3", "x3", "projection", "drop")
    assert (mc.patch_order, mc.loss_s_grad, mc.loss_s_rows, mc.loss_m, mc.ema_timing, mc.sg_bn_stats) == \
        ("column", False, "prediction", "ntxent", "before_targets", "update")
    assert (mc.lam, mc.tau, mc.k, mc.grid, mc.ema, mc.queue_size) == (6.0, 1.0, 2, 2, 0.99, 16384)
    assert (cfg.model.stem, cfg.model.zero_init_residual, cfg.model.width) == ("imagenet", True, 1.0)
    assert (a.size, a.interpolation, a.crop_scale, a.normalize) == (224, "bicubic", (0.2, 1.0), "imagenet")
    assert (a.jitter, a.jitter_p, a.gray_p, a.blur_p, a.blur_sigma, a.flip_p) == \
        ((0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.5, (0.1, 2.0), 0.5)
    assert (p.clip_grad_norm, p.warmup_steps, p.fixed_predictor_lr, p.lr, p.momentum, p.weight_decay) == \
        (1.0, 2, True, 0.1, 0.9, 1e-4)
    assert (le.train_size, le.test_resize, le.test_crop, le.interpolation) == (224, 256, 224, "bicubic")
    # The paper run keeps Algorithm 1's reading.
    paper = config.run_config(PARAMS, "cifar10", "mnclglf")
    assert (paper.mnclglf.variant, paper.mnclglf.sg_views, paper.mnclglf.loss_s_grad, paper.model.stem,
            paper.augment.size, paper.pretrain.clip_grad_norm) == ("paper", "x1x3", True, "cifar", 0, 0.0)
    assert config.linear_eval_config(PARAMS, "cifar10", "mnclglf").test_resize == 0


def test_smoke_hook_shrinks_only_the_released_run() -> None:
    cfg = config.run_config(PARAMS, "digits", "mnclglf-released")
    le = config.linear_eval_config(PARAMS, "digits", "mnclglf-released")
    assert (cfg.augment.size, cfg.model.width, cfg.mnclglf.queue_size) == (32, 0.125, 1024)
    assert (le.train_size, le.test_resize, le.test_crop, le.epochs) == (32, 36, 32, 100)
    assert (cfg.pretrain.batch_size, cfg.pretrain.lr) == (128, 0.1)
    paper = config.run_config(PARAMS, "digits", "mnclglf")
    assert (paper.augment.size, paper.pretrain.batch_size, paper.pretrain.lr) == (0, 64, 0.3)
    assert config.run_config(PARAMS, "cifar10", "mnclglf-released").pretrain.batch_size == 256


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda r: r["mnclglf-released"]["mnclglf"].pop("loss_m"), "must set every key (missing loss_m)"),
    (lambda r: r["mnclglf-released"]["mnclglf"].update(variant="paper"), "mnclglf-released.mnclglf.variant"),
    (lambda r: r["mnclglf-released"].update(simclr={"tau": 0.5}), "mnclglf-released.simclr: unknown section"),
    (lambda r: r["mnclglf"].update(variant="released"), "released reading is the run `mnclglf-released`"),
    (lambda r: r["mnclglf-released"]["mnclglf"].update(enqueue_view="x2"), "mnclglf.enqueue_view = 'x2'"),
    (lambda r: r["overrides"]["digits"]["mnclglf-released"].update(augment={"sizes": 3}), "augment.sizes: unknown"),
])
def test_bad_variant_parameters_are_one_line_errors(edit, needle) -> None:
    raw = copy.deepcopy(RAW)
    edit(raw)
    run = "mnclglf" if needle.startswith("released reading") else "mnclglf-released"
    with pytest.raises(UserError) as err:
        config.run_config(raw, "digits", run)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ---- the losses --------------------------------------------------------------------------------
def test_ntxent_is_the_simclr_formula() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for t in (1.0, 0.5):
        torch.testing.assert_close(ops.ntxent(a, b, t), ntxent_simclr(a, b, t), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss_s_grad", [False, True])
def test_released_loss_is_the_described_loss(loss_s_grad: bool) -> None:
    g = torch.Generator().manual_seed(0)
    n, d = 4, 5
    p1, p2, p3, j3, j1 = (torch.randn(n, d, generator=g, requires_grad=True) for _ in range(5))
    k1, k2 = (torch.randn(6 * n, d, generator=g, requires_grad=True) for _ in range(2))
    ours = ops.released_loss(p1, k1, p2, k2, p3, j3, j1, 1.0, 6.0, loss_s_grad=loss_s_grad)
    ref = released_loss_literal(p1, k1, p2, k2, p3, j3, j1, loss_s_grad=loss_s_grad)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)
    assert ours[1].requires_grad is loss_s_grad
    if loss_s_grad:
        g1, g2, gk = torch.autograd.grad(ours[1], [p1, p2, k1], allow_unused=True)
        assert g1.abs().sum() > 0 and g2.abs().sum() > 0 and gk is None  # k is the stop-gradient branch


def test_released_step_is_the_released_forward_and_loss() -> None:
    m = make()
    perturb(m)
    x1, x2, x3 = views()
    outs, f, h, ema, _ = released_forward(m, x1, x2, x3)
    ref_total, ref_s, ref_m = released_loss_literal(*outs)
    ours = m.losses([x1, x2, x3], torch.Generator())
    torch.testing.assert_close(ours["loss"], ref_total, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["loss_s"], ref_s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["loss_m"], ref_m, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours["loss"], ops.released_loss(*outs)[0], atol=1e-5, rtol=1e-5)
    # EMA before the targets: the momentum weights already moved inside the step.
    for a, b in zip(m.momentum.parameters(), ema.parameters()):
        torch.testing.assert_close(a, b)
    ours["loss"].backward()
    ref_total.backward()
    mine = itertools.chain(m.backbone.parameters(), m.projector.parameters(), m.predictor.parameters())
    theirs = itertools.chain(f.parameters(), h.parameters())
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)


def trainable(m: MNCLGLF) -> list[torch.nn.Parameter]:
    return [p for p in m.parameters() if p.requires_grad]


def test_released_loss_s_has_no_gradient_and_total_is_lambda_loss_m() -> None:
    m = make()
    out = m.losses(views(), torch.Generator())
    params = trainable(m)
    assert not out["loss_s"].requires_grad  # nothing to differentiate: ∇loss_s = 0 for every parameter
    g_total = torch.autograd.grad(out["loss"], params, retain_graph=True, allow_unused=True)
    g_m = torch.autograd.grad(out["loss_m"], params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_total)
    assert [g is None for g in g_total] == [g is None for g in g_m]
    # Relative to the whole gradient's size: λ·∇loss_m and ∇(λ·loss_m + loss_s) round apart
    # (2e-6 absolute on an AVX-512 CPU, and biases before a BN have pure-rounding gradients);
    # a gradient through loss_s would be of the gradient's own size.
    got = torch.cat([g.flatten() for g in g_total if g is not None])
    want = m.mc.lam * torch.cat([g.flatten() for g in g_m if g is not None])
    assert (got - want).norm() <= 1e-5 * want.norm(), ((got - want).norm() / want.norm()).item()


def test_loss_s_grad_true_lets_loss_s_train() -> None:
    m = make(loss_s_grad=True)
    out = m.losses(views(), torch.Generator())
    grads = torch.autograd.grad(out["loss_s"], trainable(m), allow_unused=True)
    nonzero = {n for (n, _), g in zip([(n, p) for n, p in m.named_parameters() if p.requires_grad], grads)
               if g is not None and g.abs().sum() > 0}
    assert any(n.startswith("predictor.") for n in nonzero) and any(n.startswith("backbone.") for n in nonzero)


# ---- views, patches, look-ups, enqueue ---------------------------------------------------------
def test_released_patch_order_is_column_major() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    y = make().divide(x)
    assert torch.equal(y, local_split(x))
    # image 0: top-left, (image 1), bottom-left, top-right, bottom-right
    assert [y[i, 0].tolist() for i in (0, 2, 4, 6)] == [[[0, 1], [4, 5]], [[8, 9], [12, 13]],
                                                        [[2, 3], [6, 7]], [[10, 11], [14, 15]]]
    assert torch.equal(make("mnclglf").divide(x), ops.divide(x))  # paper: row-major


def spy_step(m: MNCLGLF, xs: list[torch.Tensor], monkeypatch) -> dict:
    seen: dict = {"sg": [], "mom_in": [], "mom_out": [], "nn": []}
    real_local = m.local_embeddings
    monkeypatch.setattr(m, "local_embeddings", lambda x: (seen["sg"].append(x), real_local(x))[1])

    def hook(module, inputs, output) -> None:
        seen["mom_in"].append(inputs[0])
        seen["mom_out"].append(output)

    m.momentum.register_forward_hook(hook)
    real_nn = ops.nearest_neighbour
    monkeypatch.setattr(ops, "nearest_neighbour", lambda q, z: (seen["nn"].append(q.clone()), real_nn(q, z))[1])
    m.step(xs, None, torch.Generator())
    return seen


@pytest.mark.parametrize(("run", "sg", "mom", "enq", "overflow"), [
    ("mnclglf-released", (0, 1), (0, 2), 2, "drop"),
    ("mnclglf", (0, 2), (0, 1), 0, "wrap"),
])
def test_view_pairings_lookups_and_enqueue(run, sg, mom, enq, overflow, monkeypatch) -> None:
    m = make(run)
    xs = views()
    size = m.queue.size
    m.queue.ptr.fill_(size - 3)  # the next batch runs past the end of the bank
    before = m.queue.bank.clone()
    seen = spy_step(m, xs, monkeypatch)
    assert [i for x in seen["sg"] for i in range(3) if x is xs[i]] == list(sg)
    assert [i for x in seen["mom_in"] for i in range(3) if x is xs[i]] == list(mom)
    assert len(seen["nn"]) == 2 and all(torch.equal(q, before) for q in seen["nn"])  # both look-ups: old bank
    assert torch.equal(m.queue.bank, before)  # nothing enqueued until after the optimiser step
    m.after_step()
    pushed = seen["mom_out"][mom.index(enq)]  # the projection (enqueue: projection), of one view only
    assert torch.equal(m.queue.bank[size - 3:], pushed[:3])
    if overflow == "drop":
        assert torch.equal(m.queue.bank[:size - 3], before[:size - 3]) and int(m.queue.ptr) == 0
    else:
        assert torch.equal(m.queue.bank[:N - 3], pushed[3:]) and int(m.queue.ptr) == N - 3


def test_ema_timing_changes_nothing_but_the_last_update() -> None:
    a, b = make(ema_timing="after_step"), make(ema_timing="before_targets")
    opts = [torch.optim.SGD(trainable(x), lr=0.1, momentum=0.9) for x in (a, b)]
    for step in range(3):
        xs = views(seed=step)
        losses = []
        for m, opt in zip((a, b), opts):
            out = m.step(xs, None, torch.Generator())
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            m.after_step()
            losses.append(out.loss.detach())
        torch.testing.assert_close(losses[0], losses[1], atol=1e-5, rtol=1e-5)


# ---- the loop: warm-up, clipping, fixed predictor lr --------------------------------------------
def test_train_step_warmup_clipping_and_fixed_predictor_lr() -> None:
    cfg = cfg_for()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g)
    s = pt.setup(cfg, images, torch.arange(16) % 10, 10)
    assert isinstance(s.method, MNCLGLF) and s.augment.size == 16 and s.augment.cfg.interpolation == "bicubic"
    lrs = []
    for step in range(4):
        pt.train_step(s, torch.arange(N), step, 10)
        lrs.append({grp["name"]: grp["lr"] for grp in s.optimizer.param_groups})
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in s.method.parameters()
                                                     if p.grad is not None]))
        assert norm <= 1.0 + 1e-4  # clipped to clip_grad_norm = 1
    assert [r["body"] for r in lrs[:3]] == [0.05, 0.1, 0.1] and lrs[3]["body"] < 0.1  # 2 warm-up steps, cosine
    assert all(r["predictor"] == 0.1 for r in lrs)
    payload = pt.encoder_payload(cfg, s.method.backbone, 1, s.mean_std, 8)
    assert (payload["method"], payload["run"], payload["variant"], payload["image_size"]) == \
        ("mnclglf", "mnclglf-released", "released", 16)


# ---- linear evaluation and Table 3 --------------------------------------------------------------
def test_eval_transform_is_resize_then_centre_crop() -> None:
    from torchvision.transforms.v2 import functional as TF

    from mnclglf.data.augment import EvalTransform, Normalizer

    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ident = Normalizer((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), torch.device("cpu"))
    ours = EvalTransform(ident, 32, resize=36, mode="bicubic")(x)
    ref = TF.resize(x.float() / 255, [36], interpolation=TF.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    ref = TF.center_crop(ref, [32])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    plain = EvalTransform(ident, 16)(x)  # resize 0 and the same size: unchanged
    torch.testing.assert_close(plain, x.float() / 255)


def test_table3_shows_mnclglf_released_without_paper_numbers(tmp_path: Path) -> None:
    from mnclglf.report.tables import table3_rows, to_markdown

    for run, method, variant in (("mnclglf", "mnclglf", "paper"), ("mnclglf-released", "mnclglf", "released")):
        d = tmp_path / "cifar10" / run
        d.mkdir(parents=True)
        (d / "linear.json").write_text(json.dumps({"method": method, "variant": variant, "top1": 80.0, "top5": 99.0}))
        pre = {"variant": variant, "mnclglf": {"loss_s_grad": variant == "paper"}}
        (d / "pretrain.json").write_text(json.dumps(pre))
    paper = {"table3": {"cifar10": {"mnclglf": {"top1": 90.18, "top5": 99.78}}}}
    rows = table3_rows(tmp_path, ["cifar10"], paper)
    assert [(r["method"], r["variant"], r["paper_top1"]) for r in rows] == \
        [("mnclglf", "paper", 90.18), ("mnclglf", "released", None)]
    md = to_markdown(rows, "T", "note")
    assert "| cifar10 | mnclglf | released | 80.00 |" in md and "loss_s carries no gradient" in md
    assert not math.isnan(rows[1]["top1"])


def test_cli_pretrain_and_linear_eval_of_the_released_run(tmp_path: Path, tiny_raw: dict, digits_root: Path,
                                                          monkeypatch) -> None:
    """`mnclglf pretrain/linear-eval --method mnclglf-released` end to end on 8×8 digits (upsampled to 16)."""
    import yaml
    from click.testing import CliRunner

    from mnclglf.cli import main
    from mnclglf.report.tables import table3_rows

    raw = copy.deepcopy(RAW)
    raw.update(data_root=str(digits_root.resolve()), datasets=["digits"], methods=["mnclglf-released"])
    raw["pretrain"] = {**raw["pretrain"], "epochs": 1, "batch_size": 64, "checkpoint_every": 1}
    raw["linear_eval"] = {"epochs": 1, "batch_size": 256, "device": "cpu"}
    raw["overrides"]["digits"] = {"mnclglf": {"queue_size": 128}, "mnclglf-released": {
        "augment": {"size": 16}, "linear_eval": {"train_size": 16, "test_resize": 18, "test_crop": 16}}}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    for cmd in ("pretrain", "linear-eval"):
        res = CliRunner().invoke(main, [cmd, "--dataset", "digits", "--method", "mnclglf-released", "--params",
                                        str(params), "--quiet"])
        assert res.exit_code == 0, res.output
    metrics = tmp_path / "metrics" / "digits" / "mnclglf-released"
    pre = json.loads((metrics / "pretrain.json").read_text())
    lin = json.loads((metrics / "linear.json").read_text())
    assert (pre["method"], pre["variant"], pre["mnclglf"]["loss_s_grad"]) == ("mnclglf-released", "released", False)
    assert (lin["method"], lin["variant"], lin["run"]) == ("mnclglf", "released", "mnclglf-released")
    rows = table3_rows(tmp_path / "metrics", ["digits"], {})
    assert [(r["method"], r["variant"]) for r in rows] == [("mnclglf", "released")]
