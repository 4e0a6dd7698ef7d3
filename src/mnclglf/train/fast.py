"""Fast paths of the training step, each behind a key of the ``speed`` section; none changes the maths.

:func:`apply_speed` mutates a :class:`~mnclglf.train.pretrain.Setup` in place, so that
``pretrain.train_step`` runs unchanged:

* ``channels_last`` — the networks' 4-D weights and every augmented view in NHWC;
* ``compile`` — ``torch.compile`` of the method's ``step`` (the forward passes and the loss),
  with Dynamo's per-frame eager fall-back on any compile error, and eager throughout where
  ``torch.compile`` is not available;
* ``bf16`` — bfloat16 autocast around ``step`` (the forward passes; backward follows the
  forward's dtypes); CUDA only, ignored on the CPU;
* ``fused_optimizer`` — the same SGD with ``fused=True`` where this torch has the kernel;
* ``inference_mode_targets`` — the no-gradient target passes (momentum copies, MNCLGLF's
  stop-gradient pass) under ``torch.inference_mode``; their outputs are cloned back to
  ordinary tensors so the loss can use them.

Every wrapper is a small object holding the method itself (never a closure over it), so
``copy.deepcopy(method)`` — the loop's collapse probe — rebinds it to the copy.
``tests/test_fast.py`` checks each path's loss and gradients against the plain step.
"""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mnclglf.config import SpeedConfig

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
    object and rebinds ``method``) runs on the copy's weights (at most one recompile).
    """

    def __init__(self, method: nn.Module, fn: Any) -> None:
        self.method = method
        self.fn = fn

    def __call__(self, views: list[torch.Tensor], labels: torch.Tensor | None, gen: torch.Generator) -> Any:
        import torch._dynamo

        with torch._dynamo.config.patch(suppress_errors=True):  # a frame that fails to compile runs eagerly
            return self.fn(self.method, views, labels, gen)


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
    """Whether ``torch.compile`` can be tried here, and why not."""
    try:
        import torch._dynamo as dynamo
    except Exception as exc:  # pragma: no cover - torch built without dynamo
        return False, f"torch._dynamo unavailable ({exc})"
    if not dynamo.is_dynamo_supported():
        return False, "torch.compile is not supported on this Python/platform"
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


def apply_speed(s: Setup, speed: SpeedConfig | None = None) -> Setup:
    """Turn on the fast paths of ``speed`` (default: ``s.cfg.speed``) on ``s``; returns ``s``.

    Idempotent. What was done is recorded in ``s.speed_applied`` (read it with
    :func:`applied`): ``{path: "on" | "off" | "skipped: <reason>"}``.
    """
    if getattr(s, APPLIED_ATTR, None) is not None:
        return s
    speed = speed if speed is not None else getattr(s.cfg, "speed", SpeedConfig())
    status: dict[str, str] = {}
    method = s.method

    if speed.channels_last:
        method.to(memory_format=torch.channels_last)
        s.augment = ChannelsLastAugment(s.augment)
        status["channels_last"] = "on"
    else:
        status["channels_last"] = "off"

    if speed.fused_optimizer:
        new, why = fused_sgd(s.optimizer, s.device)
        if new is None:
            status["fused_optimizer"] = f"skipped: {why}"
        else:
            s.optimizer = new
            status["fused_optimizer"] = "on"
    else:
        status["fused_optimizer"] = "off"

    if speed.inference_mode_targets:
        for target in _target_modules(method):
            target.forward = InferenceForward(target)  # type: ignore[method-assign]
        if hasattr(type(method), "local_embeddings"):
            method.local_embeddings = InferenceMethodCall(method, "local_embeddings")  # type: ignore[method-assign]
        status["inference_mode_targets"] = "on"
    else:
        status["inference_mode_targets"] = "off"

    step: Any = method.step
    if speed.compile:
        ok, why = compile_available()
        if ok:
            try:
                step = CompiledStep(method, torch.compile(type(method).step))
                status["compile"] = "on (eager fall-back per frame on compile errors)"
            except Exception as exc:  # noqa: BLE001 - any failure means: stay eager
                warnings.warn(f"speed.compile: torch.compile failed ({exc}); running eagerly", stacklevel=2)
                status["compile"] = f"skipped: {exc}"
        else:
            status["compile"] = f"skipped: {why}"
    else:
        status["compile"] = "off"

    if speed.bf16:
        if s.device.type == "cuda":
            step = AutocastStep(step, "cuda")
            status["bf16"] = "on"
        else:
            status["bf16"] = f"skipped: bf16 autocast is for CUDA only (device {s.device.type})"
    else:
        status["bf16"] = "off"

    if not inspect.ismethod(step):  # a wrapper was stacked on the class's step
        method.step = step  # type: ignore[method-assign]  # instance attribute shadows the class's step
    setattr(s, APPLIED_ATTR, status)
    return s


def applied(s: Setup) -> dict[str, str]:
    """What :func:`apply_speed` did to ``s`` ({} if it has not run)."""
    return dict(getattr(s, APPLIED_ATTR, None) or {})
