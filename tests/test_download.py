"""The download/prepare layer: exact conversion of the official formats, refusal of bad archives, resumable HTTP."""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from fixtures.official_archives import (
    Built,
    build_cifar10,
    build_cifar100,
    build_tinyimagenet,
    cifar_evil_pickle,
    flipped_byte,
    py2_pickle,
    truncated,
    unsafe_tar,
    unsafe_zip,
    zip_lying_size,
    zip_many_members,
    zip_of_zeros,
)

from mnclglf.cli import main
from mnclglf.data.archives import RestrictedUnpickler, extract, load_pickle
from mnclglf.data.download import md5_file
from mnclglf.data.prepare import prepare
from mnclglf.data.sources import MIRROR_ENV, SOURCES
from mnclglf.data.store import load_meta, load_split
from mnclglf.errors import UserError


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """One miniature official archive per dataset, shared by the module (they are read-only)."""
    d = tmp_path_factory.mktemp("archives")
    return {"cifar10": build_cifar10(d), "cifar100": build_cifar100(d), "tinyimagenet": build_tinyimagenet(d)}


def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    """``mnclglf download ARGS --quiet`` from an empty working directory (no params.yaml)."""
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    return CliRunner().invoke(main, ["download", *args, "--quiet"])


def assert_split(root: Path, dataset: str, split: str, want_images: np.ndarray, want_labels: np.ndarray) -> None:
    images, labels = load_split(root, dataset, split)
    assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3
    assert labels.dtype == torch.int64 and labels.shape == (images.shape[0],)
    np.testing.assert_array_equal(images.numpy(), want_images)
    np.testing.assert_array_equal(labels.numpy(), want_labels)


def assert_clean(root: Path, dataset: str) -> None:
    """No output directory, no staging leftovers, nothing written outside the root."""
    assert not (root / dataset).exists()
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []
    assert leftovers == []


# --- round trips -------------------------------------------------------------------------------


def test_cifar10_round_trip_is_pixel_exact(tmp_path: Path, archives: dict[str, Built]) -> None:
    b = archives["cifar10"]
    out = prepare("cifar10", tmp_path, source=str(b.archive), md5=b.md5, progress=False)
    assert out == tmp_path / "cifar10"
    assert_split(tmp_path, "cifar10", "train", b.train.images, b.train.labels)
    assert_split(tmp_path, "cifar10", "test", b.test.images, b.test.labels)
    meta = load_meta(tmp_path, "cifar10")
    assert meta["classes"] == b.classes
    assert meta["counts"] == {"train": 20, "test": 4}
    assert meta["image_size"] == [32, 32]
    assert meta["source_md5"] == b.md5 and meta["source"] == str(b.archive.resolve())
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test.npz", "train.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10"], "raw tree or staging left behind"


def test_cifar100_round_trip_keeps_fine_and_coarse_labels(tmp_path: Path, archives: dict[str, Built]) -> None:
    b = archives["cifar100"]
    out = prepare("cifar100", tmp_path, source=str(b.archive), md5=b.md5, progress=False)
    assert_split(tmp_path, "cifar100", "train", b.train.images, b.train.labels)
    assert_split(tmp_path, "cifar100", "test", b.test.images, b.test.labels)
    meta = load_meta(tmp_path, "cifar100")
    assert meta["classes"] == b.classes and meta["coarse_classes"] == b.extra["coarse_classes"]
    for split in ("train", "test"):
        coarse = np.load(out / meta["coarse_labels"][split], allow_pickle=False)
        assert coarse.dtype == np.int64
        np.testing.assert_array_equal(coarse, b.extra[f"coarse_{split}"])


def test_tinyimagenet_round_trip_and_val_reorganisation(tmp_path: Path, archives: dict[str, Built]) -> None:
    b = archives["tinyimagenet"]
    out = prepare("tinyimagenet", tmp_path, source=str(b.archive), md5=b.md5, progress=False)
    assert_split(tmp_path, "tinyimagenet", "train", b.train.images, b.train.labels)
    assert_split(tmp_path, "tinyimagenet", "test", b.test.images, b.test.labels)
    meta = load_meta(tmp_path, "tinyimagenet")
    assert meta["classes"] == b.classes, "label indices must follow wnids.txt order"
    assert meta["class_names"] == b.extra["class_names"]
    assert meta["counts"] == {"train": 33, "test": 6} and meta["image_size"] == [64, 64]
    placed = {p.name: p.parent.name for p in (out / "val").glob("*/*")}
    assert placed == b.extra["val_wnid"], "every validation image sits under its wnid folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tinyimagenet"]


