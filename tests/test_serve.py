"""`mgvr serve`: a real server process on localhost over a real (synthetic) index, and the real
`mgvr search` finding it, or falling back to searching in-process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from synthetic import SyntheticSpace, write_index

from mgvr.model.clip import ClipEncoder
from mgvr.retriever.filters import SearchFilter
from mgvr.retriever.search import Retriever
from mgvr.serve import discovery
from mgvr.serve.client import ServedSearch, request, search_via_server

QUERY = "a red car on a bridge"


def _text(limit: int) -> ServedSearch:
    return ServedSearch(QUERY, None, limit, 50, True)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    """A synthetic index of the tiny model and an `mgvr serve` process for it."""
    identity = ClipEncoder.load(tiny_model["model"], tiny_model["pretrained"], "cpu").identity
    root = tmp_path_factory.mktemp("served") / "index"
    write_index(root, identity, 3000, 4, SyntheticSpace.make(identity.embed_dim, 16))
    process = subprocess.Popen(
        [sys.executable, "-m", "mgvr.cli", "serve", "--index", str(root), "--device", "cpu",
         "--threads", "1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while (info := discovery.read(root)) is None or info.pid != process.pid:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mgvr serve did not start: {process.communicate()[1]}")
        time.sleep(0.1)
    yield root, process, info
    process.kill()
    process.wait(30)


def _served_count(info) -> int:
    status, payload = request(info, "GET", "/status")
    assert status == 200
    return payload["queries_served"]


def test_health_status_and_search_endpoints(served):
    root, process, info = served
    assert request(info, "GET", "/health") == (
        200, {"status": "ok", "pid": process.pid, "index": os.path.realpath(root)})
    status, payload = request(info, "GET", "/status")
    assert status == 200 and payload["generation"] >= 1 and payload["device"] == "cpu"
    assert payload["coarse"]["clips"] == 3000
    assert [s["backend"] for s in payload["coarse"]["segments"]] == ["faiss-cpu-flat"]
    assert payload["catalog"]["clips"] == 3000
    assert payload["files_indexed"] == payload["catalog"]["videos_indexed"] > 0
    assert payload["failed"] == [] and payload["disk_bytes"] > 0

    status, posted = request(info, "POST", "/search", {"query": QUERY, "limit": 5})
    assert status == 200 and posted["schema"] == "mgvr.search/1" and posted["reranked"]
    assert [hit["rank"] for hit in posted["hits"]] == [1, 2, 3, 4, 5]
    assert posted["context_length"] == 77
    assert set(posted["timings_ms"]) == {"text_encode", "recall", "fetch", "rerank"}
    assert posted["query_kind"] == "text" and posted["filter"] == {}
    assert {hit["video"] for hit in posted["hits"]} == {"gone"}  # synthetic paths
    status, got = request(info, "GET", "/search?q=a+red+car+on+a+bridge&limit=5")
    assert status == 200 and got["hits"] == posted["hits"]


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/search", {"query": "  "}, 400, "empty query"),
    ("POST", "/search", {"query": "x", "limit": 0}, 400,
     '"limit": Input should be greater than or equal to 1 (got 0)'),
    ("POST", "/search", {"query": "x", "rerank": "maybe"}, 400, '"rerank": Input should be'),
    ("POST", "/search", {"query": "x", "index": "/elsewhere"}, 409, "not /elsewhere"),
    ("GET", "/nowhere", None, 404, "no endpoint /nowhere"),
    ("DELETE", "/search", None, 405, "DELETE is not supported on /search; use GET or POST"),
])
def test_bad_requests_get_one_line_errors(served, method, path, body, status, message):
    _, _, info = served
    answer, payload = request(info, method, path, body)
    assert answer == status and message in payload["error"]


def test_cli_search_is_answered_by_the_server_like_in_process(served):
    root, _, info = served
    before = _served_count(info)
    result = run_cli("search", QUERY, "--index", str(root), "--json", "-n", "7")
    assert result.returncode == 0, result.stderr
    assert _served_count(info) == before + 1
    served_hits = json.loads(result.stdout)["hits"]
    local = Retriever(root, device="cpu").search(QUERY, limit=7).hits
    assert [h["clip_id"] for h in served_hits] == [h.clip_id for h in local]
    assert [h["score"] for h in served_hits] == pytest.approx([h.score for h in local], abs=1e-5)

    refused = run_cli("search", QUERY, "--index", str(root), "--model", "ViT-B-32")
    assert refused.returncode == 2 and "index built with mgvr-test-tiny" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_cli_image_search_and_filters_go_through_the_server(served, tmp_path):
    root, _, info = served
    picture = tmp_path / "query.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), np.uint8)).save(
        picture)
    before = _served_count(info)
    result = run_cli("search", "--image", str(picture), "--index", str(root), "--json", "-n", "5",
                     "--name", "video-00000")
    assert result.returncode == 0, result.stderr
    assert _served_count(info) == before + 1
    document = json.loads(result.stdout)
    assert document["query_kind"] == "image" and document["query"] == "query.png"
    local = Retriever(root, device="cpu").search_image(
        picture, limit=5, search_filter=SearchFilter(name="video-00000"))
    assert [h["clip_id"] for h in document["hits"]] == [h.clip_id for h in local.hits]
    assert all("/video-00000" in h["path"] for h in document["hits"])


def test_a_server_of_another_index_is_not_used(served, tmp_path):
    root, _, info = served
    copy = shutil.copytree(root, tmp_path / "copy")  # serve.json included: names the original
    before = _served_count(info)
    assert search_via_server(copy, _text(3)) is None  # `mgvr search` goes in-process
    assert _served_count(info) == before  # the server refused a request for another index
    assert search_via_server(root, _text(3), device="cuda:0") is None
    result, context_length = search_via_server(root, _text(3), device="cpu")
    assert len(result.hits) == 3 and context_length == 77


def test_stale_or_unreachable_server_files_are_ignored(served, tmp_path):
    root, _, info = served
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid, port in [(dead.pid, info.port), (os.getpid(), _closed_port())]:
        discovery.write(tmp_path, discovery.ServeInfo(pid, port, os.path.realpath(tmp_path),
                                                      "cpu", time.time()))
        assert search_via_server(tmp_path, _text(5)) is None
    (tmp_path / discovery.SERVE_FILENAME).write_text("{not json")
    assert search_via_server(tmp_path, _text(5)) is None


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_side_imports_no_torch():
    code = ("import sys; import mgvr.cli; from mgvr.serve import client; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_second_server_is_refused_and_sigterm_cleans_up(served):
    root, process, info = served
    second = run_cli("serve", "--index", str(root))
    assert second.returncode == 2
    assert f"already served by pid {process.pid} on port {info.port}" in second.stderr
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert not (root / discovery.SERVE_FILENAME).exists()
