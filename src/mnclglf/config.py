"""Typed, validated parameters: one definition, checked when ``params.yaml`` is loaded.

Every section of ``params.yaml`` is a frozen dataclass below. Each field carries its
constraint in ``field(metadata=...)`` so that an unknown key, a wrong type or an
out-of-range value stops the run with one line naming the key, the value and what
is allowed, before anything is written.

Per-dataset overrides (``overrides.<dataset>`` for pretraining, and
``linear_eval_overrides.<dataset>`` for the linear probe) are deep-merged over the
shared sections; the paper's datasets have none, the bundled ``digits`` shrinks the
network and the epochs so that the CPU profile fits in minutes.

A *variant run* (``VARIANT_RUNS``, e.g. ``mnclglf-released``) is one more entry of the
``methods`` list: it builds its base method (``mnclglf``) from the shared sections, then
its own top-level section (``mnclglf-released: {model, augment, pretrain, mnclglf,
linear_eval}``), then ``overrides.<dataset>``, then ``overrides.<dataset>.<run>``.
Its method section must set every key, so the run never reads the shared ``mnclglf``
section and DVC's ``${item.method}`` param dependency covers it exactly.

An *ablation run* (Tables 4-6) is the main ``mnclglf`` run with one key changed, named
by that key: ``mnclglf-lam<λ>``, ``mnclglf-k<k>``, ``mnclglf-one`` (one combined
embedding per step). The values run are listed in ``ablations``; the main run's own
values (λ = 6, k = 2) are not repeated there, the tables share the main run.

Seeds: ``seed`` is the seed of every run; each seed of ``repeat_seeds`` repeats the
Table 3 runs as ``<run>-seed<s>`` (initialisation, augmentation draws and data order
all follow the seed; the data split does not).

A *short run* ``<run>-e<N>`` (the quick profile, ``profiles.quick``) is ``<run>`` trained for
N epochs as a run of its own (its cosine schedule spans N epochs), keeping no intermediate
encoders; ``<run>-e<N>-seed<s>`` is its repeat with seed s.
"""

from __future__ import annotations

import dataclasses
import math
import re

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mnclglf.data.sources import SOURCES
from mnclglf.errors import UserError

DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet")  # data.sources.SOURCES plus the bundled digits
SSL_METHODS = ("mnclglf", "mocov2", "simsiam", "simclr", "byol", "nnclr", "fastmoco")
VARIANTS = ("paper", "released")
# Variant runs: a name of the ``methods`` list → (the method it builds, its variant label).
VARIANT_RUNS: dict[str, tuple[str, str]] = {"mnclglf-released": ("mnclglf", "released")}
RUN_METHODS = (*SSL_METHODS, *VARIANT_RUNS)
VARIANT_SECTIONS = ("model", "augment", "pretrain", "mnclglf", "linear_eval")  # what a variant section may set


ABLATION_RUN = re.compile(r"^mnclglf-(?:lam(?P<lam>\d+(?:\.\d+)?)|k(?P<k>\d+)|(?P<one>one))$")
SEED_RUN = re.compile(r"^(?P<run>.+)-seed(?P<seed>\d+)$")
# A separate short run (the quick profile): ``<run>-e<N>`` is ``<run>`` trained for N epochs, with
# its own cosine schedule and no kept encoders; not the epoch-N encoder of a longer run (Table 5).
EPOCHS_RUN = re.compile(r"^(?P<run>.+)-e(?P<epochs>\d+)$")


def split_seed(run: str) -> tuple[str, int | None]:
    """``<run>-seed<s>`` → (``<run>``, s); any other name → (name, None)."""
    m = SEED_RUN.match(run)
    return (m["run"], int(m["seed"])) if m else (run, None)


def short_run(run: str, epochs: int) -> str:
    """``run`` as a separate ``epochs``-epoch run (the inverse of :func:`split_epochs`)."""
    return f"{run}-e{epochs}"


def split_epochs(run: str) -> tuple[str, int | None]:
    """``<run>-e<N>`` → (``<run>``, N); any other name → (name, None). Strip the seed first."""
    m = EPOCHS_RUN.match(run)
    return (m["run"], int(m["epochs"])) if m else (run, None)


def ablation_keys(run: str) -> dict[str, Any]:
    """The ``mnclglf`` keys an ablation run sets (``mnclglf-lam4`` → {lam: 4.0}); {} for other runs."""
    m = ABLATION_RUN.match(run)
    if not m:
        return {}
    if m["lam"] is not None:
        return {"lam": float(m["lam"])}
    if m["k"] is not None:
        return {"k": int(m["k"])}
    return {"combined_positive": "one"}


def plain_run(run: str) -> str:
    """The run whose sections ``run`` reads: the name without its seed and epochs suffixes,
    ``mnclglf`` for an ablation."""
    name = split_epochs(split_seed(run)[0])[0]
    return "mnclglf" if ablation_keys(name) else name