def test_cli_download_prepares_and_second_run_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archives: dict[str, Built]
) -> None:
    b = archives["cifar10"]
    root = tmp_path / "data"
    result = run_cli(tmp_path, monkeypatch, "--dataset", "cifar10", "--root", str(root), "--source", str(b.archive),
                     "--md5", b.md5)
    assert result.exit_code == 0, result.output
    assert_split(root, "cifar10", "train", b.train.images, b.train.labels)
    stamp = (root / "cifar10" / "train.npz").stat().st_mtime_ns
    again = run_cli(tmp_path, monkeypatch, "--dataset", "cifar10", "--root", str(root), "--source",
                    str(tmp_path / "gone.tar.gz"), "--md5", b.md5)
    assert again.exit_code == 0, again.output
    assert (root / "cifar10" / "train.npz").stat().st_mtime_ns == stamp, "prepared data must not be rebuilt"


def test_new_digest_replaces_the_preparation_and_a_failed_rebuild_keeps_it(
    tmp_path: Path, archives: dict[str, Built]
) -> None:
    old = archives["cifar10"]
    root = tmp_path / "data"
    prepare("cifar10", root, source=str(old.archive), md5=old.md5, progress=False)
    (tmp_path / "new").mkdir()
    new = build_cifar10(tmp_path / "new", per_batch=3, seed=7)
    prepare("cifar10", root, source=str(new.archive), md5=new.md5, progress=False)
    assert_split(root, "cifar10", "test", new.test.images, new.test.labels)
    with pytest.raises(UserError, match=re.escape(SOURCES["cifar10"].md5)):
        prepare("cifar10", root, source=str(old.archive), progress=False)
    assert load_meta(root, "cifar10")["source_md5"] == new.md5, "a failed rebuild keeps the previous preparation"
    assert sorted(p.name for p in root.iterdir()) == ["cifar10"]


# --- refusals ----------------------------------------------------------------------------------


def _bad_archive(kind: str, d: Path, archives: dict[str, Built]) -> tuple[str, Path, str, str]:
    """(dataset, archive, md5, expected fragment of the error) for one kind of bad archive."""
    if kind == "truncated-tar":
        return ("cifar10", *truncated(archives["cifar10"].archive, d / "t.tar.gz"), "corrupt or truncated tar")
    if kind == "flipped-tar":
        return ("cifar10", *flipped_byte(archives["cifar10"].archive, d / "f.tar.gz"), "corrupt or truncated tar")
    if kind == "truncated-zip":
        return ("tinyimagenet", *truncated(archives["tinyimagenet"].archive, d / "t.zip"), "not a readable tar or zip")
    if kind == "flipped-zip":
        return ("tinyimagenet", *flipped_byte(archives["tinyimagenet"].archive, d / "f.zip"), "corrupt")
    if kind == "zip-declared-bomb":
        return ("tinyimagenet", *zip_lying_size(d, 1 << 16, 3 << 30), "over the limit")
    if kind.startswith("tar-"):
        fragments = {"dotdot": "outside the destination", "absolute": "absolute path",
                     "symlink": "link points outside the destination", "device": "device"}
        return ("cifar10", *unsafe_tar(d, kind[4:]), fragments[kind[4:]])
    if kind.startswith("zip-"):
        fragments = {"dotdot": "outside the destination", "absolute": "absolute path",
                     "symlink": "symlink to '../../../outside' (outside the destination)"}
        return ("tinyimagenet", *unsafe_zip(d, kind[4:]), fragments[kind[4:]])
    if kind == "evil-pickle":
        return ("cifar10", *cifar_evil_pickle(d, d / "pwned"), "os.system, which is not allowed")
    raise ValueError(kind)


