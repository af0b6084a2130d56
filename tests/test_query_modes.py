"""Queries beyond text: by image, "more like this" from a result's frame, and filters (folder,
file name, modification dates) applied inside the coarse search. Real videos, the real tiny
open_clip model, a real FAISS index checked against brute force. (The selector inside FAISS
is tested per segment layout in test_coarse_ivf.py.)"""

import datetime as dt
import json
import os

import numpy as np
import pytest
import torch
from conftest import ffmpeg, run_cli
from PIL import Image
from synthetic import SyntheticSpace, write_index

from mgvr import Index
from mgvr.config import ModelIdentity
from mgvr.errors import UsageError
from mgvr.retriever import Retriever
from mgvr.retriever.filters import SearchFilter

SAMPLE = "samples/bigbuckbunny.mp4"


@pytest.fixture(scope="module")
def retriever(indexed_videos):
    return Retriever(indexed_videos[1], device="cpu")


def _frame_png(video, seconds, path, size="400x300"):
    """A picture of the video at `seconds`, at another size than the model's input."""
    ffmpeg("-ss", str(seconds), "-i", str(video), "-frames:v", "1", "-s", size, str(path))
    return path


def test_image_query_finds_the_video_the_picture_comes_from(indexed_videos, retriever,
                                                            tmp_path):
    videos, _ = indexed_videos
    picture = _frame_png(videos / SAMPLE, 2.0, tmp_path / "bunny.png")
    result = retriever.search_image(picture, limit=5)
    assert result.query_kind == "image" and result.query == "bunny.png"
    assert result.hits[0].path == str(videos / SAMPLE)
    assert "image_encode" in result.timings_ms
    # A path, its bytes and its pixels are the same query.
    from_bytes = retriever.search_image(picture.read_bytes(), limit=5)
    from_array = Index(indexed_videos[1], device="cpu").search_image(
        np.asarray(Image.open(picture).convert("RGB")), limit=5)
    assert [h.clip_id for h in from_bytes.hits] == [h.clip_id for h in result.hits]
    assert [h.clip_id for h in from_array] == [h.clip_id for h in result.hits]


def test_image_encoding_matches_the_indexed_frame(indexed_videos, retriever, tmp_path):
    """The same picture through PIL (query) and through ffmpeg (indexing) gives the same
    embedding: both apply the model's own resize and crop."""
    videos, _ = indexed_videos
    hit = retriever.search_image(_frame_png(videos / SAMPLE, 2.0, tmp_path / "a.png"), 1).hits[0]
    record = retriever.catalog.clips_by_ids([hit.clip_id])[hit.clip_id]
    row = retriever.fine.read_batch([(record.part, record.row)])
    moment = float(row.frame_times[0, 1])
    picture = _frame_png(videos / SAMPLE, moment, tmp_path / "b.png", size="1280x720")
    query = retriever.encoder.encode_images([np.asarray(Image.open(picture).convert("RGB"))])[0]
    stored = torch.nn.functional.normalize(torch.from_numpy(row.features[0].astype(np.float32)),
                                           dim=1)
    similarities = stored @ query
    assert similarities.argmax() == 1 and similarities[1] > 0.99