def base_method(method: str) -> str:
    """The method a run builds: ``mnclglf`` for ``mnclglf-released``/an ablation, the plain name otherwise."""
    name = plain_run(method)
    return VARIANT_RUNS[name][0] if name in VARIANT_RUNS else name


def check_run(run: str, extra: tuple[str, ...] = ("supervised", "random-init")) -> str:
    """``run`` if it names a run (a method, a variant, an ablation, any of these ``-seed<s>``); else a one-line error."""
    allowed = (*RUN_METHODS, *extra)
    if plain_run(run) not in allowed:
        raise UserError(f"method = {run!r}: expected one of {', '.join(allowed)}, an ablation run (mnclglf-lam<λ>, "
                        f"mnclglf-k<k>, mnclglf-one), any of these followed by -e<epochs> "
                        f"(a separate short run) and/or -seed<s>")
    return run


def _check(*, gt: float | None = None, ge: float | None = None, le: float | None = None,
           lt: float | None = None, choices: tuple | None = None, doc: str = "") -> dict[str, Any]:
    return {"gt": gt, "ge": ge, "le": le, "lt": lt, "choices": choices, "doc": doc}


def num(default: Any, doc: str = "", **bounds: float) -> Any:
    """A numeric field with bounds (gt/ge/le/lt)."""
    return field(default=default, metadata=_check(doc=doc, **bounds))


def pick(default: Any, choices: tuple, doc: str = "") -> Any:
    """A field restricted to ``choices``."""
    return field(default=default, metadata=_check(choices=choices, doc=doc))


def pair(default: tuple[float, float], doc: str = "", **bounds: float) -> Any:
    """A (low, high) range; both ends obey ``bounds`` and low <= high."""
    return field(default=default, metadata=_check(doc=doc, **bounds) | {"range": True})


