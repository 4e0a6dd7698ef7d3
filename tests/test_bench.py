"""``mnclglf bench``: the Algorithm 1 reference is the same maths, the FLOP count is sane, the
benchmark runs end to end without DVC/DVCLive, and its JSON and parsing helpers behave.

Tiny nets, 16×16 images, one thread.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from mnclglf import bench, config
from mnclglf.bench_reference import AlgorithmOne, combine, divide
from mnclglf import ops
from mnclglf.errors import UserError
from mnclglf.train import pretrain

N, SIZE = 8, 16
TINY = {"model": {"proj_hidden": 32, "proj_out": 32, "pred_hidden": 16}, "mnclglf": {"queue_size": 32},
        "mocov2": {"queue_size": 32, "bn_groups": 2}, "nnclr": {"queue_size": 32}}


def tiny_setup(method: str = "mnclglf", **mnclglf) -> pretrain.Setup:
    over = config.deep_merge(TINY, {"mnclglf": mnclglf, "pretrain": {"threads": 1}})
    cfg = bench.bench_config(method, "paper", SIZE, N, "cpu", "fp32", 0.125, "params.yaml", overrides=over)
    images, labels = bench.synthetic(4 * N, SIZE, SIZE, 4, torch.device("cpu"))
    return pretrain.setup(cfg, images, labels, 4)


def test_reference_divide_combine_match_ops():
    x = torch.randn(3, 2, 8, 8)
    assert torch.equal(divide(x, 2), ops.divide(x, 2))
    v = torch.randn(4 * 3, 5)
    for k in (1, 2, 3, 4):
        torch.testing.assert_close(combine(v, k, 4), ops.combine(v, k, 4))


def _state_pairs(s: pretrain.Setup, ref: AlgorithmOne) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    mine = dict(s.method.named_parameters()) | dict(s.method.named_buffers())
    other = dict(ref.encoder.named_parameters(prefix="backbone")) | dict(ref.encoder.named_buffers(prefix="backbone"))
    other |= dict(ref.projector.named_parameters(prefix="projector")) | dict(ref.projector.named_buffers(prefix="projector"))
    other |= dict(ref.predictor.named_parameters(prefix="predictor"))
    other |= dict(ref.f_m.named_parameters(prefix="momentum"))

    def rows(q: torch.Tensor) -> torch.Tensor:  # ring buffer vs concatenated FIFO: same rows, other order
        q = torch.nn.functional.normalize(q, dim=1)
        return q[torch.argsort(q[:, 0])]

    pairs = {k: (v.detach(), mine[k].detach()) for k, v in other.items()}
    pairs["queue"] = (rows(ref.Q), rows(s.method.queue.bank))
    return pairs


@pytest.mark.parametrize("enqueue,sg_bn_stats", [("projection", "frozen"), ("neighbour", "update")])
def test_reference_is_the_same_step(enqueue, sg_bn_stats):
    """Algorithm 1 written out == the package's train_step: loss, weights, BN statistics, EMA copy, queue.

    After one step to float precision; over three steps the two drift apart by rounding only
    (sum/k vs mean, a loop vs a batched matmul), amplified by lr 0.1 on a tiny BN net: up to
    0.3 % of a tensor's norm on an AVX-512 CPU (elementwise 2.2e-3 on a weight of size 0.25),
    so the three-step check bounds each tensor's relative drift (2 %) instead; a wrong update
    is off by its own size. Tensors near zero (biases before a BN, ~1e-9) are compared absolutely.
    """
    s = tiny_setup(enqueue=enqueue, sg_bn_stats=sg_bn_stats)
    ref = AlgorithmOne(copy.deepcopy(s.method), s.cfg)
    gen = torch.Generator().manual_seed(s.cfg.seed + 1)  # as pretrain.setup seeds the augmentation
    for i in range(3):
        idx = torch.arange(i * N, (i + 1) * N)
        ours, _, _ = pretrain.train_step(s, idx, i, 10)
        theirs = ref.train_step(s.images, idx, s.augment, gen, i, 10)
        torch.testing.assert_close(theirs, ours, rtol=1e-5 if i == 0 else 1e-4, atol=1e-6)
        if i == 0:
            for k, (a, b) in _state_pairs(s, ref).items():
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    for k, (a, b) in _state_pairs(s, ref).items():  # per tensor: relative size of the drift
        a, b = a.double(), b.double()
        drift = (a - b).norm() / b.norm().clamp_min(1e-12)
        assert drift < 2e-2 or (a - b).abs().max() < 1e-6, f"{k}: drift {drift:.2e}"


def test_reference_refuses_other_readings():
    s = tiny_setup(combined_positive="one")
    with pytest.raises(UserError, match="combined_positive"):
        AlgorithmOne(s.method, s.cfg)


def test_flops_supervised_is_about_three_forwards():
    """fwd + bwd of convs/linears is 3× the forward, minus the first conv's input gradient."""
    from torch.utils.flop_counter import FlopCounterMode

    s = tiny_setup("supervised")
    idx = torch.arange(N)
    counts = bench.count_step_flops(s, idx)
    step_flops, aug_flops = counts["step"], counts["augment"]
    assert aug_flops == 0  # crop + flip: grid_sample only
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        s.method.head(s.method.backbone(s.augment(s.images[idx], torch.Generator().manual_seed(0))))
    fwd = fc.get_total_flops()
    assert 2.5 * fwd < step_flops <= 3 * fwd
    assert 0.95 * fwd < counts["encoder_forward"] < fwd  # the backbone alone, without the head
    assert all(p.grad is None for p in s.method.parameters())  # the count leaves no gradients behind