BAD_KINDS = [
    "truncated-tar", "flipped-tar", "truncated-zip", "flipped-zip",
    "tar-dotdot", "tar-absolute", "tar-symlink", "tar-device",
    "zip-dotdot", "zip-absolute", "zip-symlink", "zip-declared-bomb", "evil-pickle",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_cli_refuses_bad_archive_with_one_line_and_leaves_nothing(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archives: dict[str, Built]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    dataset, archive, md5, fragment = _bad_archive(kind, src, archives)
    root = tmp_path / "data"
    result = run_cli(tmp_path, monkeypatch, "--dataset", dataset, "--root", str(root), "--source", str(archive),
                     "--md5", md5)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment in lines[0] and str(archive.name) in lines[0]
    assert "Traceback" not in result.output
    assert_clean(root, dataset)
    escaped = [p for p in tmp_path.rglob("*") if p.name in ("evil", "outside", "pwned")]
    assert escaped == [], "nothing may be written outside the destination or executed"


def test_md5_mismatch_of_local_source_names_file_and_both_digests(tmp_path: Path, archives: dict[str, Built]) -> None:
    b = archives["cifar10"]
    expected = SOURCES["cifar10"].md5
    with pytest.raises(UserError) as err:
        prepare("cifar10", tmp_path / "data", source=str(b.archive), progress=False)
    message = str(err.value)
    assert str(b.archive) in message and expected in message and b.md5 in message and "\n" not in message
    assert b.archive.is_file(), "a user's own archive is never deleted"
    assert_clean(tmp_path / "data", "cifar10")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"dataset": "imagenet"}, "--dataset must be one of digits, cifar10, cifar100, tinyimagenet, got 'imagenet'"),
        ({"dataset": "cifar10", "md5": "xyz"}, "--md5 must be 32 hexadecimal digits, got 'xyz'"),
        ({"dataset": "cifar10", "source": "/no/such/archive.tar.gz"}, "--source /no/such/archive.tar.gz: no such file"),
        ({"dataset": "digits", "md5": "0" * 32}, "do not apply to digits"),
    ],
)
def test_prepare_rejects_bad_parameters(tmp_path: Path, args: dict[str, Any], fragment: str) -> None:
    dataset = args.pop("dataset")
    with pytest.raises(UserError, match=re.escape(fragment)):
        prepare(dataset, tmp_path, progress=False, **args)


