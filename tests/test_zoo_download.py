"""Zoo downloads against a local HTTP server on 127.0.0.1 (Range support written here).

The server logs every request (path, Range header, bytes sent), so the tests can assert what was
asked for: a resumed download requests only the missing tail.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import re
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from clbench.zoo import download
from clbench.zoo.catalogue import Weights, get_entry, weights_path, zoo_dir
from clbench.zoo.download import DownloadError, OfflineError, fetch, fetch_entry, parse_checksum

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # ~1 MiB, not a multiple of the read size


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    log: ClassVar[list[dict]] = []
    #: path -> number of bytes after which the connection is cut (once)
    truncate: ClassVar[dict[str, int]] = {}
    ignore_range: ClassVar[bool] = False

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        rng = self.headers.get("Range")
        entry = {"path": self.path, "range": rng, "sent": 0}
        self.log.append(entry)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and not self.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.truncate.pop(self.path, None)
        if cut is not None:
            body = body[:cut]
            self.close_connection = True
        self.wfile.write(body)
        self.wfile.flush()
        entry["sent"] = len(body)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CLBENCH_OFFLINE", raising=False)
    _Handler.files = {"/w/model.pth": PAYLOAD}
    _Handler.log = []
    _Handler.truncate = {}
    _Handler.ignore_range = False
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_correct_download_is_verified_and_recorded(server, tmp_path):
    base, handler = server
    dest = tmp_path / "zoo" / "entry" / "model.pth"
    out = fetch(f"{base}/w/model.pth", dest, checksum=f"sha256:{_sha(PAYLOAD)}", progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("model.pth.part").exists()
    assert [e["range"] for e in handler.log] == [None]
    record = json.loads((tmp_path / "zoo" / "checksums.json").read_text())[f"{base}/w/model.pth"]
    assert record["sha256"] == _sha(PAYLOAD) and record["size"] == len(PAYLOAD)
    # a second call reads the cache: no request
    fetch(f"{base}/w/model.pth", dest, checksum=f"sha256:{_sha(PAYLOAD)}", progress=False)
    assert len(handler.log) == 1


def test_md5_prefix_checksum_as_moco_publishes_it(server, tmp_path):
    base, _ = server
    dest = tmp_path / "zoo" / "e" / "model.pth"
    fetch(f"{base}/w/model.pth", dest, checksum=f"md5-prefix:{_md5(PAYLOAD)[:8]}", progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_truncated_download_fails_leaves_no_file_and_resumes(server, tmp_path):
    base, handler = server
    url, dest = f"{base}/w/model.pth", tmp_path / "zoo" / "e" / "model.pth"
    cut = 300_000
    handler.truncate["/w/model.pth"] = cut
    with pytest.raises(DownloadError, match="truncated|connection lost"):
        fetch(url, dest, checksum=f"sha256:{_sha(PAYLOAD)}", progress=False)
    assert not dest.exists()  # nothing is presented as a valid file
    part = dest.with_name("model.pth.part")
    assert part.read_bytes() == PAYLOAD[: part.stat().st_size] and 0 < part.stat().st_size <= cut
    have = part.stat().st_size
    fetch(url, dest, checksum=f"sha256:{_sha(PAYLOAD)}", progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert handler.log[-1]["range"] == f"bytes={have}-"
    assert handler.log[-1]["sent"] == len(PAYLOAD) - have


def test_resumed_download_requests_only_the_rest(server, tmp_path):
    base, handler = server
    url, dest = f"{base}/w/model.pth", tmp_path / "zoo" / "e" / "model.pth"
    dest.parent.mkdir(parents=True)
    dest.with_name("model.pth.part").write_bytes(PAYLOAD[:123_457])
    fetch(url, dest, checksum=f"sha256:{_sha(PAYLOAD)}", progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [(e["range"], e["sent"]) for e in handler.log] == [("bytes=123457-", len(PAYLOAD) - 123_457)]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    base, handler = server
    handler.ignore_range = True
    url, dest = f"{base}/w/model.pth", tmp_path / "zoo" / "e" / "model.pth"
    dest.parent.mkdir(parents=True)
    dest.with_name("model.pth.part").write_bytes(b"garbage" * 10)
    fetch(url, dest, checksum=f"sha256:{_sha(PAYLOAD)}", progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_verified_without_a_body(server, tmp_path):
    base, handler = server
    url, dest = f"{base}/w/model.pth", tmp_path / "zoo" / "e" / "model.pth"
    dest.parent.mkdir(parents=True)
    dest.with_name("model.pth.part").write_bytes(PAYLOAD)
    fetch(url, dest, checksum=f"sha256:{_sha(PAYLOAD)}", progress=False)
    assert dest.read_bytes() == PAYLOAD and handler.log[0]["sent"] == 0


def test_wrong_checksum_is_an_error_and_nothing_is_kept(server, tmp_path):
    base, _ = server
    url, dest = f"{base}/w/model.pth", tmp_path / "zoo" / "e" / "model.pth"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch(url, dest, checksum="md5-prefix:deadbeef", progress=False)
    assert not dest.exists() and not dest.with_name("model.pth.part").exists()
    registry = tmp_path / "zoo" / "checksums.json"
    assert not registry.exists() or url not in json.loads(registry.read_text())


def test_unpublished_checksum_is_recorded_then_enforced(server, tmp_path):
    base, handler = server
    url, dest = f"{base}/w/model.pth", tmp_path / "zoo" / "e" / "model.pth"
    fetch(url, dest, progress=False)
    registry = tmp_path / "zoo" / "checksums.json"
    assert json.loads(registry.read_text())[url]["sha256"] == _sha(PAYLOAD)
    fetch(url, dest, progress=False)  # unchanged: fine
    dest.write_bytes(PAYLOAD[:-1] + b"X")  # the file changed after the first download
    with pytest.raises(DownloadError, match="recorded on first download"):
        fetch(url, dest, progress=False)
    # the server now serving other bytes is caught too
    dest.unlink()
    handler.files["/w/model.pth"] = PAYLOAD + b"changed"
    with pytest.raises(DownloadError, match="recorded on first download"):
        fetch(url, dest, progress=False)
    assert not dest.exists() and not dest.with_name("model.pth.part").exists()


def test_http_error_is_named(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{base}/w/missing.pth", tmp_path / "zoo" / "e" / "missing.pth", progress=False)


@pytest.mark.parametrize("env", ["CLBENCH_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_fails_fast_with_url_and_path(server, tmp_path, monkeypatch, env):
    base, handler = server
    monkeypatch.setenv(env, "1")
    url, dest = f"{base}/w/model.pth", tmp_path / "zoo" / "e" / "model.pth"
    with pytest.raises(OfflineError) as info:
        fetch(url, dest, checksum="md5-prefix:deadbeef", progress=False)
    assert url in str(info.value) and str(dest) in str(info.value)
    assert handler.log == []
    # a file placed by hand is used offline (and verified)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD)
    assert fetch(url, dest, checksum=f"md5-prefix:{_md5(PAYLOAD)[:8]}", progress=False) == dest
    assert handler.log == []


def test_parse_checksum_forms():
    assert parse_checksum("sha256:" + "a" * 64) == ("sha256", "a" * 64)
    assert parse_checksum("sha256-prefix:abcdef12") == ("sha256", "abcdef12")
    for bad in ("md5:abc", "crc:1234abcd", "sha256:xyz", "md5-prefix:ab"):
        with pytest.raises(ValueError):
            parse_checksum(bad)


def test_fetch_entry_downloads_into_the_clbench_cache(server, tmp_path):
    base, _ = server
    entry = get_entry("mocov2-800ep")
    local = dataclasses.replace(
        entry, weights=Weights(status="download", url=f"{base}/w/model.pth", checksum=f"md5-prefix:{_md5(PAYLOAD)[:8]}")
    )
    path = fetch_entry(local, progress=False)
    assert path == weights_path(local) and path.read_bytes() == PAYLOAD
    assert path.is_relative_to(zoo_dir()) and zoo_dir().parent == Path(__import__("os").environ["CLBENCH_CACHE_DIR"])
    assert (zoo_dir() / download.REGISTRY_NAME).is_file()


def test_cli_fetch_offline_names_url_and_path(monkeypatch):
    from clbench.cli import app

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("CLBENCH_OFFLINE", "0")  # the command sets it to 1; monkeypatch restores it
    result = CliRunner().invoke(app, ["zoo", "fetch", "mocov2-800ep", "--offline"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    entry = get_entry("mocov2-800ep")
    assert entry.weights.url in text and "moco_v2_800ep_pretrain.pth.tar" in text


def test_cli_run_offline_fails_fast_in_validation(tmp_path, monkeypatch):
    from clbench.cli import app

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("CLBENCH_OFFLINE", "0")  # the command sets it to 1; monkeypatch restores it
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "suite: s\nencoders:\n  moco: {type: zoo, method: mocov2-800ep}\n"
        "datasets:\n  d: {type: sklearn-digits}\ntasks:\n  - {name: k, type: knn, dataset: d}\n"
    )
    result = CliRunner().invoke(app, ["run", str(suite), "--offline"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "offline" in text and get_entry("mocov2-800ep").weights.url in text
    assert str(weights_path(get_entry("mocov2-800ep"))) in text.replace(" ", "")
    assert not (tmp_path / "results").exists()


def test_concurrent_fetches_take_turns_and_download_once(server, tmp_path):
    base, handler = server
    url, dest = f"{base}/w/model.pth", tmp_path / "zoo" / "e" / "model.pth"
    out, errors = [], []

    def worker():
        try:
            out.append(fetch(url, dest, checksum=f"sha256:{_sha(PAYLOAD)}", progress=False))
        except Exception as err:  # collected for the assertion below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and out == [dest] * 3 and dest.read_bytes() == PAYLOAD
    assert len(handler.log) == 1
