"""scripts/slurm/submit.sh against a real single-node Slurm (tests/slurm/local_cluster.sh).

The synthetic project of test_lanes: a chain killed in its job stops only itself and the
tabulate job; the same submission afterwards runs only the missing chain and finishes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_lanes import SRC, make_project

REPO = Path(__file__).resolve().parents[1]
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")
missing = [d for d in DAEMONS if not shutil.which(d) and not Path("/usr/sbin", d).exists()]

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(bool(missing), reason=f"no Slurm here (missing {', '.join(missing)}; "
                       "apt-get install slurmctld slurmd slurm-client munge)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the test starts munged and slurmd: needs root"),
]


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("slurm")
    helper = REPO / "tests" / "slurm" / "local_cluster.sh"
    env = {**os.environ, "PATH": f"{os.environ['PATH']}:/usr/sbin"}
    try:
        subprocess.run([str(helper), "start", str(state)], env=env, check=True, timeout=120)
        yield {**env, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run([str(helper), "stop", str(state)], env=env, timeout=60)


def submit(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**env, "WAIT": "1", "MNCLGLF": f"{sys.executable} -m mnclglf", "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": f"{SRC}{os.pathsep}{env.get('PYTHONPATH', '')}"}
    return subprocess.run(["scripts/slurm/submit.sh", "table"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)


def test_submit_fails_one_chain_then_resubmission_finishes(cluster: dict[str, str],
                                                           tmp_path: Path) -> None:
    project = tmp_path / "tree"
    (project / "scripts" / "slurm").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "slurm" / "submit.sh", project / "scripts" / "slurm")
    make_project(project)
    (project / "kill-b").touch()
    first = submit(project, cluster)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "(array 0,1,2)" in first.stdout and "CANCELLED" in first.stderr
    assert (project / "eval-a.txt").exists() and (project / "eval-c.txt").exists()
    assert not (project / "table.txt").exists()
    gpus = {(project / f"train-{r}.txt").read_text().strip() for r in "ac"}
    assert gpus <= {"0", "1"}  # the fake gres's GPUs, as Slurm sets them
    (project / "kill-b").unlink()
    second = submit(project, cluster)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "(array 1)" in second.stdout  # only the chain that was missing
    ran = Counter((project / "ran.log").read_text().split())
    assert ran == {"data": 1, "prep": 1, "a-train": 1, "a-eval": 1, "b-train": 2, "b-eval": 1,
                   "c-train": 1, "c-eval": 1, "table": 1}