@pytest.mark.parametrize("content, message", [
    (b"not an image at all", "not an image format mgvr can read"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image"),
])
def test_unreadable_images_are_usage_errors(retriever, tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        retriever.search_image(path)
    with pytest.raises(UsageError, match="no such file"):
        retriever.search_image(tmp_path / "missing.jpg")


def test_more_like_this_searches_with_the_stored_frame_feature(retriever):
    text_hit = retriever.search("a rabbit in a meadow", limit=3).hits[0]
    frame = 2
    moment = text_hit.frame_times[frame] + 0.01  # the frame nearest the moment is taken
    result = retriever.search_like(text_hit.clip_id, moment, limit=50)
    assert result.query_kind == "clip" and result.query == (
        f"clip {text_hit.clip_id} at {text_hit.frame_times[frame]:.1f}s")
    assert set(result.timings_ms) == {"frame_fetch", "recall", "fetch", "rerank"}  # no encoding
    record = retriever.catalog.clips_by_ids([text_hit.clip_id])[text_hit.clip_id]
    stored = retriever.fine.read_batch([(record.part, record.row)]).features[0, frame]
    vector = torch.nn.functional.normalize(torch.from_numpy(stored.astype(np.float32)), dim=0)
    assert retriever.search_vector(vector, 50, 50, True, {}) == list(result.hits)
    source = next(h for h in result.hits if h.clip_id == text_hit.clip_id)
    assert source.best_frame == frame  # in its own clip, the gate picks the query frame
    with pytest.raises(UsageError, match="clip 999999 is not in the index"):
        retriever.search_like(999999)


def test_hits_carry_their_frames_and_gate_weights(retriever):
    hit = retriever.search("colour bars", limit=1).hits[0]
    assert len(hit.frame_times) == len(hit.frame_weights) > 1
    assert sum(hit.frame_weights) == pytest.approx(1, abs=1e-3)
    assert hit.best_frame == int(np.argmax(hit.frame_weights))
    assert hit.best_moment_s == pytest.approx(hit.frame_times[hit.best_frame], abs=1e-3)


def test_cli_image_search_and_filters(indexed_videos, tmp_path):
    videos, index = indexed_videos
    picture = _frame_png(videos / SAMPLE, 2.0, tmp_path / "query.jpg")
    result = run_cli("search", "--image", str(picture), "--index", str(index), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "mgvr.search/1" and document["query_kind"] == "image"
    assert document["hits"][0]["path"] == str(videos / SAMPLE)

    nested = videos / "corpus" / "nested"
    under = run_cli("search", "a clip", "--index", str(index), "--json", "--under",
                    os.path.relpath(nested), "-n", "50")
    paths = {hit["path"] for hit in json.loads(under.stdout)["hits"]}
    assert paths == {str(nested / "dir with space" / "ünïcode clip.mp4")}
    assert json.loads(under.stdout)["filter"] == {"under": str(nested)}

    named = run_cli("search", "a clip", "--index", str(index), "--json", "--name", "ÜNÏCODE")
    assert {h["path"] for h in json.loads(named.stdout)["hits"]} == paths

    future = run_cli("search", "a clip", "--index", str(index), "--modified-after", "2999-01-01")
    assert future.returncode == 0 and "no clip matches the filter" in future.stdout
    bad = run_cli("search", "a clip", "--index", str(index), "--modified-before", "last week")
    assert bad.returncode == 2 and "'last week' is not a date YYYY-MM-DD" in bad.stderr
    both = run_cli("search", "a clip", "--image", str(picture), "--index", str(index))
    assert both.returncode == 2 and "either QUERY or --image" in both.stderr


def test_filter_parsing():
    day = SearchFilter.parse(modified_after="2024-05-01", modified_before=dt.date(2024, 6, 1))
    assert day.modified_after == dt.datetime(2024, 5, 1).astimezone()
    assert day.to_json()["modified_before"].startswith("2024-06-01T00:00:00")
    assert not SearchFilter.parse("", " ", "", None)
    with pytest.raises(UsageError, match="must be earlier than"):
        SearchFilter.parse(modified_after="2024-06-01", modified_before="2024-05-01")


DIM = 32


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic index of 6000 clips in videos of 1 to 40 clips, mtime = video number."""
    root = tmp_path_factory.mktemp("synthetic") / "index"
    identity = ModelIdentity("synthetic", "none", "0" * 64, DIM, 64, 77)
    space = SyntheticSpace.make(DIM, 30, rank=8)
    write_index(root, identity, 6000, 4, space, part_rows=1500)
    return root, space


def test_catalog_turns_a_filter_into_clip_ids(synthetic):
    root, _ = synthetic
    catalog = Retriever(root, device="cpu").catalog
    everything = catalog.clip_ids_matching()
    assert np.array_equal(everything, np.sort(everything)) and len(everything) == 6000
    assert len(catalog.clip_ids_matching(under="/synthetic")) == 6000
    assert len(catalog.clip_ids_matching(under="/synth")) == 0  # a folder, not a prefix
    one = catalog.clip_ids_matching(name="VIDEO-0000007.MP4")
    assert list(one) == catalog.clip_ids_of("/synthetic/video-0000007.mp4")
    early = catalog.clip_ids_matching(modified_after_ns=3, modified_before_ns=5)
    assert sorted(early) == sorted(catalog.clip_ids_of("/synthetic/video-0000003.mp4")
                                   + catalog.clip_ids_of("/synthetic/video-0000004.mp4"))


def test_filtered_search_finds_hits_outside_the_unfiltered_top_k(synthetic):
    """A video whose clips are nowhere near the unfiltered top 50 still gives every one of its
    clips to a query filtered to it, in the order exact search over them gives."""
    root, space = synthetic
    retriever = Retriever(root, device="cpu")
    query = torch.from_numpy(space.queries(1, np.random.default_rng(1))[0])
    top = {h.clip_id for h in retriever.search_vector(query, 50, 50, True, {})}
    records = retriever.catalog.clips_by_ids(retriever.catalog.all_clip_ids())
    ids = np.array(sorted(records), np.int64)
    vectors = retriever.fine.read_batch([(records[i].part, records[i].row) for i in ids]).coarse
    rank = dict(zip(ids[np.argsort(-(vectors @ query.numpy()))].tolist(), range(len(ids)),
                    strict=True))
    best_rank: dict[str, int] = {}
    for clip_id, record in records.items():
        best_rank[record.video_path] = min(rank[clip_id], best_rank.get(record.video_path, 10**9))
    far_video = max(best_rank, key=best_rank.get)  # its best clip ranks lowest of all videos
    allowed = np.sort(np.asarray(retriever.catalog.clip_ids_of(far_video)))
    assert best_rank[far_video] > 1000 and not top & set(allowed.tolist())

    filtered = retriever.search_vector(query, 50, 50, False, {}, allowed)
    scores = vectors[np.isin(ids, allowed)] @ query.numpy()
    expected = ids[np.isin(ids, allowed)][np.argsort(-scores)]
    assert [h.clip_id for h in filtered] == expected[:50].tolist()
    assert all(h.path == far_video for h in filtered)
