"""No training step waits on the device: zero host↔device syncs or copies per step, every method.

The step runs for real, forward, backward, optimiser and queue push, on tensors of an
accelerator-like device, under two recording modes:

* a ``TorchDispatchMode`` records every aten call that makes the host wait on the device
  or moves data between them: ``_local_scalar_dense`` (``.item()``, ``float(t)``,
  ``bool(t)``, ``if t:``, indexing with a 0-dim tensor), ``nonzero`` and the other ops of a
  data-dependent shape (a boolean-mask index among them), ``_to_copy``/``copy_`` between
  the host and the device, and a host tensor as an operand of a device op (an implicit
  host-to-device copy, e.g. a CPU index);
* a ``TorchFunctionMode`` records what aten never sees: ``torch.tensor(data, device=…)``
  and indexing with a Python list, both copies of host data made inside the constructor.

The device is PyTorch's ``meta`` device rather than a ``FakeTensorMode`` CUDA device:
the fake CUDA tensors run the forward pass on this CPU-only machine, but backward does not
(the autograd engine asks the CUDA driver for a primary context), while meta tensors run
all of the step through the same shape-only kernels that fake tensors use. The project's
code takes the same path on meta as on a GPU (its only device tests in the step are
``device.type == "cpu"`` for the augmentation's subset path and ``"cuda"`` for the CUDA
defaults of ``speed``: bf16 autocast, TF32, cudnn.benchmark, channels-last and the fused SGD,
which resolve to off on meta and are not covered here; on a GPU the bench, and so
``make gpu-check``, runs a step with them under ``torch.cuda.set_sync_debug_mode("error")``);
torch's SGD and gradient clipping take their per-tensor
loops on meta where CUDA gets their foreach kernels, neither reading anything back. A ``torch.Generator`` cannot be made for meta, so the
augmentation generator is a CPU generator whose ``device`` reads ``meta``: the draws made
with ``device=gen.device`` land on the device, as with a CUDA generator.

The data and labels are on the device before the step (the loop's design: the whole split
there as uint8). One warm-up step runs first, its events discarded, so that what a step
makes once per device (``augment._sector_planes``, ``ops.combine``'s averaging matrices, the
optimiser's state) is made; the recorded step then must be silent, and the recorded epoch
may copy exactly one thing, its permutation, whatever its number of steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from mnclglf import config, ops
from mnclglf.data import augment as augment_module
from mnclglf.data.augment import CropFlipAugment, EvalTransform, Normalizer
from mnclglf.models import ResNet18
from mnclglf.train import linear_eval, pretrain
from mnclglf.train.lars import LARS

ROOT = Path(__file__).resolve().parents[1]
DEVICE = torch.device("meta")
N, SIZE, STEPS, CLASSES = 8, 16, 2, 4
TINY = {"model": {"width": 0.125, "proj_hidden": 32, "proj_out": 32, "pred_hidden": 16},
        "pretrain": {"batch_size": N, "threads": 1, "device": "cpu"},
        "mnclglf": {"queue_size": 4 * N}, "mocov2": {"queue_size": 4 * N, "bn_groups": 2},
        "nnclr": {"queue_size": 4 * N}}
RELEASED = {**{k: TINY[k] for k in ("model", "pretrain", "mnclglf")}, "augment": {"size": SIZE}}
RAW = config.deep_merge(config.read_params(ROOT / "params.yaml"),
                        {"overrides": {"digits": {**TINY, "mnclglf-released": RELEASED}}})
# Every method of Table 3, the released variant and the one-embedding ablation (``pick_one``).
RUNS = ("mnclglf", "mnclglf-released", "mnclglf-one", "nnclr", "mocov2", "simclr", "byol",
        "simsiam", "fastmoco", "supervised")
aten = torch.ops.aten
DATA_DEPENDENT = {aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim,
                  aten.unique_consecutive, aten.bincount, aten.repeat_interleave, aten.argwhere}
INDEX_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}


class DeviceGenerator(torch.Generator):
    """A CPU generator that says it is on the device, as the loop's augmentation generator is."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return DEVICE


