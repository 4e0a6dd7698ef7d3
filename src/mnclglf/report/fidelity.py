"""Where the authors' released code departs from the paper, one row per parameter.

The registry below holds only the words: the paper sentence or Algorithm 1 line, the
released file and what it does, and what the difference is expected to change. The
values are read from the parameters: the ``paper`` column is the configuration of the
run ``mnclglf`` and the ``released`` column that of the run ``mnclglf-released``, both
built by :func:`mnclglf.config.run_config` / :func:`~mnclglf.config.linear_eval_config`
from params.yaml. :func:`undocumented` lists every parameter whose two values differ
without a registry entry, so the table cannot drift from the code (tests/test_fidelity.py).
Printed by ``mnclglf fidelity``; ``--markdown`` gives the table of docs/FIDELITY.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mnclglf import config

PAPER_RUN = "mnclglf"
RELEASED_RUN = "mnclglf-released"
LABEL_ONLY = {"mnclglf.variant"}  # the variant's label: differs by definition, changes nothing


@dataclass(frozen=True)
class Difference:
    param: str      # "<section>.<field>" of config.py
    paper: str      # the paper's sentence or Algorithm 1's line (or what the paper leaves open)
    released: str   # the released file and what it does
    effect: str     # what the difference is expected to change


REGISTRY: tuple[Difference, ...] = (
    Difference(
        "mnclglf.sg_views",
        "Alg. 1: `y_1, y_3 = divide(x1), divide(x3)`",
        "utils/network_builder.py `FastMoCo.forward`: `_local_split` of x1 and x2 → k1, k2",
        "Which view's patches are the local targets. With loss_s detached (released) it changes nothing that "
        "trains; with loss_s_grad it moves the local targets onto the view whose prediction p2 otherwise "
        "gets no gradient at all."),
    Difference(
        "mnclglf.momentum_views",
        "Alg. 1: `z1, z2 = f_m(x1), f_m(x2)`",
        "utils/network_builder.py: `j1 = encoder_ema(x1)`, `j3 = encoder_ema(x3)`",
        "Only the names of the views change (all three are i.i.d. augmentations); together with sg_views it "
        "decides which prediction receives gradient: released, p1 and p3 train and p2 is unused."),
    Difference(
        "mnclglf.enqueue_view",
        "Alg. 1: `update_queue(Q, z1)` after the weight update",
        "utils/network_builder.py: `memory_bank(j1, update=False)`, then `memory_bank(j3, update=True)`; "
        "utils/memory_bank.py clones the bank before enqueueing, so both look-ups see the old bank",
        "None expected: one momentum view's batch is enqueued either way, after the look-ups."),
    Difference(
        "mnclglf.queue_overflow",
        "Sec. 3.2: \"the oldest batch of embeddings in the queue is dequeued and the current batch of "
        "embeddings is enqueued\"",
        "utils/memory_bank.py `_dequeue_and_enqueue`: fills the tail, drops the rest of the batch, restarts at 0",
        "None at Table 2's sizes (16384 = 64 × 256, and 1024 = 8 × 128 in the smoke profile): no batch is ever "
        "cut. A bank size that is not a multiple of the batch drops a few embeddings per pass."),
    Difference(
        "mnclglf.patch_order",
        "Sec. 3.2: \"divided into a 2 × 2 grid of patches {y_n}\" (order not stated)",
        "utils/network_builder.py `_local_split`: split into columns, each column into top and bottom → "
        "top-left, bottom-left, top-right, bottom-right",
        "None expected: the six 2-subsets are the same, only their chunk order changes and loss_s averages "
        "over all chunks (Table 5's one-embedding ablation draws a chunk uniformly either way)."),
    Difference(
        "mnclglf.loss_s_grad",
        "Eq. 7: loss_total = loss_s + λ·loss_m; Alg. 1: `loss_total.backward()`",
        "loss_functions/infoNCE.py: `concat_all_gather(p1.detach())`, `concat_all_gather(p2.detach())`; "
        "k computed under `torch.no_grad()` → loss1 has no gradient",
        "Large: the local/global contrast that the paper credits for its gains (Tables 5, 6) does not train "
        "in the released code; only λ·loss_m (an NNCLR-style loss with momentum targets) does. loss_s only "
        "changes the logged loss."),
    Difference(
        "mnclglf.loss_s_rows",
        "Alg. 1 `L(h, p)`: `logits = mm(_h, p.t())`, the combined embeddings in the rows",
        "loss_functions/infoNCE.py `loss1`: `p_gather.mm(k.T)`, the predictions in the rows",
        "Only the logged value under released (no gradient). With loss_s_grad the negatives of each "
        "prediction are the other images' combined embeddings of the chunk instead of the other predictions."),
    Difference(
        "mnclglf.loss_m",
        "Alg. 1: `loss_m = (L(z1, p2) + L(z2, p1)) / 2`, L = InfoNCE with N−1 negatives",
        "loss_functions/infoNCE.py `loss2`: `0.5·NTXentLoss(temperature=1)(j3, p1) + 0.5·(j1, p3)`, "
        "utils/ntx_ent_loss.py: lightly's NT-Xent over [j; p], 2N−2 negatives, both directions",
        "Twice the negatives, including prediction–prediction pairs, which also push the predictions of "
        "different images apart; gradient reaches p through both directions. Usually a modest gain."),
    Difference(
        "mnclglf.sg_bn_stats",
        "Eqs. 5–6: θ_s = θ_o (BatchNorm statistics not stated)",
        "utils/network_builder.py: the no_grad pass runs `f[0]`, `f[1]` in train mode",
        "BatchNorm running statistics (what the frozen encoder uses in linear evaluation) become a mixture of "
        "full views and 112-px patches; can shift linear-eval accuracy either way."),
    Difference(
        "mnclglf.ema_timing",
        "Alg. 1: `f_m.params = m * f_m.params + (1 - m) * f_q[:2].params` after `update(f_q.params)`",
        "utils/network_builder.py: `_momentum_update_target_encoder()` at the start of every forward",
        "None: the same sequence of momentum weights (the first update is a no-op, the last one is skipped)."),
    Difference(
        "model.stem",
        "Sec. 4.1: \"We use ResNet-18 [38] as the backbone encoder\" (stem not stated; the 3×3 CIFAR stem is "
        "the usual choice at 32 px)",
        "model/resnet_official.py (config.yaml `resnet18_official`): 7×7 stride-2 conv + 3×3 max-pool",
        "With 224-px inputs the feature maps are 56×56 after the stem (CIFAR stem at 32 px: 32×32): about "
        "3× the FLOPs per image, and an encoder whose linear probe needs 224-px inputs."),
    Difference(
        "model.zero_init_residual",
        "not stated",
        "config.yaml: `zero_init_residual: True`",
        "Small: each residual block starts as identity; usually a slight gain early in training."),
    Difference(
        "augment.size",
        "Table 1: 32×32 (CIFAR), 64×64 (TinyImageNet); Sec. 4.1: \"Random cropping\" (size not stated)",
        "data/imagenet_dataloader.py `build_common_augmentation('MOCOV2')`: `RandomResizedCrop(224, scale=(0.2, 1.), "
        "interpolation=BICUBIC)`, the `RandomResizedCrop(32)` line commented out",
        "Upsampled 7×: 112-px patches that each hold far more resolvable detail, ~49× the pixels; the largest "
        "cost difference and plausibly part of the accuracy gap to 32-px baselines."),
    Difference(
        "augment.interpolation",
        "not stated",
        "data/imagenet_dataloader.py (MOCOV2): `interpolation=Image.BICUBIC` in the crop",
        "Slightly sharper upsampled views; small."),
    Difference(
        "augment.normalize",
        "not stated",
        "data/imagenet_dataloader.py: `Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])`",
        "None expected beyond a fixed affine change of the input (BatchNorm follows the first conv)."),
    Difference(
        "pretrain.clip_grad_norm",
        "Table 2: SGD, momentum 0.9, wd 1e-4 (no clipping)",
        "config.yaml: `clip_grad_norm: 1`",
        "Stabilises the first steps (the loss with a = 6 has large gradients); little effect afterwards."),
    Difference(
        "pretrain.warmup_steps",
        "Table 2: cosine from 0.1 to 0",
        "config.yaml `lr_scheduler: WCosConEpoch` (the Fast-MoCo scheduler): 2 warm-up iterations, then "
        "per-iteration cosine",
        "Negligible: 2 of 39,000 steps."),
    Difference(
        "pretrain.fixed_predictor_lr",
        "Table 2: cosine learning-rate schedule (for all parameters)",
        "config.yaml `WCosConEpoch` (cosine + constant, the Fast-MoCo/SimSiam scheduler): the predictor keeps lr 0.1",
        "The predictor keeps adapting late in training (SimSiam reports a gain from it)."),
    Difference(
        "linear_eval.train_size",
        "Sec. 4.1: \"the same evaluation strategy as SimCLR, BYOL and SimSiam\" (input size not stated)",
        "config_finetune.yaml `transforms: LINEAR` → data/imagenet_dataloader.py: "
        "`RandomResizedCrop(224, BICUBIC)` + flip",
        "The probe sees what the encoder was trained on (224 px); evaluating it at 32 px would be far off."),
    Difference(
        "linear_eval.test_resize",
        "not stated",
        "config_finetune.yaml `transforms: ONECROP` → data/imagenet_dataloader.py: `Resize(256, BICUBIC)`",
        "Test images upsampled to 256 then centre-cropped: the probe sees the central 87.5% of each image."),
    Difference(
        "linear_eval.test_crop",
        "not stated",
        "data/imagenet_dataloader.py (ONECROP): `CenterCrop(224)`",
        "See test_resize: the borders of every test image are cut."),
    Difference(
        "linear_eval.interpolation",
        "not stated",
        "data/imagenet_dataloader.py (LINEAR, ONECROP): bicubic resampling",
        "Small."),
    # Facts the released code shares with our paper reading: listed so the table names them.
    Difference(
        "mnclglf.lam",
        "Eq. 7: loss_s + λ·loss_m; Table 4: λ = 6 is best",
        "loss_functions/infoNCE.py: `a = 6` hard-coded",
        "Same value; in the released code only a·loss_m has gradient, so a acts as a learning-rate factor."),
    Difference(
        "mnclglf.tau",
        "Table 2: temperature 1.0",
        "config.yaml `temperature: 1`; `NTXentLoss(temperature=1)` hard-coded",
        "Same value."),
)


def _value(cfg: Any, le: Any, param: str) -> Any:
    section, name = param.split(".", 1)
    obj = le if section == "linear_eval" else getattr(cfg, section)
    return config.to_dict(getattr(obj, name))


def _configs(raw: dict[str, Any], dataset: str) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    paper = (config.run_config(raw, dataset, PAPER_RUN), config.linear_eval_config(raw, dataset, PAPER_RUN))
    released = (config.run_config(raw, dataset, RELEASED_RUN), config.linear_eval_config(raw, dataset, RELEASED_RUN))
    return paper, released


def fidelity_rows(raw: dict[str, Any], dataset: str = "cifar10") -> list[dict[str, Any]]:
    """The registry with each parameter's value in the paper and the released run (differences first)."""
    paper, released = _configs(raw, dataset)
    rows = []
    for d in REGISTRY:
        pv, rv = _value(*paper, d.param), _value(*released, d.param)
        rows.append({"param": d.param, "paper_text": d.paper, "released_code": d.released, "paper": pv,
                     "released": rv, "differs": pv != rv, "effect": d.effect})
    return sorted(rows, key=lambda r: not r["differs"])


