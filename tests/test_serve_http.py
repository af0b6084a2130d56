"""`mgvr serve` at the HTTP level: Range requests, the token, path traversal, size limits,
malformed and stalled requests, other methods, and concurrent searches during commits and
compaction. The framework's TestClient over `create_app`, and a real server process on raw
sockets where the bytes on the wire matter. Real videos, the tiny real model."""

import contextlib
import http.client
import io
import json
import os
import shutil
import socket
import stat
import threading
import time

import pytest
from conftest import make_video, run_cli, start_server
from fastapi.testclient import TestClient

from mgvr.retriever.search import Retriever
from mgvr.serve import discovery
from mgvr.serve.app import create_app
from mgvr.serve.client import ServedSearch, search_via_server
from mgvr.serve.service import SearchService

LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_model):
    """A small indexed folder of real videos: (videos, index, {file name: clip id})."""
    videos = tmp_path_factory.mktemp("library") / "videos"
    make_video(videos / "kept.mp4", seconds=4)
    make_video(videos / "bars.avi", "smptebars", codec=["-c:v", "mpeg4"])
    make_video(videos / "swapped.mp4", "rgbtestsrc")
    make_video(videos / "sub" / "gone.mp4", "mandelbrot", "160x120")
    make_video(videos / "film.mp4", "testsrc", seconds=2,
               codec=["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                      "-movflags", "+faststart"])
    _padded_to(videos / "film.mp4", 2_600_000_000, b"the bytes near the end")
    index = videos.parent / "index"
    result = run_cli("index", str(videos), "--index", str(index), "--model", tiny_model["model"],
                     "--pretrained", tiny_model["pretrained"])
    assert result.returncode == 0, result.stderr
    catalog = Retriever(index, device="cpu").catalog
    clips = {os.path.basename(r.video_path): r.id for r in catalog.clips_by_ids(
        catalog.all_clip_ids()).values()}
    return videos, index, clips


@pytest.fixture(scope="module")
def service(library):
    service = SearchService(Retriever(library[1], device="cpu"), workers=2)
    yield service
    service.close()


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service), base_url=LOCAL) as client:
        yield client


