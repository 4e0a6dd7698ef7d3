"""`mnclglf lanes` on a tiny synthetic DVC project of shell stages: plan, pinning, failure, resume
(and `mnclglf status` reading the same files)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mnclglf.lanes import split
from mnclglf.status import stage_rows

SRC = Path(__file__).resolve().parents[1] / "src"
RUNS = ("a", "b", "c")


def synthetic_dvc_yaml() -> dict:
    """data -> prep -> train@{a,b,c} -> eval@{a,b,c} -> table; train@X is SIGKILLed
    if kill-X exists."""
    return {"stages": {
        "data": {"cmd": "echo data >> ran.log && echo d > data.txt", "outs": ["data.txt"]},
        "prep": {"cmd": "echo prep >> ran.log && cat data.txt > prep.txt", "deps": ["data.txt"],
                 "outs": ["prep.txt"]},
        "train": {"foreach": list(RUNS), "do": {
            "cmd": "echo ${item}-train >> ran.log && (test ! -e kill-${item} || kill -9 $$) && "
                   "sleep 0.3 && echo $CUDA_VISIBLE_DEVICES > train-${item}.txt",
            "deps": ["prep.txt"], "outs": ["train-${item}.txt"]}},
        "eval": {"foreach": list(RUNS), "do": {
            "cmd": "echo ${item}-eval >> ran.log && cat train-${item}.txt > eval-${item}.txt",
            "deps": ["train-${item}.txt"], "outs": ["eval-${item}.txt"]}},
        "table": {"cmd": "echo table >> ran.log && cat eval-*.txt > table.txt",
                  "deps": [f"eval-{r}.txt" for r in RUNS], "outs": ["table.txt"]},
    }}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_project(tmp_path)
    return tmp_path


def make_project(root: Path) -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump(synthetic_dvc_yaml(), sort_keys=False))


def lanes(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, "-m", "mnclglf", "lanes", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


def test_split_peels_shared_stages_and_keeps_chains_whole() -> None:
    deps = {"data": set(), "prep": {"data"}, "table": {f"eval@{r}" for r in RUNS}, "lone": {"data"},
            **{f"train@{r}": {"prep"} for r in RUNS}, **{f"eval@{r}": {f"train@{r}"} for r in RUNS},
            **{f"epochs@{r}": {f"train@{r}"} for r in RUNS}}
    shared, chains, final = split(deps, ["table"])
    assert shared == ["data", "prep"] and final == ["table"]
    assert sorted(chains) == [[f"train@{r}", f"eval@{r}"] for r in RUNS]
    shared, chains, final = split(deps)  # every sink: each train keeps both of its evaluations
    assert shared == ["data", "prep"] and final == ["table"]
    assert sorted(chains) == [["lone"], *[[f"train@{r}", f"epochs@{r}", f"eval@{r}"] for r in RUNS]]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # dvc's own, from its index
def test_killed_lane_stops_only_itself_and_rerun_finishes(project: Path, monkeypatch) -> None:
    (project / "kill-b").touch()
    first = lanes(project, "--target", "table", "--gpus", "7,9")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "1 of 3 chains did not finish" in first.stderr and "train@b -> eval@b" in first.stderr
    assert (project / "eval-a.txt").exists() and (project / "eval-c.txt").exists()
    assert not (project / "table.txt").exists()
    monkeypatch.chdir(project)  # `mnclglf status` reads the same files
    states = {r.stage: r.state for r in stage_rows("table")[0]}
    assert states == {"data": "done", "prep": "done", "train@a": "done", "eval@a": "done",
                      "train@b": "failed", "eval@b": "waiting", "train@c": "done", "eval@c": "done",
                      "table": "waiting"}
    assert {(project / f"train-{r}.txt").read_text().strip() for r in "ac"} <= {"7", "9"}
    (project / "kill-b").unlink()
    second = lanes(project, "--target", "table", "--gpus", "7,9")
    assert second.returncode == 0, second.stdout + second.stderr
    ran = Counter((project / "ran.log").read_text().split())
    assert ran == {"data": 1, "prep": 1, "a-train": 1, "a-eval": 1, "b-train": 2, "b-eval": 1,
                   "c-train": 1, "c-eval": 1, "table": 1}
    status = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status"], cwd=project,
                            capture_output=True, text=True, check=True)
    assert "up to date" in status.stdout
