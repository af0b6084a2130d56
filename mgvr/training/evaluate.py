"""Evaluation: coarse only vs exhaustive fine vs coarse-to-fine, with metrics and query time.

All scores come from mgvr.model.scoring, the functions `mgvr search` uses, so the numbers here
describe the retrieval users get. Methods:
    coarse              rank every clip by S_c = t . (W_g v)
    fine                rank every clip by the fine score S (0.5 S_c + 0.8 S_fw + 0.2 S_fs)
    coarse_to_fine@k    the k best by S_c reordered by S, the rest below in coarse order
Query time is the median over queries run one at a time (text already encoded), as a search
runs: coarse recall on a FAISS flat inner-product index, fine scoring with the shared functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from mgvr.indexer.decode import FrameRecipe
from mgvr.model.clip import ClipEncoder
from mgvr.model.head import EercfHead, head_frames, load_checkpoint, read_checkpoint_config
from mgvr.model.scoring import (
    RerankWeights,
    coarse_score,
    coarse_to_fine_order,
    coarse_vectors,
    rerank_score,
)
from mgvr.training.datasets import CaptionedVideos
from mgvr.training.frames import FrameCache, stack_frames
from mgvr.training.metrics import (
    RECALL_AT,
    RankSummary,
    RecallDifference,
    coarse_to_fine_ranks,
    recall_difference,
    summarize,
    target_ranks,
    video_to_text_ranks,
)

DEFAULT_DEPTHS = (10, 50, 100)
TOP_HITS = 10  # hits a timed query returns
SCALED_TIMING_QUERIES = 20
EVAL_SCHEMA = "mgvr.eval/1"


@dataclass(frozen=True)
class EncodedSplit:
    """Features of an evaluation split. Q captions, N clips, F frames, D dims."""

    text: torch.Tensor  # (Q, D)
    frames: torch.Tensor  # (N, F, D) raw f
    head_frames: torch.Tensor  # (N, F, D) z (= f without a trained head)
    mask: torch.Tensor  # (N, F) bool
    coarse: torch.Tensor  # (N, D) v
    targets: torch.Tensor  # (Q,) clip index of each caption
    kinds: tuple[str | None, ...]  # (Q,)
    w_g: torch.Tensor | None
    w_f: torch.Tensor | None

    def replicate(self, clips: int) -> EncodedSplit:
        """The gallery tiled to `clips` clips (for timing at scale); captions unchanged."""
        rows = torch.arange(clips) % self.frames.shape[0]
        return EncodedSplit(self.text, self.frames[rows], self.head_frames[rows],
                            self.mask[rows], self.coarse[rows], self.targets, self.kinds,
                            self.w_g, self.w_f)


@torch.inference_mode()
def encode_split(encoder: ClipEncoder, head: EercfHead | None, data: CaptionedVideos,
                 cache: FrameCache, clips_per_batch: int = 64) -> EncodedSplit:
    """Features of every clip and caption of `data`, with the same encoder calls as indexing
    (ClipEncoder.encode_frames / encode_texts); z and v from the head when there is one."""
    frames_per_clip = cache.frames
    f_parts, z_parts, mask_parts = [], [], []
    for start in range(0, len(data.videos), clips_per_batch):
        batch, mask = stack_frames([cache.load(v) for v in
                                    data.videos[start:start + clips_per_batch]], frames_per_clip)
        features = encoder.encode_frames(batch[mask])
        f = features.new_zeros(*mask.shape, features.shape[-1])
        mask_tensor = torch.from_numpy(mask)
        f[mask_tensor] = features
        z = head_frames(head, f.to(encoder.device), mask_tensor.to(encoder.device)).float().cpu()
        f_parts.append(f)
        z_parts.append(z)
        mask_parts.append(mask_tensor)
    f, z, mask = torch.cat(f_parts), torch.cat(z_parts), torch.cat(mask_parts)
    text = torch.cat([encoder.encode_texts(list(data.captions[i:i + 256]))[0]
                      for i in range(0, len(data.captions), 256)])
    w_g = head.w_g.detach().float().cpu() if head is not None else None
    w_f = head.frame_weights(f.shape[1]).detach().float().cpu() if head is not None else None
    return EncodedSplit(text, f, z, mask, coarse_vectors(z, mask), torch.tensor(data.caption_video),
                        data.caption_kind, w_g, w_f)


def score_matrices(split: EncodedSplit, weights: RerankWeights = RerankWeights(),
                   chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, N) coarse scores and (Q, N) fine scores of every caption against every clip."""
    coarse_parts, fine_parts = [], []
    for start in range(0, split.text.shape[0], chunk):
        text = split.text[start:start + chunk]
        coarse_parts.append(coarse_score(text, split.coarse, split.w_g))
        fine, _ = rerank_score(text, split.coarse, split.frames, split.head_frames, split.mask,
                               weights, split.w_g, split.w_f)
        fine_parts.append(fine)
    return torch.cat(coarse_parts), torch.cat(fine_parts)


