"""Where each stage reads and writes: the one layout ``dvc.yaml`` and the CLI share.

runs/<dataset>/<method>/pretrain/   encoder.pt, encoder_e<N>.pt, live/ (DVCLive curves)
runs/<dataset>/<method>/ckpt/       checkpoint.pt, encoder_e<N>.pt (DVC ``persist``: survives a rerun)
runs/<dataset>/<method>/linear/     live/ of the linear probe
runs/<dataset>/<method>/linear_epochs/e<N>/   live/ of the probe of encoder_e<N>.pt (Table 5)
metrics/<dataset>/<method>/         pretrain.json, linear.json (DVC metrics)
metrics/<dataset>/<method>/epochs/  linear_e<N>.json (Table 5)
"""

from __future__ import annotations

from pathlib import Path

RUNS = Path("runs")
METRICS = Path("metrics")
KEPT = "epochs"  # metrics/<dataset>/<method>/<KEPT>/: Table 5's probes of the intermediate encoders
KEPT_ENCODER = "encoder_e{}.pt"  # the encoder kept at a pretrain.keep_epochs epoch (format with the epoch)


def pretrain_dir(dataset: str, method: str) -> Path:
    return RUNS / dataset / method / "pretrain"


def ckpt_dir(dataset: str, method: str) -> Path:
    return RUNS / dataset / method / "ckpt"


def linear_dir(dataset: str, method: str) -> Path:
    return RUNS / dataset / method / "linear"


def metrics_dir(dataset: str, method: str) -> Path:
    return METRICS / dataset / method


def encoder_path(dataset: str, method: str) -> Path:
    return pretrain_dir(dataset, method) / "encoder.pt"


def kept_encoder_path(dataset: str, method: str, epoch: int) -> Path:
    return pretrain_dir(dataset, method) / KEPT_ENCODER.format(epoch)


def kept_linear_dir(dataset: str, method: str, epoch: int) -> Path:
    return RUNS / dataset / method / "linear_epochs" / f"e{epoch}"


def kept_metrics_dir(dataset: str, method: str) -> Path:
    return METRICS / dataset / method / KEPT


def kept_metrics_path(dataset: str, method: str, epoch: int) -> Path:
    return kept_metrics_dir(dataset, method) / f"linear_e{epoch}.json"
