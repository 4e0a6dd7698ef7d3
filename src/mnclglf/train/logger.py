"""Per-epoch metric logging through DVCLive, rebuilt from the checkpoint's history on resume.

Rewriting the whole history on every (re)start keeps the curves free of duplicated
epochs after a crash between a log line and the next checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class EpochLogger:
    def __init__(self, directory: Path, history: list[dict[str, float]]) -> None:
        from dvclive import Live

        self.live = Live(dir=str(directory), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
        for row in history:
            self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
        self.live.step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch":
                self.live.log_metric(key, value)
        self.live.next_step()

    def log(self, row: dict[str, Any]) -> None:
        self._write(row)

    def close(self) -> None:
        self.live.end()