@dataclass(frozen=True)
class MethodResult:
    text_to_video: RankSummary
    video_to_text: RankSummary | None  # two-stage retrieval is driven by the text: none
    by_kind: dict[str, RankSummary] = field(default_factory=dict)
    # R@K of this method minus coarse on the same queries, paired bootstrap: group ("all" or
    # a caption kind) -> "r1" | "r5" | "r10" -> difference. Empty for coarse itself.
    gain_over_coarse: dict[str, dict[str, RecallDifference]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"text_to_video": self.text_to_video.as_dict(),
                "video_to_text": self.video_to_text.as_dict() if self.video_to_text else None,
                "by_kind": {k: v.as_dict() for k, v in self.by_kind.items()},
                "gain_over_coarse": {group: {key: d.as_dict() for key, d in gains.items()}
                                     for group, gains in self.gain_over_coarse.items()}}


def _kind_rows(kinds: Sequence[str | None]) -> dict[str, torch.Tensor]:
    names = sorted({k for k in kinds if k})
    return {name: torch.tensor([k == name for k in kinds]) for name in names}


def method_results(ranks: dict[str, torch.Tensor], kinds: Sequence[str | None],
                   video_to_text: dict[str, torch.Tensor] | None = None
                   ) -> dict[str, MethodResult]:
    """Summaries of each method's (Q,) text-to-video ranks, overall and per kind, with each
    method's gain over the "coarse" method (which `ranks` must hold) on the same queries."""
    rows = _kind_rows(kinds)
    baseline = ranks["coarse"]
    results = {}
    for name, method_ranks in ranks.items():
        gains = {}
        if name != "coarse":
            groups = {"all": torch.ones(len(method_ranks), dtype=torch.bool), **rows}
            gains = {group: {f"r{k}": recall_difference(baseline[keep], method_ranks[keep], k)
                             for k in RECALL_AT}
                     for group, keep in groups.items()}
        v2t = (video_to_text or {}).get(name)
        results[name] = MethodResult(
            summarize(method_ranks), summarize(v2t) if v2t is not None else None,
            {kind: summarize(method_ranks[keep]) for kind, keep in rows.items()}, gains)
    return results


def evaluate_rankings(split: EncodedSplit, depths: Sequence[int] = DEFAULT_DEPTHS,
                      weights: RerankWeights = RerankWeights()) -> dict[str, MethodResult]:
    coarse, fine = score_matrices(split, weights)
    ranks = {"coarse": target_ranks(coarse, split.targets),
             "fine": target_ranks(fine, split.targets)}
    for depth in depths:
        ranks[f"coarse_to_fine@{depth}"] = coarse_to_fine_ranks(coarse, fine, split.targets,
                                                                depth)
    video_to_text = {name: video_to_text_ranks(scores, split.targets)
                     for name, scores in (("coarse", coarse), ("fine", fine))}
    return method_results(ranks, split.kinds, video_to_text)


def _coarse_index(split: EncodedSplit) -> faiss.Index:
    vectors = split.coarse if split.w_g is None else split.coarse @ split.w_g.T
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors.numpy(), np.float32))
    return index