@dataclass(frozen=True)
class ModelConfig:
    stem: Literal["cifar", "imagenet"] = pick("cifar", ("cifar", "imagenet"),
                                              "cifar: 3×3 conv stride 1, no max-pool; imagenet: 7×7 stride 2 + max-pool")
    width: float = num(1.0, "channel multiplier of ResNet-18 (1.0 = 64..512 channels)", gt=0, le=4)
    zero_init_residual: bool = False
    proj_hidden: int = num(2048, "projector hidden width", ge=1)
    proj_out: int = num(2048, "projector output width", ge=1)
    pred_hidden: int = num(512, "predictor bottleneck width", ge=1)


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's augmentation family; every probability and range is a parameter."""

    size: int = num(0, "output side of the random resized crop; 0 = the dataset's own size", ge=0)
    crop_scale: tuple[float, float] = pair((0.2, 1.0), gt=0, le=1)
    crop_ratio: tuple[float, float] = pair((3 / 4, 4 / 3), gt=0)
    flip_p: float = num(0.5, ge=0, le=1)
    jitter: tuple[float, float, float, float] = field(
        default=(0.4, 0.4, 0.4, 0.1),
        metadata=_check(ge=0, doc="brightness, contrast, saturation, hue (hue <= 0.5)"))
    jitter_p: float = num(0.8, ge=0, le=1)
    gray_p: float = num(0.2, ge=0, le=1)
    blur_p: float = num(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = pair((0.1, 2.0), gt=0)
    blur_kernel_frac: float = num(0.1, "Gaussian kernel side as a fraction of the image side (SimCLR: 10%)", gt=0, le=1)
    normalize: Literal["none", "dataset", "imagenet"] = pick(
        "dataset", ("none", "dataset", "imagenet"), "per-channel mean/std: of the training split, ImageNet's, or none")
    interpolation: Literal["bilinear", "bicubic"] = pick(
        "bilinear", ("bilinear", "bicubic"), "resampling of the random resized crop (released code: bicubic)")


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = num(200, ge=0)
    batch_size: int = num(256, ge=2)
    lr: float = num(0.1, gt=0)
    final_lr: float = num(0.0, ge=0)
    momentum: float = num(0.9, ge=0, lt=1)
    weight_decay: float = num(1e-4, ge=0)
    checkpoint_every: int = num(10, "epochs between checkpoints (and one at the end)", ge=1)
    keep_epochs: tuple[int, ...] = ()
    knn_every: int = num(0, "epochs between online k-NN monitor runs (and one at the end); 0 = off",
                         ge=0)
    device: str = pick("auto", ("auto", "cpu", "cuda"))
    threads: int = num(0, "CPU threads for torch; 0 = torch's default", ge=0)
    warmup_steps: int = num(0, "linear lr warm-up steps before the per-step cosine (released code: 2)", ge=0)
    clip_grad_norm: float = num(0.0, "clip the global gradient norm to this value before each step; 0 = off "
                                     "(released code: 1.0)", ge=0)
    fixed_predictor_lr: bool = pick(False, (True, False),
                                    "the predictor keeps the initial lr instead of the cosine schedule "
                                    "(released code: true, the Fast-MoCo/SimSiam scheduler)")


@dataclass(frozen=True)
class MnclglfConfig:
    variant: Literal["paper", "released"] = pick("paper", VARIANTS)
    tau: float = num(1.0, "temperature τ of L(h, p)", gt=0)
    lam: float = num(6.0, "λ of loss_total = loss_s + λ·loss_m", gt=0)
    k: int = num(2, "patches per combined embedding; C(4, k) combinations", ge=1, le=4)
    grid: int = num(2, "the view is divided into grid×grid patches", ge=1)
    ema: float = num(0.99, "momentum coefficient m", ge=0, lt=1)
    queue_size: int = num(16384, "entries of the nearest-neighbour queue Q", ge=1)
    enqueue: Literal["neighbour", "projection"] = pick(
        "neighbour", ("neighbour", "projection"),
        "what update_queue(Q, z1) stores: the looked-up neighbour (Algorithm 1 as written) or z1 before the look-up")
    sg_bn_stats: Literal["frozen", "update"] = pick(
        "frozen", ("frozen", "update"),
        "whether the stop-gradient pass over patches may update f_o's BatchNorm running statistics")
    sg_bn_batch: Literal["batch", "running"] = pick(
        "batch", ("batch", "running"),
        "BatchNorm in the stop-gradient pass normalises with batch statistics (train mode) or running ones")
    combined_positive: Literal["all", "one"] = pick(
        "all", ("all", "one"), "all C(4,k) combined embeddings, or one chosen at random per step (Table 5)")
    # -- where the released code (docs/FIDELITY.md) departs from Algorithm 1; defaults are Algorithm 1's reading
    sg_views: Literal["x1x3", "x1x2"] = pick(
        "x1x3", ("x1x3", "x1x2"),
        "the two views the stop-gradient network divides (Algorithm 1: x1, x3; released: x1, x2)")
    momentum_views: Literal["x1x2", "x1x3"] = pick(
        "x1x2", ("x1x2", "x1x3"), "the two views the momentum network encodes (Algorithm 1: x1, x2; released: x1, x3)")
    enqueue_view: Literal["x1", "x2", "x3"] = pick(
        "x1", ("x1", "x2", "x3"), "the momentum view whose batch is enqueued, after both look-ups (Algorithm 1: "
                                  "update_queue(Q, z1); released: j3); must be one of momentum_views")
    queue_overflow: Literal["wrap", "drop"] = pick(
        "wrap", ("wrap", "drop"), "a batch that runs past the end of Q: wraps to the front (a FIFO ring) or fills "
                                  "the tail and drops the rest (released: lightly's memory bank)")
    patch_order: Literal["row", "column"] = pick(
        "row", ("row", "column"), "order of the grid² patches on the batch axis: row-major (TL, TR, BL, BR) or "
                                  "column-major (TL, BL, TR, BR, the released split)")
    loss_s_grad: bool = pick(True, (True, False),
                             "loss_s back-propagates into the predictions (Algorithm 1) or is computed on detached "
                             "predictions and only logged (released code)")
    loss_s_rows: Literal["target", "prediction"] = pick(
        "target", ("target", "prediction"), "rows of loss_s's logits: the combined embeddings (Algorithm 1's L(h, p)) "
                                            "or the predictions (released: p·kᵀ, softmax over the chunk)")
    loss_m: Literal["infonce", "ntxent"] = pick(
        "infonce", ("infonce", "ntxent"), "loss_m: Algorithm 1's L(z, p) (N−1 negatives) or lightly's NT-Xent "
                                          "over [z; p] (2N−2 negatives, released)")
    ema_timing: Literal["after_step", "before_targets"] = pick(
        "after_step", ("after_step", "before_targets"),
        "the EMA update of f_m after the optimiser step (Algorithm 1) or at the start of the next forward, before "
        "the targets (released); the same trajectory except that the last EMA is skipped")


@dataclass(frozen=True)
class SimCLRConfig:
    """SimCLR (Chen et al. 2020). Table 2's shared configuration overrides SimCLR's own LARS (lr 0.3·bs/256,
    wd 1e-6, warm-up), its 2-layer 128-d projector, batch 4096 and its temperature; see docs/FIDELITY.md."""

    tau: float = num(1.0, "NT-Xent temperature (Table 2's shared 1.0; SimCLR's own default is 0.5)", gt=0)


@dataclass(frozen=True)
class MoCoV2Config:
    """MoCo v2 (Chen et al. 2020). Table 2 overrides the temperature, the momentum, the queue length,
    the lr (MoCo v2: 0.03 at batch 256) and the 2-layer 128-d MLP head without BN."""

    tau: float = num(1.0, "InfoNCE temperature (Table 2's shared 1.0; MoCo v2's own is 0.2)", gt=0)
    ema: float = num(0.99, "key-encoder momentum (Table 2; MoCo v2's own is 0.999)", ge=0, lt=1)
    queue_size: int = num(16384, "negatives in the queue (Table 2; MoCo v2's own is 65536)", ge=1)
    shuffle_bn: bool = pick(True, (True, False),
                            "shuffling BN on one device: the key encoder sees the batch permuted, split into "
                            "bn_groups BatchNorm groups, then un-permuted (MoCo's own: shuffle across 8 GPUs)")
    bn_groups: int = num(8, "BatchNorm groups that stand in for MoCo's 8 GPUs, in both encoders; 1 = one "
                            "full-batch BN (pretrain.batch_size must split into groups of >= 2)", ge=1)


@dataclass(frozen=True)
class BYOLConfig:
    """BYOL (Grill et al. 2020). Table 2 overrides the constant momentum (BYOL: cosine 0.996 → 1), the
    optimiser (BYOL: LARS lr 0.2·bs/256, wd 1.5e-6) and the heads (BYOL: 4096→256 projector, 4096 predictor)."""

    ema: float = num(0.99, "target momentum (Table 2; BYOL's own starts at 0.996 with a cosine ramp to 1)", ge=0, lt=1)


@dataclass(frozen=True)
class SimSiamConfig:
    """SimSiam (Chen & He 2021). Its heads are Table 2's; Table 2 overrides its lr (SimSiam: 0.05·bs/256)."""

    fixed_predictor_lr: bool = pick(True, (True, False),
                                    "the predictor keeps the initial lr instead of the cosine decay (SimSiam Sec. 4.1)")


@dataclass(frozen=True)
class NNCLRConfig:
    """NNCLR (Dwibedi et al. 2021). Table 2 overrides the temperature, the support-set size, the optimiser
    (NNCLR: LARS, batch 4096) and the heads (NNCLR: 256-d projector, 4096-wide predictor)."""

    tau: float = num(1.0, "temperature (Table 2's shared 1.0; NNCLR's own is 0.1)", gt=0)
    queue_size: int = num(16384, "support-set size (Table 2; NNCLR's own is 98304)", ge=1)


@dataclass(frozen=True)
class FastMoCoConfig:
    """Fast-MoCo (Ci et al. 2022). Its released heads, τ, momentum, SGD lr 0.1 and wd 1e-4 are Table 2's;
    Table 2 drops its gradient clipping (norm 1) and 1-epoch warm-up."""

    tau: float = num(1.0, "temperature (Table 2's shared 1.0, as Fast-MoCo's own)", gt=0)
    ema: float = num(0.99, "momentum of the target encoder (Table 2, as Fast-MoCo's own)", ge=0, lt=1)
    k: int = num(2, "patch features averaged per combination (Fast-MoCo: 2, i.e. C(4,2) = 6)", ge=1, le=4)
    grid: int = num(2, "grid×grid split of each view (Fast-MoCo: 2)", ge=1)


@dataclass(frozen=True)
class SupervisedConfig:
    """The supervised baseline: backbone + linear classifier, cross-entropy, under Table 2's loop
    (SGD, lr 0.1 cosine, wd 1e-4, batch 256, 200 epochs) with crop + flip augmentation."""

    label_smoothing: float = num(0.0, "cross-entropy label smoothing (0 = plain cross-entropy)", ge=0, lt=1)


@dataclass(frozen=True)
class LinearEvalConfig:
    epochs: int = num(90, ge=1)
    batch_size: int = num(256, ge=1)
    lr: float = num(0.8, gt=0)
    momentum: float = num(0.9, ge=0, lt=1)
    weight_decay: float = num(0.0, ge=0)
    trust_coefficient: float = num(0.001, "LARS η", gt=0)
    crop_scale: tuple[float, float] = pair((0.08, 1.0), gt=0, le=1)
    flip_p: float = num(0.5, ge=0, le=1)
    device: str = pick("auto", ("auto", "cpu", "cuda"))
    train_size: int = num(0, "side of the training random resized crop; 0 = the encoder's pretraining input size", ge=0)
    test_resize: int = num(0, "test images: resize the shorter side to this, then centre-crop test_crop; "
                              "0 = resize straight to test_crop (released: 256)", ge=0)
    test_crop: int = num(0, "side of the test centre crop; 0 = the training size (released: 224)", ge=0)
    interpolation: Literal["bilinear", "bicubic"] = pick(
        "bilinear", ("bilinear", "bicubic"), "resampling of the training crop and the test resize (released: bicubic)")
    threads: int = num(0, "CPU threads for torch; 0 = torch's default", ge=0)
    augment: bool = pick(True, (True, False),
                         "false: no training augmentation; each training image passes the frozen encoder once "
                         "(through the test transform) and the head trains on those cached features")


@dataclass(frozen=True)
class DigitsConfig:
    size: int = num(16, "side the 8×8 digits are upsampled to", ge=8)
    test_fraction: float = num(0.2, gt=0, lt=1)
    split_seed: int = num(0, ge=0)


@dataclass(frozen=True)
class RunConfig:
    """Everything one (dataset, method) pretraining run reads, after overrides."""

    dataset: str
    method: str
    seed: int
    data_root: str
    model: ModelConfig
    augment: AugmentConfig
    pretrain: PretrainConfig
    mnclglf: MnclglfConfig
    simclr: SimCLRConfig
    mocov2: MoCoV2Config
    byol: BYOLConfig
    simsiam: SimSiamConfig
    nnclr: NNCLRConfig
    fastmoco: FastMoCoConfig
    supervised: SupervisedConfig
    speed: SpeedConfig = field(default_factory=lambda: SpeedConfig())  # defined at the end of the file


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "augment": AugmentConfig,
    "pretrain": PretrainConfig,
    "mnclglf": MnclglfConfig,
    "simclr": SimCLRConfig,
    "mocov2": MoCoV2Config,
    "byol": BYOLConfig,
    "simsiam": SimSiamConfig,
    "nnclr": NNCLRConfig,
    "fastmoco": FastMoCoConfig,
    "supervised": SupervisedConfig,
}
TOP_LEVEL = {"seed", "repeat_seeds", "data_root", "datasets", "methods", "eval_methods", "ablation_datasets",
             "ablations", "profiles", "digits", "linear_eval", "overrides", "linear_eval_overrides", *SECTIONS,
             *VARIANT_RUNS}