def test_flops_mnclglf_counts_all_networks():
    """MNCLGLF: 3 f_o fwd+bwd, 2 f_m fwd, 2 stop-gradient passes over the 4 quarter-size patches."""
    from torch.utils.flop_counter import FlopCounterMode

    s = tiny_setup()
    threads = torch.get_num_threads()
    counts = bench.count_step_flops(s, torch.arange(N))
    assert torch.get_num_threads() == threads  # counted on one thread, the setting restored
    flops, aug = counts["step"], counts["augment"]
    x = s.augment(s.images[:N], torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        s.method.backbone(x)
    backbone_fwd = fc.get_total_flops()
    assert aug > 0  # the grouped-conv blur
    # the backbone alone: (3 × 3 + 2 + 2) = 13 forward equivalents; the heads and the loss add more
    assert 12 * backbone_fwd < flops < 16 * backbone_fwd
    assert counts["encoder_forward"] == backbone_fwd
    f = bench.flops_only("mnclglf", "paper", SIZE, 4, N, 0.125, "params.yaml", overrides=TINY)
    assert f["flops_per_image"] == pytest.approx(flops / N, rel=1e-6)


def test_helpers():
    assert bench.parse_shape("50000,32,32,10") == (50000, 32, 32, 10)
    assert bench.parse_shape("100000x64x64x200") == (100000, 64, 64, 200)
    with pytest.raises(UserError, match="N,H,W,C"):
        bench.parse_shape("32,32")
    assert bench.parse_speed(("channels_last=true", "compile=0", "fused-optimizer")) == {
        "channels_last": True, "compile": False, "fused_optimizer": True}
    with pytest.raises(UserError, match="unknown fast path"):
        bench.parse_speed(("warp=1",))
    assert bench.peak_bf16("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_bf16("NVIDIA H200") == 989e12
    assert bench.peak_bf16("NVIDIA A100-SXM4-80GB") == 312e12
    assert bench.peak_bf16("NVIDIA L40S") == 362e12
    assert bench.peak_bf16("NVIDIA GeForce RTX 3090") == 71e12
    assert bench.peak_bf16("Tesla T4") is None
    assert bench.short_name("AMD EPYC") == "amd-epyc"
    assert bench.short_name("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz") == "intel-xeon-platinum-8375c"
    assert bench.run_name("mnclglf", "paper") == "mnclglf"
    assert bench.run_name("simclr", "released") == "simclr"
    with pytest.raises(UserError):
        bench.run_bench("mnclglf", device="cuda" if not torch.cuda.is_available() else "tpu")
    with pytest.raises(UserError, match="precision"):
        bench.run_bench("mnclglf", precision="fp8")


def test_write_json_append_replaces_the_same_run(tmp_path):
    run = {"config": {"run": "simclr", "n": 1, "h": 2, "w": 2, "classes": 2, "batch_size": 1, "width": 1.0,
                      "precision": "fp32", "speed": {}}, "device": {"name": "x"}, "step": {"ms_median": 1.0}}
    path = tmp_path / "b.json"
    bench.write_json(path, run)
    other = copy.deepcopy(run)
    other["config"]["run"] = "byol"
    bench.write_json(path, other, append=True)
    newer = copy.deepcopy(run)
    newer["step"]["ms_median"] = 2.0
    bench.write_json(path, newer, append=True)
    runs = json.loads(path.read_text())["runs"]
    assert [(r["config"]["run"], r["step"]["ms_median"]) for r in runs] == [("byol", 1.0), ("simclr", 2.0)]
    longer = copy.deepcopy(run)
    longer["config"]["steps"] = 4  # more timed steps: another run, kept beside
    bench.write_json(path, longer, append=True)
    assert len(json.loads(path.read_text())["runs"]) == 3
    bench.write_json(path, run)  # without append: the file holds this run only
    assert len(json.loads(path.read_text())["runs"]) == 1


BENCH_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["dvclive"] = None  # importing either now raises ImportError, as on a machine without them
    sys.modules["dvc"] = None
    import json, torch
    torch.set_num_threads(1)
    from mnclglf import bench
    tiny = {tiny!r}
    rows = []
    for method, pil_images in (("mnclglf", 3), ("simclr", None)):
        r = bench.run_bench(method, "paper", 32, 16, 16, 4, 8, "cpu", "fp32", 0.125, 2, 1, "params.yaml",
                            overrides=tiny, aug_reps=2, pil_reps=1, pil_images=pil_images)
        bench.write_json({out!r}, r, append=True)
        bench.render(r)
        rows.append(r)
    assert "mnclglf.train.logger" not in sys.modules
    print(json.dumps({{"ok": True}}))
""")


def test_bench_runs_without_dvc(tmp_path):
    out = tmp_path / "bench.json"
    script = BENCH_SCRIPT.format(tiny=TINY, out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["config"]["run"] for r in runs] == ["mnclglf", "simclr"]
    m, c = runs
    assert m["step"]["n"] == 2 and m["step"]["flops_per_image"] > 0 and m["step"]["images_per_s"] > 0
    assert m["step"]["achieved_flops_per_s"] > 0 and m["step"]["fraction_of_peak_bf16"] is None  # CPU
    assert m["step"]["memory"]["ru_maxrss_bytes"] > 0
    assert (m["step"]["augment_views"], c["step"]["augment_views"]) == (3, 2)
    for r in runs:  # the step's views at the timed per-view median, over the step's median
        st, b = r["step"], r["augment"]["batched"]
        share = b["ms_median"] / 3 * st["augment_views"] / st["ms_median"]
        assert st["augment_share"] == pytest.approx(share)
    assert m["reference"]["n"] == 2 and m["reference"]["speedup_of_step"] > 0
    assert c["reference"] == {"skipped": "the Algorithm 1 reference exists for the mnclglf paper variant only"}
    for r in runs:
        a = r["augment"]
        assert a["batched"]["n"] == 2 and a["pil_v1"]["n"] == 1 and a["pil_v2"]["n"] == 1
        assert a["speedup_vs_best_pil"] > 0
        assert a["pil_v1"]["images_per_s"] == pytest.approx(3 * 8 / a["pil_v1"]["ms_median"] * 1e3)  # per batch
        assert r["config"]["precision_effective"] == "fp32"
        assert r["device"]["type"] == "cpu"
    assert m["augment"]["pil_v1"]["images_timed"] == 3 and c["augment"]["pil_v1"]["images_timed"] == 8