def test_video_answers_range_requests_with_the_exact_bytes(library, client):
    videos, _, clips = library
    data = (videos / "kept.mp4").read_bytes()
    url = f"/clips/{clips['kept.mp4']}/video"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"] == "video/mp4"
    for asked, first, last in [("100-199", 100, 199), ("-50", len(data) - 50, len(data) - 1),
                               (f"{len(data) - 10}-", len(data) - 10, len(data) - 1)]:
        part = client.get(url, headers={"Range": f"bytes={asked}"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes {first}-{last}/{len(data)}"
        assert part.content == data[first:last + 1]
    assert client.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416


def test_range_requests_reach_the_end_of_a_file_over_2_gb(library, client):
    """Seeking in a long film: a 2.5 GB file (an MP4 whose padding is sparse on disk), read
    near its end."""
    videos, _, clips = library
    size = (videos / "film.mp4").stat().st_size
    assert size > 2_500_000_000
    answer = client.get(f"/clips/{clips['film.mp4']}/video",
                        headers={"Range": f"bytes={size - 22}-{size - 1}"})
    assert answer.status_code == 206 and answer.content == b"the bytes near the end"
    assert answer.headers["content-range"] == f"bytes {size - 22}-{size - 1}/{size}"


def _padded_to(path, size: int, tail: bytes) -> None:
    """Append a 'free' box (which MP4 readers skip) that makes the file `size` bytes long,
    sparse but for `tail` at its very end."""
    start = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(start)
        f.write((1).to_bytes(4, "big") + b"free" + (size - start).to_bytes(8, "big"))
        f.seek(size - len(tail))
        f.write(tail)


def test_frames_are_one_sprite_per_clip(library, client):
    from PIL import Image

    _, _, clips = library
    answer = client.get(f"/clips/{clips['kept.mp4']}/frames")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/webp"
    assert "immutable" in answer.headers["cache-control"]
    with Image.open(io.BytesIO(answer.content)) as sprite:
        frames = sprite.width // sprite.height
        assert sprite.width == frames * sprite.height and frames > 1  # square tiles in a row
    hits = client.get("/search", params={"q": "x", "name": "kept.mp4"}).json()["hits"]
    assert len(hits[0]["frame_times"]) == frames
    for url in ["/clips/999999/frames", "/clips/x/frames", "/clips/1/frames.png"]:
        answer = client.get(url)
        assert answer.status_code == 404 and "error" in answer.json(), url
    assert client.get("/clips/999999/frames").json()["reason"] == "no-thumbnails"


def test_only_the_indexed_file_is_served(library, client, tmp_path):
    videos, _, clips = library
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web\n")
    swapped = videos / "swapped.mp4"
    backup = tmp_path / "swapped.mp4"
    shutil.move(swapped, backup)
    swapped.symlink_to(secret)  # the listed path now points elsewhere
    gone = videos / "sub" / "gone.mp4"
    shutil.move(gone, tmp_path / "gone.mp4")
    try:
        answer = client.get(f"/clips/{clips['swapped.mp4']}/video")
        assert answer.status_code == 404 and answer.json()["reason"] == "changed"
        assert "not for the web" not in answer.text
        answer = client.get(f"/clips/{clips['gone.mp4']}/video")
        assert answer.status_code == 404 and answer.json()["reason"] == "gone"
        assert "the video is gone" in answer.json()["error"]
        sprite = client.get(f"/clips/{clips['gone.mp4']}/frames")  # kept in the index
        assert sprite.status_code == 200 and sprite.content[8:12] == b"WEBP"
        hits = client.get("/search", params={"q": "mandelbrot", "limit": 10}).json()["hits"]
        states = {os.path.basename(h["path"]): h["video"] for h in hits}
        assert states["gone.mp4"] == "gone" and states["kept.mp4"] == "ok"
        for url in ["/clips/999999/video", "/clips/-1/video", "/clips/abc/video",
                    "/clips/1.5/video", "/clips//video"]:
            answer = client.get(url)
            assert answer.status_code == 404 and "error" in answer.json(), url
    finally:
        swapped.unlink()
        shutil.move(backup, swapped)
        shutil.move(tmp_path / "gone.mp4", gone)


def _raw(info, request: bytes, timeout: float = 30) -> bytes:
    """Send bytes as they are (no client normalising the path) and read the whole answer,
    reading while sending: a server that refuses a body answers before it is all sent."""
    with socket.create_connection((info.connect_host, info.port), timeout=timeout) as sock:
        sender = threading.Thread(target=_send_all, args=(sock, request))
        sender.start()
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # closed with our unsent rest in flight: the answer is in
            pass
        sender.join(timeout)
        return b"".join(chunks)


def _send_all(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server stopped reading (and answered)
        sock.sendall(data)


def _status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture(scope="module")
def server(library):
    """A real `mgvr serve` on the library, with a 1 s limit for stalled requests."""
    process, info = start_server(library[1], "--request-timeout", "1", "--workers", "4")
    yield process, info
    process.terminate()
    assert process.wait(30) == 0
    stderr = process.stderr.read()
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize("path", [
    "/clips/../../../etc/passwd", "/clips/%2e%2e/%2e%2e/etc/passwd/video",
    "/clips/1%2F..%2F..%2Fetc%2Fpasswd/video", "/clips/%2Fetc%2Fpasswd/video",
    "//etc/passwd", "/static/../mgvr.json", "/static/%2e%2e/app.py", "/static/..%2F..%2Fcli.py",
    "/static//etc/passwd", "/static/%2Fetc%2Fpasswd", "/etc/passwd", "/clips/1/video/../../../x",
])
def test_traversal_attempts_get_404(server, path):
    _, info = server
    status, body = _status_and_body(_raw(info, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                               "Connection: close\r\n\r\n".encode()))
    assert status == 404, (path, body)
    assert "error" in json.loads(body) and b"root:" not in body and b"import" not in body


def test_static_symlink_out_of_the_package_is_not_followed(server, tmp_path):
    """StaticFiles refuses a link in the assets folder that leads outside it."""
    from mgvr.serve.app import STATIC

    _, info = server
    link = STATIC / "leak.txt"
    (tmp_path / "secret.txt").write_text("secret\n")
    link.symlink_to(tmp_path / "secret.txt")
    try:
        status, body = _status_and_body(_raw(info, b"GET /static/leak.txt HTTP/1.1\r\n"
                                                   b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n"))
        assert status == 404 and b"secret" not in body
    finally:
        link.unlink()


@pytest.mark.parametrize("request_bytes, status, message", [
    (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n", 400,
     b"Invalid HTTP request"),
    (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n"
     b"\r\n12345", 400, b"Invalid HTTP request"),
    (b"GET /health HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n", 403,
     b"answers on 127.0.0.1 only"),
    (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2000000\r\n"
     b"Connection: close\r\n\r\n{", 413, b"a JSON body may be at most 1 MiB"),
    (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
     b"Connection: close\r\n\r\n" + (b"100000\r\n" + b" " * 0x100000 + b"\r\n") * 2 + b"0\r\n\r\n",
     413, b"at most 1 MiB"),
    (b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
     b"boundary=x\r\nContent-Length: 30000000\r\nConnection: close\r\n\r\n", 413,
     b"an image upload may be at most 20 MiB"),
])
def test_malformed_and_oversized_requests_get_one_line_errors(server, request_bytes, status,
                                                              message):
    _, info = server
    answer_status, body = _status_and_body(_raw(info, request_bytes))
    assert answer_status == status and message in body
    assert len(body.strip().splitlines()) == 1


def test_stalled_requests_time_out(server):
    _, info = server
    started = time.monotonic()
    # A head that never ends: the server closes the connection without an answer.
    assert _raw(info, b"GET /health HTTP/1.1\r\nHost: 127.0") == b""
    # A body shorter than its Content-Length: 408 with a message, then the connection closes.
    status, body = _status_and_body(_raw(info, b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                               b"Content-Length: 100\r\n\r\n{\"query\""))
    assert status == 408 and b"the request body stalled: 8 bytes came" in body
    # A connection that sends nothing at all is closed too.
    assert _raw(info, b"") == b""
    assert time.monotonic() - started < 25  # each waited about 1 s, not forever
    assert _raw(info, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                ).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("fields, message", [
    (b"not json", "the body is not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"", "needs a JSON body"),
    (b'{"query": "x", "limit": "ten"}', '"limit": Input should be a valid integer'),
    (b'{"query": "x", "limit": 10.5}', '"limit": Input should be a valid integer'),
    (b'{"query": "x", "rerank_depth": 1e9}', '"rerank_depth": Input should be less than'),
    (b'{"like": 1, "at": NaN}', '"at": Input should be a finite number'),
    (b'{"like": 1, "at": -3}', '"at": Input should be greater than or equal to 0'),
    (b'{"limit": 5}', 'needs one of "query" (text), "like" (a clip id)'),
    (b'{"query": "x", "like": 3}', "not query and like"),
    (b'{"query": "x", "modified_after": "soon"}', "'soon' is not a date"),
    (b'{"query": "x", "under": "relative/dir"}', "must be an absolute folder"),
    (b'{"like": 999999}', "clip 999999 is not in the index"),
])
def test_bad_search_requests_get_400_with_one_line(client, fields, message):
    answer = client.post("/search", content=fields, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"] and answer.json()["exit_code"] == 2


def test_image_uploads(library, client):
    videos, _, _ = library
    import subprocess

    picture = subprocess.run(["ffmpeg", "-v", "error", "-i", str(videos / "kept.mp4"),
                              "-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "-"],
                             capture_output=True, check=True, timeout=60).stdout
    answer = client.post("/search", files={"image": ("frame.png", picture, "image/png")},
                         data={"limit": "3", "under": str(videos)})
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["query_kind"] == "image" and document["query"] == "frame.png"
    assert document["filter"] == {"under": str(videos)} and len(document["hits"]) == 3
    for files, message in [({"image": ("x.png", b"GIF89a broken", "image/png")},
                            "not an image format mgvr can read"),
                           ({"image": ("x.png", b"", "image/png")}, "is empty"),
                           ({"photo": ("x.png", picture, "image/png")}, "unexpected file field")]:
        answer = client.post("/search", files=files)
        assert answer.status_code == 400 and message in answer.json()["error"]
    both = client.post("/search", files={"image": ("x.png", picture)}, data={"query": "x"})
    assert both.status_code == 400 and "not query and image" in both.json()["error"]


def test_other_methods_get_json_405_and_no_cors(client):
    for method, path in [("PUT", "/search"), ("DELETE", "/clips/1/video"), ("PATCH", "/health"),
                         ("POST", "/static/app.js"), ("OPTIONS", "/search"), ("POST", "/")]:
        answer = client.request(method, path, headers={"Origin": "http://elsewhere.example"})
        assert answer.status_code == 405, (method, path)
        assert f"{method} is not supported on {path}" in answer.json()["error"]
        assert "access-control-allow-origin" not in answer.headers
    answer = client.get("/search?q=x", headers={"Origin": "http://elsewhere.example"})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_page_and_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script type="module" src="/static/app.js">' in page.text
    for asset, kind in [("app.js", "javascript"), ("app.css", "text/css")]:
        answer = client.get(f"/static/{asset}")
        assert answer.status_code == 200 and kind in answer.headers["content-type"]
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from another host
    for answer in (page, client.get("/health"), client.get("/nowhere")):
        assert answer.headers["content-security-policy"].startswith("default-src 'self'")
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_token(service):
    with TestClient(create_app(service, token="s3cret-token"), base_url=LOCAL) as client:
        for path in ["/health", "/", "/static/app.js", "/search?q=x", "/clips/1/video"]:
            answer = client.get(path)
            assert answer.status_code == 401 and "needs its token" in answer.json()["error"]
        assert client.get("/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/health", headers={"Authorization": "Bearer s3cret-token"}
                          ).status_code == 200
        first = client.get("/?token=s3cret-token")  # the URL `mgvr serve` prints
        assert first.status_code == 200 and "HttpOnly" in first.headers["set-cookie"]
        assert client.get("/status").status_code == 200  # the cookie carries it now
    with TestClient(create_app(service, token="s3cret-token"), base_url="http://192.0.2.7"
                    ) as client:  # with a token, any Host name is fine
        assert client.get("/health?token=s3cret-token").status_code == 200


def test_a_server_beyond_loopback_needs_its_token(library, tmp_path):
    """--host 0.0.0.0 generates a token, prints the URL with it and records it (mode 0600)
    for `mgvr search`; a request without it gets 401. (Traffic goes to 127.0.0.1 only.)"""
    index = shutil.copytree(library[1], tmp_path / "index",  # the module's server has its own
                            ignore=shutil.ignore_patterns(discovery.SERVE_FILENAME))
    process, info = start_server(index, "--host", "0.0.0.0")
    try:
        assert info.token and info.host == "0.0.0.0"
        assert stat.S_IMODE(os.stat(index / discovery.SERVE_FILENAME).st_mode) == 0o600
        connection = http.client.HTTPConnection("127.0.0.1", info.port, timeout=30)
        connection.request("GET", "/health")
        assert connection.getresponse().status == 401
        served = search_via_server(index, ServedSearch("a test pattern", None, 3, 50, True))
        assert served is not None and len(served[0].hits) == 3
    finally:
        process.terminate()
        assert process.wait(30) == 0
    assert f":{info.port}/?token={info.token} (pid {process.pid})" in process.stderr.read()


def _hits(info, query: str) -> list[tuple[int, float]]:
    connection = http.client.HTTPConnection(info.connect_host, info.port, timeout=60)
    connection.request("POST", "/search", json.dumps({"query": query, "limit": 4}),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200, body
    return [(h["clip_id"], round(h["score"], 5)) for h in json.loads(body)["hits"]]


QUERIES = [f"{colour} {thing}" for colour in ("red", "green", "blue", "grey")
           for thing in ("car", "bars", "fractal", "pattern", "person", "sky")]


def test_concurrent_searches_equal_sequential_ones(server):
    _, info = server
    sequential = {query: _hits(info, query) for query in QUERIES}
    results: dict[str, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def client(queries):
        start.wait()
        try:
            for query in queries:
                results[query] = _hits(info, query)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(QUERIES[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and results == sequential


def test_commits_and_compaction_under_a_busy_server_break_no_query(library, server,
                                                                   tiny_model):
    videos, index, _ = library
    _, info = server
    stop = threading.Event()
    answers: list[int] = []
    errors: list[BaseException] = []

    def busy():
        while not stop.is_set():
            try:
                answers.append(len(_hits(info, "a moving picture")))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

    make_video(videos / "new" / "arrival.mp4", "life", seconds=2)
    threads = [threading.Thread(target=busy) for _ in range(4)]
    for thread in threads:
        thread.start()
    moved = shutil.move(videos / "bars.avi", videos.parent / "bars.avi")
    try:
        added = run_cli("index", str(videos), "--index", str(index))
        assert added.returncode == 0, added.stderr
        removed = run_cli("index", str(videos), "--index", str(index), "--remove-after", "0")
        assert removed.returncode == 0, removed.stderr
        compacted = run_cli("compact", "--index", str(index))
        assert compacted.returncode == 0, compacted.stderr
        assert "dropped 1 dead rows" in compacted.stdout, compacted.stdout
        seen = len(answers)
        while len(answers) < seen + 8 and not errors:  # queries after the compaction
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
        shutil.move(moved, videos / "bars.avi")
    assert not errors and len(answers) > 8 and set(answers) == {4}
    named = _search_fields(info, {"query": "x", "name": "arrival"})
    assert [os.path.basename(h["path"]) for h in named] == ["arrival.mp4"]
    assert _search_fields(info, {"query": "x", "name": "bars.avi"}) == []


def _search_fields(info, fields: dict) -> list[dict]:
    connection = http.client.HTTPConnection(info.connect_host, info.port, timeout=60)
    connection.request("POST", "/search", json.dumps(fields), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    return json.loads(response.read())["hits"]