def time_queries(split: EncodedSplit, depths: Sequence[int] = DEFAULT_DEPTHS,
                 queries: int = 50, weights: RerankWeights = RerankWeights(),
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median milliseconds per query for each method over the whole gallery of `split`."""
    index = _coarse_index(split)
    texts = split.text[:queries]
    timings: dict[str, float] = {}

    def timed(run: Callable[[torch.Tensor], object]) -> float:
        run(texts[:1])  # warm-up: first calls allocate
        seconds = []
        for q in range(texts.shape[0]):
            started = clock()
            run(texts[q:q + 1])
            seconds.append(clock() - started)
        # The median: on a shared machine a few queries stall behind other processes.
        return float(np.median(seconds)) * 1000

    def coarse_only(text: torch.Tensor) -> object:
        return index.search(text.numpy(), TOP_HITS)

    def fine_all(text: torch.Tensor) -> object:
        scores, _ = rerank_score(text, split.coarse, split.frames, split.head_frames,
                                 split.mask, weights, split.w_g, split.w_f)
        return scores.topk(min(TOP_HITS, scores.shape[1]), dim=1)

    def two_stage(depth: int) -> Callable[[torch.Tensor], object]:
        def run(text: torch.Tensor) -> object:
            _, ids = index.search(text.numpy(), depth)
            rows = torch.from_numpy(ids[0][ids[0] >= 0])
            scores, _ = rerank_score(text, split.coarse[rows], split.frames[rows],
                                     split.head_frames[rows], split.mask[rows], weights,
                                     split.w_g, split.w_f)
            return coarse_to_fine_order(rows[None], scores)
        return run

    with torch.inference_mode():
        timings["coarse"] = timed(coarse_only)
        timings["fine"] = timed(fine_all)
        for depth in depths:
            timings[f"coarse_to_fine@{depth}"] = timed(two_stage(depth))
    return timings


def run_evaluation(dataset: CaptionedVideos, *, cache_dir: Path, checkpoint: Path | None = None,
                   model: str = "ViT-B-32", pretrained: str = "openai",
                   frames: int | None = None, depths: Sequence[int] = DEFAULT_DEPTHS,
                   timing_queries: int = 50, timing_clips: int = 0, workers: int = 2,
                   device: str | None = None,
                   on_note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load the model, encode the split, rank and time; the report as plain data.

    `timing_clips` above the split's size adds a timing on the gallery replicated to that
    many clips (at most SCALED_TIMING_QUERIES queries, since exhaustive scoring is slow there).
    """
    head = None
    if checkpoint is not None:
        encoder, head = load_checkpoint(checkpoint, device)
        frames = frames or int(read_checkpoint_config(checkpoint)["frames"])
    else:
        encoder = ClipEncoder.load(model, pretrained, device)
    frames = frames or 12
    recipe = FrameRecipe(encoder.preprocess.image_size, encoder.preprocess.interpolation,
                         encoder.preprocess.resize_mode)
    cache = FrameCache(cache_dir, recipe, frames)
    failures = cache.fill(dataset.videos, workers)
    for error in failures.values():
        if on_note:
            on_note(f"skipped: {error}")
    if failures:
        dataset = dataset.subset(i for i in range(len(dataset.videos)) if i not in failures)
    split_features = encode_split(encoder, head, dataset, cache)
    methods = evaluate_rankings(split_features, depths)
    timing = {"clips": len(dataset.videos), "queries": min(timing_queries, len(dataset.captions)),
              "ms_per_query": time_queries(split_features, depths, timing_queries)}
    report: dict[str, Any] = {
        "schema": EVAL_SCHEMA, "data": dataset.source,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "model": encoder.identity.name, "pretrained": encoder.identity.pretrained,
        "clips": len(dataset.videos), "queries": len(dataset.captions), "frames": frames,
        "skipped_videos": len(failures),
        "methods": {name: result.as_dict() for name, result in methods.items()},
        "timing": [timing]}
    if timing_clips > len(dataset.videos):
        scaled = split_features.replicate(timing_clips)
        queries = min(timing_queries, SCALED_TIMING_QUERIES)
        report["timing"].append({"clips": timing_clips, "queries": queries,
                                 "replicated": True,
                                 "ms_per_query": time_queries(scaled, depths, queries)})
    return report


def _recall_cell(summary: dict[str, Any], key: str) -> str:
    low, high = summary["intervals"][key]
    return f"{summary[key]:5.1f} [{low:4.1f},{high:5.1f}]"


def _gain_cell(gain: dict[str, float]) -> str:
    return f"{gain['difference']:+5.1f} [{gain['low']:+5.1f},{gain['high']:+5.1f}]"


RECALL_COLUMN = 18


def format_report(report: dict[str, Any]) -> str:
    """Tables of R@K with 95 % bootstrap intervals: all queries, then each caption kind, then
    each method's gain over coarse on the same queries (paired intervals)."""
    methods = report["methods"]
    kinds = sorted({kind for method in methods.values() for kind in method["by_kind"]})
    source = (f"index {report['index']}" if report.get("index")
              else report["checkpoint"] or report["pretrained"])
    lines = [f"{report['queries']} queries, {report['clips']} clips, {report['frames']} frames "
             f"per clip; {report['model']} ({source}); R@K in % [95 % bootstrap interval over "
             "queries]"]
    recall_header = "".join(f" {'R@' + str(k):>{RECALL_COLUMN}}" for k in RECALL_AT)
    for group in ["all", *kinds]:
        overall = group == "all"
        first = next(iter(methods.values()))
        count = (first["text_to_video"] if overall else first["by_kind"][group])["count"]
        header = f"{group + ' (' + str(count) + ')':<20}{recall_header} {'MdR':>6} {'MnR':>7}"
        if overall:
            header += f" {'v2t R@1':>8}" + "".join(f" {'ms/q @' + str(t['clips']):>12}"
                                                   for t in report["timing"])
        lines += ["", header]
        for name, method in methods.items():
            summary = method["text_to_video"] if overall else method["by_kind"][group]
            row = f"{name:<20}" + "".join(f" {_recall_cell(summary, f'r{k}'):>{RECALL_COLUMN}}"
                                          for k in RECALL_AT)
            row += f" {summary['median_rank']:6.1f} {summary['mean_rank']:7.1f}"
            if overall:
                v2t = method["video_to_text"]
                row += f" {v2t['r1']:8.1f}" if v2t else f" {'-':>8}"
                row += "".join(f" {t['ms_per_query'].get(name, float('nan')):12.3f}"
                               for t in report["timing"])
            lines.append(row)
    gain_header = "".join(f" {'dR@' + str(k):>{RECALL_COLUMN}}" for k in RECALL_AT)
    lines += ["", f"{'gain over coarse':<20} {'queries':<8}{gain_header}"]
    for name, method in methods.items():
        for group, gains in method["gain_over_coarse"].items():
            lines.append(f"{name:<20} {group:<8}" + "".join(
                f" {_gain_cell(gains[f'r{k}']):>{RECALL_COLUMN}}" for k in RECALL_AT))
    return "\n".join(lines)