def _on_device(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == DEVICE.type


def _host(t: Any) -> bool:
    """A host tensor that is data, not a scalar (a CPU 0-dim operand is read on the host)."""
    return isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0


def _shape(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {t.dtype}"


class AtenTraffic(TorchDispatchMode):
    """Records the aten calls that sync or copy; stand-in results let the step go on (all count)."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet is aten._local_scalar_dense and _on_device(args[0]):
            self.events.append(f"D2H: {packet} (a device tensor read as a Python number)")
            return False if args[0].dtype == torch.bool else 0
        if packet is aten._to_copy:
            dst = torch.device(kwargs.get("device") or args[0].device)
            if dst.type != args[0].device.type:
                way = "H2D" if dst.type == DEVICE.type else "D2H"
                self.events.append(f"{way}: {packet} of {_shape(args[0])}")
                if _on_device(args[0]):  # a meta tensor has no data to copy out: a stand-in
                    return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            return func(*args, **kwargs)
        if packet is aten.copy_ and args[0].device.type != args[1].device.type:
            way = "H2D" if _on_device(args[0]) else "D2H"
            self.events.append(f"{way}: {packet} of {_shape(args[1])}")
            return func(*args, **kwargs)
        if packet in DATA_DEPENDENT:
            self.events.append(f"D2H: {packet} (its output size is read back)")
            if packet is not aten.nonzero:
                raise AssertionError(f"no stand-in for {packet}; events so far: {self.events}")
            return torch.empty(0, args[0].dim(), dtype=torch.long, device=args[0].device)
        if packet in INDEX_OPS and any(map(_is_mask, args[1])):
            self.events.append(f"D2H: {packet} with a boolean mask (its nonzero is read back)")
            empty = torch.empty(0, dtype=torch.long, device=args[0].device)
            idx = [j for i in args[1] for j in ([empty] * i.dim() if _is_mask(i) else [i])]
            args = (args[0], idx, *args[2:])
        leaves = pytree.tree_leaves((args, kwargs))
        if any(map(_on_device, leaves)) and any(map(_host, leaves)):
            hosts = ", ".join(_shape(t) for t in leaves if _host(t))
            self.events.append(f"H2D: host tensor {hosts} as an operand of {packet}")
            moved = pytree.tree_map(lambda t: t.to(DEVICE) if _host(t) else t, (args, kwargs))
            args, kwargs = moved
        return func(*args, **kwargs)


def _is_mask(i: Any) -> bool:
    return isinstance(i, torch.Tensor) and i.dtype == torch.bool


def _python_sequence(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, list) or type(p).__module__ == "numpy" for p in parts)


class PythonData(TorchFunctionMode):
    """Records host data turned into device tensors inside a constructor (invisible to aten)."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        constructors = (torch.tensor, torch.as_tensor, torch.asarray)
        if func in constructors and not isinstance(args[0], torch.Tensor):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == DEVICE.type:
                self.events.append(f"H2D: torch.{func.__name__} of Python data on the device")
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and _on_device(args[0]) \
                and _python_sequence(args[1]):
            self.events.append(f"H2D: Tensor.{func.__name__} with a Python list index")
        elif func is torch.Tensor.tolist and _on_device(args[0]):
            self.events.append("D2H: Tensor.tolist")
            return torch.zeros(args[0].shape, dtype=args[0].dtype).tolist()
        return func(*args, **kwargs)


@contextlib.contextmanager
def recorded() -> Iterator[list[str]]:
    """The host↔device events of the code run inside, in order."""
    events: list[str] = []
    with PythonData(events), AtenTraffic(events):
        yield events


@pytest.fixture(autouse=True)
def fresh_device_caches() -> Iterator[None]:
    """The per-device caches must not keep meta tensors for other tests (nor start with any)."""
    caches = [augment_module._sector_planes, *getattr(ops, "DEVICE_CACHES", ())]
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


def _to_device(t: torch.Tensor) -> torch.Tensor:
    return t.to(DEVICE)


def device_setup(run: str) -> pretrain.Setup:
    """The project's own ``pretrain.setup`` on the CPU, then moved to the device."""
    cfg = config.run_config(RAW, "digits", run)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (STEPS * N, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, CLASSES, (STEPS * N,), generator=gen)
    s = pretrain.setup(cfg, images, labels, CLASSES)
    s.method.to(DEVICE)
    s.optimizer = pretrain.build_optimizer(s.cfg, s.method)  # over the device's parameters
    s.images, s.labels, s.device = _to_device(s.images), _to_device(s.labels), DEVICE
    norm = s.augment.normalizer
    norm.mean, norm.std = _to_device(norm.mean), _to_device(norm.std)
    s.gens["augment"] = DeviceGenerator().manual_seed(1)
    return s


@pytest.mark.parametrize("run", RUNS)
def test_train_step_has_no_host_sync(run: str) -> None:
    """``train_step`` on a device batch: forward, backward, optimiser, push; no sync, no copy."""
    s = device_setup(run)
    with recorded():  # warm-up: one-off per-device caches (and no failure on a sync)
        pretrain.train_step(s, torch.arange(N, device=DEVICE), 0, 10)
    with recorded() as events:
        pretrain.train_step(s, torch.arange(N, 2 * N, device=DEVICE), 1, 10)
    assert events == []


@pytest.mark.parametrize("run", RUNS)
def test_epoch_copies_only_its_permutation(run: str) -> None:
    """The loop's epoch: its order reaches the device as one copy, the logged sums stay there."""
    s = device_setup(run)
    total = 2 * STEPS
    with recorded():  # warm-up, as above
        pretrain.train_step(s, torch.arange(N, device=DEVICE), 0, total)
    with recorded() as events:
        sums = pretrain.run_epoch(s, 2, STEPS, total)
    assert events == [f"H2D: aten._to_copy of ({STEPS * N},) torch.int64"]
    assert sums and all(_on_device(v) for v in sums.values())


def probe(cached: bool) -> linear_eval.Probe:
    """A linear-eval probe of a tiny random encoder, its data on the device."""
    torch.manual_seed(0)
    encoder = ResNet18("cifar", 0.125).eval().requires_grad_(False).to(DEVICE)
    head = nn.Linear(encoder.out_dim, CLASSES).to(DEVICE)
    norm = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), DEVICE)
    x = torch.randint(0, 256, (STEPS * N - 3, 3, SIZE, SIZE), dtype=torch.uint8, device=DEVICE)
    y = torch.randint(0, CLASSES, (x.shape[0],), device=DEVICE)
    feats = linear_eval.encode(encoder, x, EvalTransform(norm, SIZE)) if cached else None
    optimizer = LARS(head.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-6,
                     trust_coefficient=0.001)
    gens = {"order": torch.Generator().manual_seed(0), "augment": DeviceGenerator().manual_seed(1)}
    augment = CropFlipAugment((0.2, 1.0), 0.5, norm, SIZE)
    return linear_eval.Probe(encoder, head, optimizer, augment, x, y, feats, gens)