def _describe(meta: dict[str, Any]) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    parts = []
    for key, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if meta.get(key) is not None:
            parts.append(f"{sym} {meta[key]}")
    return "a number " + " and ".join(parts) if parts else "a valid value"


def _bounded(value: float, meta: dict[str, Any]) -> bool:
    return not (
        (meta.get("gt") is not None and not value > meta["gt"])
        or (meta.get("ge") is not None and not value >= meta["ge"])
        or (meta.get("lt") is not None and not value < meta["lt"])
        or (meta.get("le") is not None and not value <= meta["le"])
    )


def _coerce(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    """Check ``value`` against the annotated type and metadata; return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"{key} = {value!r}: expected one of {', '.join(map(str, typing.get_args(tp)))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key} = {value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key} = {value!r}: expected an integer, {_describe(meta)}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{key} = {value!r}: expected a finite number, {_describe(meta)}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise UserError(f"{key} = {value!r}: expected a string")
    elif origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} = {value!r}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0], {}) for i, v in enumerate(value))
        if len(value) != len(args):
            raise UserError(f"{key} = {value!r}: expected a list of {len(args)} numbers")
        out = tuple(_coerce(f"{key}[{i}]", v, a, {}) for i, (v, a) in enumerate(zip(value, args)))
        for i, v in enumerate(out):
            if not _bounded(v, meta):
                raise UserError(f"{key}[{i}] = {v!r}: expected {_describe(meta)}")
        if meta.get("range") and out[0] > out[1]:
            raise UserError(f"{key} = {list(value)}: expected low <= high")
        return out
    if meta.get("choices") and not any(value == c and isinstance(value, bool) == isinstance(c, bool)
                                       for c in meta["choices"]):  # 1 is not true, "true" is not True
        raise UserError(f"{key} = {value!r}: expected {_describe(meta)}")
    if isinstance(value, (int, float)) and not _bounded(value, meta):
        raise UserError(f"{key} = {value!r}: expected {_describe(meta)}")
    return value


def build(cls: type, data: dict[str, Any] | None, prefix: str) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise :class:`UserError`."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{prefix} = {data!r}: expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{prefix}.{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
    kwargs = {name: _coerce(f"{prefix}.{name}", data[name], hints[name], dict(fields[name].metadata))
              for name in fields if name in data}
    return cls(**kwargs)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_params(path: Path | str = "params.yaml") -> dict[str, Any]:
    """Parse ``params.yaml`` and check all of it (:func:`validate`), whichever stage asks."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: parameter file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - TOP_LEVEL)
    if unknown:
        raise UserError(f"{unknown[0]}: unknown key in {path}; allowed: {', '.join(sorted(TOP_LEVEL))}")
    for key, allowed in (("datasets", DATASETS), ("methods", RUN_METHODS),
                         ("ablation_datasets", DATASETS),
                         ("eval_methods", (*RUN_METHODS, "random-init"))):
        values = raw.get(key, [])
        if not isinstance(values, list):
            raise UserError(f"{key} = {values!r}: expected a list")
        for v in values:
            if v not in allowed:
                raise UserError(f"{key}: unknown value {v!r}; allowed: {', '.join(allowed)}")
    _check_ablations(raw)
    seeds(raw)
    validate(raw)
    return raw


def _mapping(value: Any, key: str) -> dict[str, Any]:
    """A section as written: a mapping; a null (an empty ``key:``) or any other value is refused."""
    if value is None:
        raise UserError(f"{key} = null: an empty section; give its keys or remove the line")
    if not isinstance(value, dict):
        raise UserError(f"{key} = {value!r}: expected a mapping")
    return value


def _stage_runs(raw: dict[str, Any], dataset: str) -> list[str]:
    """Every run a stage may start on ``dataset``: the methods, supervised, the ablation runs."""
    runs = [*raw.get("methods", SSL_METHODS), "supervised"]
    if dataset in raw.get("ablation_datasets", []):
        abl = raw.get("ablations") or {}
        runs += [f"mnclglf-lam{v}" for v in abl.get("lam", [])]
        runs += [f"mnclglf-k{v}" for v in abl.get("k", [])]
        runs += ["mnclglf-one", *map(str, abl.get("table5_runs", []))]
    return list(dict.fromkeys(runs))


def validate(raw: dict[str, Any]) -> None:
    """Check the whole file, whichever stage runs: every section as written, every dataset override,
    every variant section, then each run's merged configuration on each dataset.

    A value that a dataset override replaces is still checked, so that a broken paper profile
    is refused by the smoke profile's first command, not hours later.
    """
    shared = (*SECTIONS.items(), ("linear_eval", LinearEvalConfig), ("digits", DigitsConfig))
    for name, cls in shared:
        if name in raw:
            build(cls, _mapping(raw[name], name), name)
    for table in ("overrides", "linear_eval_overrides"):
        for dataset, over in _mapping(raw.get(table, {}), table).items():
            if dataset not in DATASETS:
                raise UserError(f"{table}.{dataset}: unknown dataset; allowed: "
                                f"{', '.join(DATASETS)}")
            over = _mapping(over, f"{table}.{dataset}")
            if table == "linear_eval_overrides":
                build(LinearEvalConfig, over, f"{table}.{dataset}")
                continue
            for section, value in over.items():
                if section in SECTIONS:
                    build(SECTIONS[section], _mapping(value, f"{table}.{dataset}.{section}"),
                          f"{table}.{dataset}.{section}")
                elif section in VARIANT_RUNS:
                    _check_variant_section(value, f"{table}.{dataset}.{section}")
    for run in VARIANT_RUNS:
        if run in raw:
            _check_variant_section(raw[run], run)
    profiles = _mapping(raw.get("profiles", {}), "profiles")
    for name, prof in profiles.items():
        prof = _mapping(prof, f"profiles.{name}")
        for d in prof.get("datasets", []) if isinstance(prof.get("datasets", []), list) else [None]:
            if d not in DATASETS:
                raise UserError(f"profiles.{name}.datasets: {d!r} is not a dataset; allowed: "
                                f"{', '.join(DATASETS)}")
    datasets = dict.fromkeys([*raw.get("datasets", DATASETS), *(raw.get("overrides") or {}),
                              *(raw.get("linear_eval_overrides") or {})])
    for dataset in datasets:
        for run in _stage_runs(raw, dataset):
            try:
                run_config(raw, dataset, run)
                linear_eval_config(raw, dataset, run)
            except UserError as exc:
                raise UserError(f"{exc} (in run {run} on {dataset})") from None


def _check_variant_section(value: Any, where: str) -> None:
    for section, data in _section(_mapping(value, where), where).items():
        key = f"{where}.{section}"
        build(SECTIONS.get(section, LinearEvalConfig), _mapping(data, key), key)


def _number_list(values: Any, key: str, integer: bool, lo: float, hi: float) -> list[float]:
    if not isinstance(values, list):
        raise UserError(f"{key} = {values!r}: expected a list")
    for v in values:
        ok = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok or not lo <= v <= hi:
            raise UserError(f"{key}: {v!r} is not {'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}]")
    if len(set(values)) != len(values):
        raise UserError(f"{key} = {values!r}: a value is listed twice")
    return values


def _check_ablations(raw: dict[str, Any]) -> None:
    """``ablations``: the λ and k values of Tables 4 and 6 beside the main run's, and Table 5's runs."""
    abl = raw.get("ablations") or {}
    if not isinstance(abl, dict):
        raise UserError(f"ablations = {abl!r}: expected a mapping")
    unknown = sorted(set(abl) - {"lam", "k", "table5_runs"})
    if unknown:
        raise UserError(f"ablations.{unknown[0]}: unknown key; allowed: k, lam, table5_runs")
    outside = sorted(set(raw.get("ablation_datasets", [])) - set(raw.get("datasets", [])))
    if outside:
        raise UserError(f"ablation_datasets: {outside[0]!r} is not in `datasets` (its main runs are needed)")
    main = raw.get("mnclglf") if isinstance(raw.get("mnclglf"), dict) else {}  # else: validate()
    for key, integer, hi in (("lam", False, 1e6), ("k", True, 4)):
        values = _number_list(abl.get(key, []), f"ablations.{key}", integer, 1 if integer else 1e-9, hi)
        for v in values:
            if isinstance(v, float) and v.is_integer():  # DVC writes 2.0 into the run name, the tables read 2
                raise UserError(f"ablations.{key}: write {int(v)}, not {v} (the value names the run folder)")
        own = main.get(key, getattr(MnclglfConfig, key))
        if own in values:
            raise UserError(f"ablations.{key}: {own:g} is the main run's mnclglf.{key}; the tables share the main "
                            f"run, list only the other values")
    runs = abl.get("table5_runs", [])
    if not isinstance(runs, list):
        raise UserError(f"ablations.table5_runs = {runs!r}: expected a list")
    for run in runs:
        check_run(str(run), extra=())


def seeds(raw: dict[str, Any]) -> list[int]:
    """Every seed of the Table 3 runs: ``seed`` (the main runs), then ``repeat_seeds``."""
    first = _coerce("seed", raw.get("seed", 0), int, {"ge": 0})
    repeats = _number_list(raw.get("repeat_seeds", []), "repeat_seeds", True, 0, 2**31 - 1)
    if first in repeats:
        raise UserError(f"repeat_seeds: {first} is `seed`, the main runs' seed; list only the extra seeds")
    return [first, *repeats]


def _overrides(raw: dict[str, Any], table: str, dataset: str) -> dict[str, Any]:
    if dataset not in DATASETS:
        raise UserError(f"dataset = {dataset!r}: expected one of {', '.join(DATASETS)}")
    over = (raw.get(table) or {}).get(dataset) or {}
    if not isinstance(over, dict):
        raise UserError(f"{table}.{dataset} = {over!r}: expected a mapping")
    return over


def _section(data: Any, where: str) -> dict[str, Any]:
    """A variant section (``<run>`` or ``overrides.<dataset>.<run>``): a mapping of VARIANT_SECTIONS."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{where} = {data!r}: expected a mapping")
    unknown = sorted(set(data) - set(VARIANT_SECTIONS))
    if unknown:
        raise UserError(f"{where}.{unknown[0]}: unknown section; allowed: {', '.join(VARIANT_SECTIONS)}")
    for name, value in data.items():
        if value is not None and not isinstance(value, dict):
            raise UserError(f"{where}.{name} = {value!r}: expected a mapping")
    return data


def variant_layers(raw: dict[str, Any], dataset: str, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """For a variant run: its own section and its per-dataset hook ``overrides.<dataset>.<run>``; else two {}."""
    if method not in VARIANT_RUNS:
        return {}, {}
    if method not in raw:
        raise UserError(f"method = {method!r}: params has no `{method}` section defining the variant")
    own = _section(raw.get(method), method)
    base, label = VARIANT_RUNS[method]
    given = own.get(base) or {}
    missing = [f.name for f in dataclasses.fields(SECTIONS[base]) if f.name not in given]
    if missing:
        raise UserError(f"{method}.{base}: must set every key (missing {', '.join(missing)}); the run does not read "
                        f"the shared `{base}` section")
    if given.get("variant") != label:
        raise UserError(f"{method}.{base}.variant = {given.get('variant')!r}: expected {label!r}")
    hook = _section(_overrides(raw, "overrides", dataset).get(method), f"overrides.{dataset}.{method}")
    return own, hook


def run_config(raw: dict[str, Any], dataset: str, method: str) -> RunConfig:
    """The validated configuration of one pretraining run of ``method`` on ``dataset``.

    Layers, later wins: the shared sections, the variant run's own section, ``overrides.<dataset>``,
    ``overrides.<dataset>.<run>``, an ablation run's key. ``<run>-seed<s>`` is ``<run>`` with seed s.
    """
    check_run(method)
    name, seed_override = split_seed(method)
    name, short_epochs = split_epochs(name)
    run = plain_run(method)
    ablation = ablation_keys(name)
    if short_epochs == 0:
        raise UserError(f"method = {method!r}: a short run -e<epochs> needs at least 1 epoch")
    short = {"pretrain": {"epochs": short_epochs, "keep_epochs": []}} if short_epochs else {}
    over = _overrides(raw, "overrides", dataset)
    unknown = sorted(set(over) - set(SECTIONS) - set(VARIANT_RUNS))
    if unknown:
        raise UserError(f"overrides.{dataset}.{unknown[0]}: unknown section; allowed: "
                        f"{', '.join((*SECTIONS, *VARIANT_RUNS))}")
    own, hook = variant_layers(raw, dataset, run)
    sections = {}
    for section, cls in SECTIONS.items():
        merged = raw.get(section) or {}
        for layer in (own, over, hook, {"mnclglf": ablation}, short):
            merged = deep_merge(merged, layer.get(section) or {})
        sections[section] = build(cls, merged, section)
    seed = seed_override if seed_override is not None else seeds(raw)[0]
    data_root = _coerce("data_root", raw.get("data_root", "data"), str, {})
    cfg = RunConfig(dataset=dataset, method=method, seed=seed, data_root=data_root, **sections)
    base = base_method(method)
    for name in ("mnclglf", "nnclr", "mocov2"):
        size = getattr(cfg, name).queue_size
        if base == name and size < cfg.pretrain.batch_size:
            raise UserError(f"{name}.queue_size = {size}: must be >= pretrain.batch_size ({cfg.pretrain.batch_size})")
    _check_run_shapes(cfg, raw)
    outside = [e for e in cfg.pretrain.keep_epochs if not 1 <= e <= cfg.pretrain.epochs]
    if outside:
        raise UserError(f"pretrain.keep_epochs: epoch {outside[0]} is not in 1..pretrain.epochs ({cfg.pretrain.epochs}); "
                        f"it would never be kept")
    if base == "mnclglf":
        mc = cfg.mnclglf
        label = VARIANT_RUNS[run][1] if run in VARIANT_RUNS else "paper"
        if mc.variant != label:
            raise UserError(f"mnclglf.variant = {mc.variant!r}: the run {method!r} is the {label!r} variant; the "
                            f"released reading is the run `mnclglf-released` (section `mnclglf-released` of params)")
        if mc.enqueue_view not in (mc.momentum_views[:2], mc.momentum_views[2:]):
            raise UserError(f"mnclglf.enqueue_view = {mc.enqueue_view!r}: must be one of the momentum views "
                            f"({mc.momentum_views[:2]}, {mc.momentum_views[2:]})")
    return cfg


def image_size(raw: dict[str, Any], dataset: str) -> int:
    """The side of ``dataset``'s prepared images (digits: ``digits.size``)."""
    return digits_config(raw).size if dataset == "digits" else SOURCES[dataset].image_size


def _check_run_shapes(cfg: RunConfig, raw: dict[str, Any]) -> None:
    """Values valid one by one that do not fit together: hue, the patch grid and the image side."""
    hue = cfg.augment.jitter[3]
    if hue > 0.5:
        raise UserError(f"augment.jitter[3] = {hue!r}: the hue strength must be in 0..0.5")
    base = base_method(cfg.method)
    if base in ("mnclglf", "fastmoco"):
        mc = getattr(cfg, base)
        side = cfg.augment.size or image_size(raw, cfg.dataset)
        if side % mc.grid:
            divisors = [g for g in range(1, side + 1) if side % g == 0]
            raise UserError(f"{base}.grid = {mc.grid}: must divide the {side}-px views of "
                            f"{cfg.dataset}; allowed: {', '.join(map(str, divisors))}")
        if mc.k > mc.grid ** 2:
            raise UserError(f"{base}.k = {mc.k}: at most grid² = {mc.grid ** 2} patches "
                            f"({base}.grid = {mc.grid})")


def linear_eval_config(raw: dict[str, Any], dataset: str, method: str | None = None) -> LinearEvalConfig:
    """The linear probe of ``method``'s encoder on ``dataset``.

    Layers, later wins: ``linear_eval``, the variant run's ``<run>.linear_eval``,
    ``linear_eval_overrides.<dataset>``, ``overrides.<dataset>.<run>.linear_eval``.
    """
    over = _overrides(raw, "linear_eval_overrides", dataset)
    own, hook = variant_layers(raw, dataset, plain_run(method)) if method else ({}, {})
    merged = raw.get("linear_eval") or {}
    for layer in (own.get("linear_eval") or {}, over, hook.get("linear_eval") or {}):
        merged = deep_merge(merged, layer)
    cfg = build(LinearEvalConfig, merged, "linear_eval")
    if cfg.test_resize and cfg.test_crop > cfg.test_resize:
        raise UserError(f"linear_eval.test_crop = {cfg.test_crop}: must be <= "
                        f"linear_eval.test_resize ({cfg.test_resize}); the centre crop is taken "
                        f"from the resized image")
    return cfg


def digits_config(raw: dict[str, Any]) -> DigitsConfig:
    return build(DigitsConfig, raw.get("digits"), "digits")


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML/JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def field_docs(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class SpeedConfig:
    """How the training step runs on its device (``mnclglf.train.fast.apply_speed``).

    ``auto`` is the device's default: on CUDA bf16 autocast with TF32, cudnn.benchmark,
    channels-last and the fused SGD (the mixed-precision setting of solo-learn and lightly,
    the layout and autotuning of airbench); on the CPU the plain fp32 eager step. The paper
    gives no precision; ``precision: tf32`` is the released code's arithmetic on its RTX 3090,
    ``precision: fp32`` strict IEEE fp32 (docs/FIDELITY.md, "Precision").
    """

    precision: str = pick("auto", ("auto", "bf16", "tf32", "fp32"),
                          "arithmetic of the step: bf16 = bf16 autocast + TF32, tf32 = fp32 weights and "
                          "activations with TF32 matmuls/convolutions, fp32 = strict IEEE fp32; "
                          "auto = bf16 on CUDA, fp32 on the CPU")
    channels_last: Any = pick("auto", ("auto", True, False),
                              "NHWC memory format for the networks and the views; auto = on CUDA only")
    cudnn_benchmark: Any = pick("auto", ("auto", True, False),
                                "let cuDNN time its convolution algorithms; auto = on CUDA only")
    fused_optimizer: Any = pick("auto", ("auto", True, False),
                                "the fused SGD kernel, where this torch has one; auto = on CUDA only")
    compile: bool = pick(False, (True, False),
                         "torch.compile the method's step; needs a C compiler and Python headers, "
                         "refused where they are missing (never reported on when it is not)")
    inference_mode_targets: bool = pick(False, (True, False),
                                        "run the no-gradient target passes under torch.inference_mode")


SECTIONS["speed"] = SpeedConfig  # registered here: SECTIONS is built above this class
TOP_LEVEL.add("speed")