def test_zip_member_count_cap(tmp_path: Path) -> None:
    archive, _ = zip_many_members(tmp_path, 50)
    with pytest.raises(UserError, match="50 members exceed the limit of 10"):
        extract(archive, tmp_path / "out", max_members=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many-members.zip"]


def test_zip_total_size_cap(tmp_path: Path) -> None:
    archive, _ = zip_of_zeros(tmp_path, 8 << 20)
    assert archive.stat().st_size < 64 << 10
    with pytest.raises(UserError, match="declare 8388608 uncompressed bytes, over the limit of 1048576"):
        extract(archive, tmp_path / "out", max_total_bytes=1 << 20)
    assert not (tmp_path / "out").exists()


def test_zip_member_inflating_past_its_declared_size_is_stopped(tmp_path: Path) -> None:
    archive, _ = zip_lying_size(tmp_path, 4 << 20, 1000)
    with pytest.raises(UserError, match=re.escape(archive.name)):
        extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zeros.zip"]


def test_tar_caps_apply_too(tmp_path: Path, archives: dict[str, Built]) -> None:
    with pytest.raises(UserError, match="more than 3 members"):
        extract(archives["cifar10"].archive, tmp_path / "out", max_members=3)
    assert list(tmp_path.iterdir()) == []


def test_restricted_unpickler_loads_python2_numpy_pickles_and_refuses_other_globals(tmp_path: Path) -> None:
    good = tmp_path / "batch"
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    good.write_bytes(py2_pickle({b"data": data, b"labels": [3, 7]}))
    loaded = load_pickle(good)
    np.testing.assert_array_equal(loaded[b"data"], data)
    assert loaded[b"labels"] == [3, 7]

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return os.system, ("true",)

    import io
    import pickle

    payload = pickle.dumps(Exploit(), protocol=2)
    with pytest.raises(UserError, match=r"refers to (posix|os|nt)\.system, which is not allowed"):
        RestrictedUnpickler(io.BytesIO(payload), tmp_path / "x").load()


# --- HTTP --------------------------------------------------------------------------------------


class FixtureServer:
    """A local HTTP server for one payload: counts requests, honours Range, can drop connections."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.requests: list[tuple[str, str | None]] = []
        self.drops = 0
        self.honor_range = True
        self.status = 200
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                if server.status != 200:
                    self.send_error(server.status)
                    return
                data, start = server.payload, 0
                wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if wanted and server.honor_range:
                    start = int(wanted.group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drops:
                    server.drops -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FixtureServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FixtureServer]]:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    yield FixtureServer


def test_interrupted_download_resumes_with_range_and_is_not_repeated(
    tmp_path: Path, archives: dict[str, Built], serve: type[FixtureServer]
) -> None:
    b = archives["cifar10"]
    payload = b.archive.read_bytes()
    with serve(payload) as server:
        server.drops = 1
        url = f"{server.url}/cifar-10-python.tar.gz"
        prepare("cifar10", tmp_path, source=url, md5=b.md5, backoff=0.01, progress=True)
        assert server.requests == [("/cifar-10-python.tar.gz", None),
                                   ("/cifar-10-python.tar.gz", f"bytes={len(payload) // 2}-")]
        downloaded = tmp_path / "downloads" / "cifar-10-python.tar.gz"
        assert md5_file(downloaded) == b.md5 and not downloaded.with_name(downloaded.name + ".part").exists()
        assert_split(tmp_path, "cifar10", "train", b.train.images, b.train.labels)
        assert load_meta(tmp_path, "cifar10")["source"] == url

        prepare("cifar10", tmp_path, source=url, md5=b.md5, progress=False)
        assert len(server.requests) == 2, "prepared data must not be downloaded again"

        (tmp_path / "cifar10" / "meta.json").unlink()
        prepare("cifar10", tmp_path, source=url, md5=b.md5, progress=False)
        assert len(server.requests) == 2, "a verified archive in downloads/ is reused"


def test_server_ignoring_range_restarts_the_file(
    tmp_path: Path, archives: dict[str, Built], serve: type[FixtureServer]
) -> None:
    b = archives["cifar100"]
    with serve(b.archive.read_bytes()) as server:
        server.drops, server.honor_range = 1, False
        prepare("cifar100", tmp_path, source=f"{server.url}/x.tar.gz", md5=b.md5, backoff=0.01, progress=False)
        assert len(server.requests) == 2 and server.requests[1][1] is not None
    assert md5_file(tmp_path / "downloads" / "cifar-100-python.tar.gz") == b.md5
    assert_split(tmp_path, "cifar100", "test", b.test.images, b.test.labels)


def test_exhausted_retries_keep_the_part_file_and_a_rerun_resumes(
    tmp_path: Path, archives: dict[str, Built], serve: type[FixtureServer]
) -> None:
    b = archives["tinyimagenet"]
    payload = b.archive.read_bytes()
    part = tmp_path / "downloads" / "tiny-imagenet-200.zip.part"
    with serve(payload) as server:
        server.drops = 2
        with pytest.raises(UserError, match="failed after 2 attempts: connection closed after"):
            prepare("tinyimagenet", tmp_path, source=server.url, md5=b.md5, retries=1, backoff=0.01, progress=False)
        assert part.is_file() and 0 < part.stat().st_size < len(payload)
        assert_clean(tmp_path, "tinyimagenet")
        kept = part.stat().st_size
        prepare("tinyimagenet", tmp_path, source=server.url, md5=b.md5, retries=0, progress=False)
        assert server.requests[-1][1] == f"bytes={kept}-"
    assert_split(tmp_path, "tinyimagenet", "test", b.test.images, b.test.labels)


def test_corrupted_download_is_deleted_and_named(
    tmp_path: Path, archives: dict[str, Built], serve: type[FixtureServer]
) -> None:
    b = archives["cifar10"]
    bad, actual = flipped_byte(b.archive, tmp_path / "bad.tar.gz")
    with serve(bad.read_bytes()) as server, pytest.raises(UserError) as err:
        prepare("cifar10", tmp_path / "data", source=server.url, md5=b.md5, backoff=0.01, progress=False)
    message = str(err.value)
    assert "cifar-10-python.tar.gz.part" in message and actual in message and b.md5 in message
    assert list((tmp_path / "data" / "downloads").iterdir()) == [], "a file that failed its MD5 is deleted"
    assert_clean(tmp_path / "data", "cifar10")


def test_http_404_fails_at_once(tmp_path: Path, archives: dict[str, Built], serve: type[FixtureServer]) -> None:
    with serve(b"") as server:
        server.status = 404
        with pytest.raises(UserError, match="HTTP 404"):
            prepare("cifar10", tmp_path, source=server.url, md5=archives["cifar10"].md5, backoff=5, progress=False)
        assert len(server.requests) == 1


def test_mirror_variable_sets_the_default_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archives: dict[str, Built], serve: type[FixtureServer]
) -> None:
    b = archives["cifar10"]
    with serve(b.archive.read_bytes()) as server:
        monkeypatch.setenv(MIRROR_ENV, server.url + "/mirror/")
        assert SOURCES["cifar10"].download_url() == f"{server.url}/mirror/cifar-10-python.tar.gz"
        result = run_cli(tmp_path, monkeypatch, "--dataset", "cifar10", "--root", str(tmp_path / "d"), "--md5", b.md5)
        assert result.exit_code == 0, result.output
        assert [path for path, _ in server.requests] == ["/mirror/cifar-10-python.tar.gz"]
    meta = json.loads((tmp_path / "d" / "cifar10" / "meta.json").read_text())
    assert meta["source"] == f"{server.url}/mirror/cifar-10-python.tar.gz"
