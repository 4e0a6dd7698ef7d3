"""How the training step runs on its device, each choice a key of the ``speed`` section.

None changes the maths beyond rounding; ``auto`` picks the device's default (on CUDA every
path below but ``compile`` and ``inference_mode_targets``; on the CPU none):

* ``precision`` — ``bf16``: bfloat16 autocast around ``step`` (backward follows the forward's
  dtypes) with TF32 matmuls and convolutions; ``tf32``: fp32 with TF32; ``fp32``: strict IEEE
  fp32 (TF32 off, also for the convolutions PyTorch runs in TF32 by default);
* ``channels_last`` — the networks' 4-D weights and every augmented view in NHWC;
* ``cudnn_benchmark`` — cuDNN times its convolution algorithms for each new shape;
* ``fused_optimizer`` — the same SGD with ``fused=True`` where this torch has the kernel;
* ``compile`` — ``torch.compile`` of the method's ``step``; refused with a one-line error
  where inductor cannot build kernels (no C compiler or Python headers), and a compile
  failure stops the run: compile is never reported on while the step runs eagerly;
* ``inference_mode_targets`` — the no-gradient target passes (momentum copies, MNCLGLF's
  stop-gradient pass) under ``torch.inference_mode``; their outputs are cloned back to
  ordinary tensors so the loss can use them.

:func:`apply_speed` mutates a :class:`~mnclglf.train.pretrain.Setup` in place, so that
``pretrain.train_step`` runs unchanged. Every wrapper is a small object holding the method
itself (never a closure over it), so ``copy.deepcopy(method)`` — the loop's collapse probe —
rebinds it to the copy. ``tests/test_fast.py`` checks each path's loss and gradients against
the plain step.
"""

from __future__ import annotations

import inspect
import os
import shutil
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mnclglf.config import SpeedConfig
from mnclglf.errors import UserError

if TYPE_CHECKING:  # pretrain imports this module; no import cycle at run time
    from mnclglf.train.pretrain import Setup

APPLIED_ATTR = "speed_applied"


# -- wrappers ------------------------------------------------------------------------------
class ChannelsLastAugment:
    """The setup's augmentation, returning its views in channels-last memory format."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.inner(batch, gen).contiguous(memory_format=torch.channels_last)

    def __getattr__(self, name: str) -> Any:  # size, normalizer, cfg … of the wrapped augmentation
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class CompiledStep:
    """``torch.compile`` of the method class's ``step`` function, called with the method as ``self``.

    The compiled function is unbound, so a deep copy of the method (which copies this
    object and rebinds ``method``) runs on the copy's weights (at most one recompile). A
    compile failure is a :class:`UserError`: the run stops rather than go on eagerly.
    """

    def __init__(self, method: nn.Module, fn: Any) -> None:
        self.method = method
        self.fn = fn

    def __call__(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> Any:
        from torch._dynamo.exc import BackendCompilerFailed

        try:
            return self.fn(self.method, views, labels, gen)
        except BackendCompilerFailed as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"speed.compile = true: torch.compile failed ({first[:300]}); "
                            "set speed.compile: false") from None


class AutocastStep:
    """``step`` under ``torch.autocast(device_type, bfloat16)``; ``inner`` is a bound method or a wrapper."""

    def __init__(self, inner: Any, device_type: str) -> None:
        self.inner = inner
        self.device_type = device_type

    def __call__(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> Any:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.inner(views, labels, gen)


class InferenceForward:
    """A module's own ``forward`` under ``torch.inference_mode``, output cloned to an ordinary tensor.

    Set as the module's instance ``forward``; only for modules that are always called
    without gradient (momentum copies). In-place BatchNorm running-statistic updates of
    ordinary buffers are allowed inside inference mode.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            out = type(self.module).forward(self.module, *args, **kwargs)
        return _clone_out(out)


class InferenceMethodCall:
    """A no-gradient method of the method object (``local_embeddings``) under ``torch.inference_mode``."""

    def __init__(self, method: nn.Module, name: str) -> None:
        self.method = method
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            out = getattr(type(self.method), self.name)(self.method, *args, **kwargs)
        return _clone_out(out)


def _clone_out(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone_out(o) for o in out)
    return out


# -- the fast paths ---------------------------------------------------------------------------
def compile_available() -> tuple[bool, str]:
    """Whether ``torch.compile`` can build kernels here (Dynamo, a C compiler, Python headers), and why not."""
    try:
        import torch._dynamo as dynamo
    except Exception as exc:  # pragma: no cover - torch built without dynamo
        return False, f"torch._dynamo unavailable ({exc})"
    if not dynamo.is_dynamo_supported():
        return False, "torch.compile is not supported on this Python/platform"
    compiler = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if not compiler or not shutil.which(compiler):
        return False, "no C++ compiler (inductor builds its kernels with one; install g++)"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        return False, f"no Python headers ({headers} is missing; install python3.11-dev)"
    return True, ""


