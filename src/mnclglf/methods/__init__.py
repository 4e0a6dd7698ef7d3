"""Every method of Table 3, by the name ``params.yaml`` uses."""

from __future__ import annotations

import importlib

from mnclglf.config import RunConfig, base_method
from mnclglf.errors import UserError
from mnclglf.methods.base import Method, StepOutput

# name → "module:Class"; imported lazily so one method's import cost is not everyone's.
REGISTRY: dict[str, str] = {
    "mnclglf": "mnclglf.methods.mnclglf:MNCLGLF",
    "mocov2": "mnclglf.methods.mocov2:MoCoV2",
    "simsiam": "mnclglf.methods.simsiam:SimSiam",
    "simclr": "mnclglf.methods.simclr:SimCLR",
    "byol": "mnclglf.methods.byol:BYOL",
    "nnclr": "mnclglf.methods.nnclr:NNCLR",
    "fastmoco": "mnclglf.methods.fastmoco:FastMoCo",
    "supervised": "mnclglf.methods.supervised:Supervised",
}


def method_class(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise UserError(f"method = {name!r}: expected one of {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as exc:
        raise UserError(f"method {name!r} is not available in this build ({exc.name} missing)") from None


def build_method(cfg: RunConfig, num_classes: int) -> Method:
    """The method object of a run; variant runs (``mnclglf-released``) build their base method."""
    return method_class(base_method(cfg.method))(cfg, num_classes)


__all__ = ["Method", "StepOutput", "REGISTRY", "build_method", "method_class"]