@pytest.mark.parametrize("cached", [False, True], ids=["augmented", "cached-features"])
def test_linear_eval_epoch_copies_only_its_permutation(cached: bool) -> None:
    """A linear-eval epoch (its last batch short): one copy of the order, the sums on the device."""
    p = probe(cached)
    lr = 0.1
    with recorded():  # warm-up: the optimiser's state, the augmentation's caches
        linear_eval.train_epoch(p, N, [lr] * STEPS)
    with recorded() as events:
        loss_sum, correct = linear_eval.train_epoch(p, N, [lr] * STEPS)
    assert events == [f"H2D: aten._to_copy of ({STEPS * N - 3},) torch.int64"]
    assert _on_device(loss_sum) and _on_device(correct)


# -- the recorder itself --------------------------------------------------------------------
def test_the_recorder_sees_each_kind_of_sync() -> None:
    x = torch.zeros(4, 3, device=DEVICE)
    with recorded() as events:
        x.sum().item()
        bool(x.sum() > 0)
        x[x[:, 0] > 0]
        x[torch.zeros((), dtype=torch.long, device=DEVICE)]
        x[torch.arange(2)]
        x[[0, 1]]
        torch.tensor([1.0, 2.0], device=DEVICE)
        torch.arange(3).to(DEVICE)
        x.cpu()
        x.tolist()
        F.normalize(x, dim=1)  # ordinary device work: nothing
        x[torch.arange(2, device=DEVICE)] = 1.0
        torch.zeros(3, device=DEVICE).nonzero()
    assert events == [
        "D2H: aten._local_scalar_dense (a device tensor read as a Python number)",
        "D2H: aten._local_scalar_dense (a device tensor read as a Python number)",
        "D2H: aten.index with a boolean mask (its nonzero is read back)",
        "D2H: aten._local_scalar_dense (a device tensor read as a Python number)",
        "H2D: host tensor (2,) torch.int64 as an operand of aten.index",
        "H2D: Tensor.__getitem__ with a Python list index",
        "H2D: torch.tensor of Python data on the device",
        "H2D: aten._to_copy of (3,) torch.int64",
        "D2H: aten._to_copy of (4, 3) torch.float32",
        "D2H: Tensor.tolist",
        "D2H: aten.nonzero (its output size is read back)",
    ]
