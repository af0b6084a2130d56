"""SearchService: what the routes do, over one warm Retriever shared by every request.

Searches run concurrently on a pool of search threads (no lock around them): FAISS answers
each thread's queries on one OpenMP thread (set once per thread by the recall stage), and
torch's thread count is set once for the process by `mgvr serve --threads`. The routes only
await the pool, so the event loop keeps answering /health, files and new connections while
searches run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from mgvr.errors import MgvrError, UsageError
from mgvr.indexer.thumbnails import MEDIA_TYPE
from mgvr.retriever.filters import SearchFilter
from mgvr.retriever.results import search_document
from mgvr.retriever.search import Retriever
from mgvr.serve import discovery
from mgvr.serve.schema import SearchRequest
from mgvr.storage.maintenance import status as index_status

RECENT_RUNS = 10


class WrongIndex(MgvrError):
    """The request was meant for another index (409)."""


class NotFound(MgvrError):
    """No such clip, or its video is gone or changed (404); `reason` says which."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageUpload:
    name: str
    content: bytes


class SearchService:
    def __init__(self, retriever: Retriever, workers: int) -> None:
        self.retriever = retriever
        self.index = discovery.index_key(retriever.layout.root)
        self.started_at = time.time()
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="mgvr-search")
        self._count_lock = threading.Lock()  # guards only the counter, never a search
        self.queries_served = 0
        # (generation, size, mtime_ns) the catalog records for a video path, so the video
        # route's Range requests during playback do not each ask the catalog.
        self._indexed: dict[str, tuple[int, int, int]] = {}

    async def run(self, function, *args):
        """`function(*args)` on a search thread, awaited."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(function, *args))

    def warm_up(self) -> None:
        """Load the model, the coarse index and the first sidecars before the first request,
        on a search thread, as requests will."""
        def warm() -> None:
            self.retriever.prefetch()
            self.retriever.search("warm up", limit=1)
        self.executor.submit(warm).result()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    # searches ---------------------------------------------------------------------------
    def search(self, request: SearchRequest, image: ImageUpload | None = None) -> dict:
        if request.index not in (None, self.index):
            raise WrongIndex(f"this server serves {self.index}, not {request.index}")
        self.retriever.config.model.check_request(self.retriever.layout.root, request.model,
                                                  request.pretrained)
        kinds = [k for k, given in (("query", request.query is not None),
                                    ("like", request.like is not None),
                                    ("image", image is not None)) if given]
        if len(kinds) != 1:
            raise UsageError("a search needs one of \"query\" (text), \"like\" (a clip id) "
                             f"or an \"image\" upload, not {' and '.join(kinds) or 'none'}")
        if request.under and not os.path.isabs(request.under):
            raise UsageError(f"\"under\" must be an absolute folder, not {request.under!r}")
        search_filter = SearchFilter.parse(request.under, request.name, request.modified_after,
                                           request.modified_before)
        counts = (request.limit, request.rerank_depth, request.rerank, search_filter)
        if image is not None:
            result = replace(self.retriever.search_image(image.content, *counts),
                             query=image.name)
        elif request.like is not None:
            result = self.retriever.search_like(request.like, request.at, *counts)
        else:
            result = self.retriever.search(request.query, *counts)
        with self._count_lock:
            self.queries_served += 1
        document = search_document(result, request.rerank, request.rerank_depth)
        for hit in document["hits"]:
            hit["video"] = "ok" if os.path.isfile(hit["path"]) else "gone"
        return {**document, "context_length": self.retriever.config.model.context_length}

    # reports ------------------------------------------------------------------------------
    def status(self) -> dict:
        report = index_status(self.retriever.layout, self.retriever.catalog, RECENT_RUNS)
        return {**report, **self.retriever.status(), "pid": os.getpid(),
                "queries_served": self.queries_served,
                "uptime_s": round(time.time() - self.started_at, 3)}

    def health(self) -> dict:
        return {"status": "ok", "pid": os.getpid(), "index": self.index}

    # files --------------------------------------------------------------------------------
    def sprite(self, clip_id: int) -> tuple[bytes, str]:
        """(image, its media type): the clip's stored frame sprite (its sampled frames side by
        side, square tiles in sample order), made at index time, so it outlives the video."""
        found = self.retriever.thumbnail_sprite(clip_id)
        if found is None:
            raise NotFound(f"clip {clip_id} has no thumbnails (not in the index, or indexed "
                           "before mgvr stored them)", "no-thumbnails")
        image = found[0]
        # Indexes from before WebP sprites hold JPEG ones: name what these bytes are.
        return image, ("image/jpeg" if image.startswith(b"\xff\xd8") else MEDIA_TYPE)

    def video_path(self, clip_id: int) -> str:
        """The video file of a clip, if it is still the file that was indexed: same size and
        modification time as the catalog records (so a path swapped for a link to something
        else, or a re-encoded file, is not served)."""
        record = self.retriever.catalog.clips_by_ids([clip_id]).get(clip_id)
        if record is None:
            raise NotFound(f"clip {clip_id} is not in the index", "no-clip")
        path = record.video_path
        indexed = self._indexed_identity(path)
        try:
            info = os.stat(path)
        except OSError:
            raise NotFound(f"{path}: the video is gone (moved or deleted since it was "
                           "indexed)", "gone") from None
        if (indexed is None or not stat.S_ISREG(info.st_mode)
                or (info.st_size, info.st_mtime_ns) != indexed):
            raise NotFound(f"{path}: the file changed since it was indexed; run `mgvr index` "
                           "to index it again", "changed")
        return path

    def _indexed_identity(self, path: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of a video as the current generation's catalog records it."""
        generation = self.retriever.catalog.generation()
        cached = self._indexed.get(path)
        if cached is None or cached[0] != generation:
            video = self.retriever.catalog.videos_under(os.path.dirname(path)).get(path)
            if video is None:
                return None
            if len(self._indexed) > 10_000:
                self._indexed.clear()
            cached = self._indexed[path] = (generation, video.size, video.mtime_ns)
        return cached[1], cached[2]