def all_parameters() -> dict[str, type]:
    """Every ``<section>.<field>`` a registry entry may name, with its dataclass."""
    sections = {**config.SECTIONS, "linear_eval": config.LinearEvalConfig}
    return {f"{s}.{f.name}": cls for s, cls in sections.items() for f in dataclasses.fields(cls)}


def profile_hook_keys(raw: dict[str, Any], dataset: str) -> set[str]:
    """``<section>.<field>`` set by the run's per-dataset hook ``overrides.<dataset>.mnclglf-released``.

    Those are profile choices (the CPU profile's input size and schedule, docs/FIDELITY.md §5),
    not readings of the released code, so the registry does not explain them.
    """
    hook = ((raw.get("overrides") or {}).get(dataset) or {}).get(RELEASED_RUN) or {}
    return {f"{section}.{key}" for section, values in hook.items() for key in (values or {})}


def undocumented(raw: dict[str, Any], dataset: str = "cifar10") -> list[str]:
    """Parameters whose paper and released values differ but that neither the registry nor the profile hook explains."""
    paper, released = _configs(raw, dataset)
    known = {d.param for d in REGISTRY} | LABEL_ONLY | profile_hook_keys(raw, dataset)
    return [p for p in all_parameters() if p not in known and _value(*paper, p) != _value(*released, p)]


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(map(_fmt, v)) + "]"
    return str(v)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| # | paper (sentence or Algorithm 1 line) | released code (file: behaviour) | our `paper` | "
             "our `released` | parameter |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        same = "" if r["differs"] else " (same)"
        cells = [str(i), r["paper_text"], r["released_code"], f"`{_fmt(r['paper'])}`",
                 f"`{_fmt(r['released'])}`{same}", f"`{r['param']}`"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict[str, Any]], dataset: str, effects: bool = False) -> None:
    """The Markdown table's columns as a rich table; ``effects`` adds the expected-effect column."""
    from rich.console import Console
    from rich.table import Table

    n = sum(r["differs"] for r in rows)
    table = Table(title=f"MNCLGLF: paper vs released code ({n} differences; values for {dataset})", show_lines=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("paper (sentence or Algorithm 1 line)", ratio=3, overflow="fold")
    table.add_column("released code (file: behaviour)", ratio=3, overflow="fold")
    table.add_column("our paper", no_wrap=True)
    table.add_column("our released", no_wrap=True)
    table.add_column("parameter", no_wrap=True)
    if effects:
        table.add_column("expected effect", ratio=3, overflow="fold")
    for i, r in enumerate(rows, 1):
        cells = [str(i), r["paper_text"], r["released_code"], _fmt(r["paper"]),
                 _fmt(r["released"]) + ("" if r["differs"] else " (same)"), r["param"]]
        table.add_row(*cells, *([r["effect"]] if effects else []), style=None if r["differs"] else "dim")
    Console().print(table)