def fused_sgd(optimizer: torch.optim.Optimizer, device: torch.device) -> tuple[torch.optim.Optimizer | None, str]:
    """The same SGD (groups, hyper-parameters, state) with ``fused=True``; None and why where unavailable."""
    if not isinstance(optimizer, torch.optim.SGD):
        return None, f"the optimiser is {type(optimizer).__name__}, not SGD"
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        supported = _get_fused_kernels_supported_devices()
    except Exception:  # pragma: no cover - older torch
        supported = ["cuda"]
    if device.type not in supported:
        return None, f"no fused SGD kernel for {device.type} in torch {torch.__version__}"
    groups = [{k: v for k, v in g.items() if k not in ("foreach", "fused")} for g in optimizer.param_groups]
    d = optimizer.defaults
    new = torch.optim.SGD(groups, lr=d["lr"], momentum=d["momentum"], dampening=d["dampening"],
                          weight_decay=d["weight_decay"], nesterov=d["nesterov"], maximize=d.get("maximize", False),
                          fused=True)
    if optimizer.state:
        new.load_state_dict(optimizer.state_dict())  # restores the groups' flags too: set them back
        for g in new.param_groups:
            g["fused"], g["foreach"] = True, False
    return new, ""


def _target_modules(method: nn.Module) -> list[nn.Module]:
    return [target for _, target in getattr(method, "_momentum_pairs", [])]


def resolve(speed: SpeedConfig, device: torch.device) -> dict[str, Any]:
    """``speed`` with every ``auto`` replaced by the default of ``device`` (CUDA: on, CPU: off)."""
    cuda = device.type == "cuda"
    precision = speed.precision if speed.precision != "auto" else ("bf16" if cuda else "fp32")
    on = {k: (cuda if v == "auto" else v) for k, v in vars(speed).items() if k != "precision"}
    return {"precision": precision, **on}


def set_precision(precision: str, device: torch.device) -> str:
    """Set the process's CUDA float32 arithmetic for ``precision``; returns what is in force."""
    if device.type != "cuda":
        return "bf16 autocast (CPU)" if precision == "bf16" else "fp32"
    mode = "ieee" if precision == "fp32" else "tf32"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
    return {"bf16": "bf16 autocast + TF32", "tf32": "TF32", "fp32": "strict fp32"}[precision]


def set_backends(precision: str, cudnn_benchmark: bool, device: torch.device) -> dict[str, str]:
    """The process-wide settings of a stage: float32 arithmetic and cuDNN autotuning; their status."""
    status = {"precision": set_precision(precision, device), "cudnn_benchmark": "off"}
    if cudnn_benchmark and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        status["cudnn_benchmark"] = "on"
    elif cudnn_benchmark:
        status["cudnn_benchmark"] = f"skipped: cuDNN is for CUDA only (device {device.type})"
    return status


def apply_speed(s: Setup, speed: SpeedConfig | None = None) -> Setup:
    """Turn on the fast paths of ``speed`` (default: ``s.cfg.speed``) on ``s``; returns ``s``.

    Idempotent. What was done is recorded in ``s.speed_applied`` (read it with
    :func:`applied`): ``{path: "on" | "off" | "skipped: <reason>"}``, and ``precision``.
    """
    if getattr(s, APPLIED_ATTR, None) is not None:
        return s
    want = resolve(speed if speed is not None else getattr(s.cfg, "speed", SpeedConfig()), s.device)
    status = set_backends(want["precision"], want["cudnn_benchmark"], s.device)
    method = s.method

    status["channels_last"] = "on" if want["channels_last"] else "off"
    if want["channels_last"]:
        method.to(memory_format=torch.channels_last)
        s.augment = ChannelsLastAugment(s.augment)

    status["fused_optimizer"] = "off"
    if want["fused_optimizer"]:
        new, why = fused_sgd(s.optimizer, s.device)
        if new is None:
            status["fused_optimizer"] = f"skipped: {why}"
        else:
            s.optimizer = new
            status["fused_optimizer"] = "on"

    status["inference_mode_targets"] = "on" if want["inference_mode_targets"] else "off"
    if want["inference_mode_targets"]:
        for target in _target_modules(method):
            target.forward = InferenceForward(target)  # type: ignore[method-assign]
        if hasattr(type(method), "local_embeddings"):
            method.local_embeddings = InferenceMethodCall(method, "local_embeddings")  # type: ignore[method-assign]

    step: Any = method.step
    status["compile"] = "off"
    if want["compile"]:
        ok, why = compile_available()
        if not ok:
            raise UserError(f"speed.compile = true but torch.compile cannot work here: {why}; "
                            "set speed.compile: false")
        step = CompiledStep(method, torch.compile(type(method).step))
        status["compile"] = "on"

    if want["precision"] == "bf16":
        step = AutocastStep(step, s.device.type)

    if not inspect.ismethod(step):  # a wrapper was stacked on the class's step
        method.step = step  # type: ignore[method-assign]  # instance attribute shadows the class's step
    setattr(s, APPLIED_ATTR, status)
    return s


def start_line(stage: str, device: torch.device, status: dict[str, str]) -> str:
    """The one line a stage prints when it starts: where it runs, in what arithmetic, which fast paths."""
    if device.type == "cuda":
        i = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(i)
        where = f"cuda:{i} ({torch.cuda.get_device_name(i)}, sm_{major}{minor})"
    else:
        where = f"cpu ({torch.get_num_threads()} threads)"
    paths = {k: v for k, v in status.items() if k != "precision"}
    on = [k for k, v in paths.items() if v == "on"]
    skipped = [f"{k} ({v[len('skipped: '):]})" for k, v in paths.items() if v.startswith("skipped")]
    line = (f"{stage}: {where}, precision {status.get('precision', 'fp32')}, "
            f"fast paths {', '.join(on) if on else 'none'}")
    return line + (f"; not applied: {', '.join(skipped)}" if skipped else "")


def applied(s: Setup) -> dict[str, str]:
    """What :func:`apply_speed` did to ``s`` ({} if it has not run)."""
    return dict(getattr(s, APPLIED_ATTR, None) or {})
