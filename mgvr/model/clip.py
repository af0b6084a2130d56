"""ClipEncoder: one open_clip model, its preprocessing recipe, and batched frame/text encoding."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
from PIL import Image

from mgvr.config import ModelIdentity
from mgvr.errors import IncompatibleIndexError, ModelLoadError, UsageError
from mgvr.model import weights

RANDOM_INIT_SEED = 0


@dataclass(frozen=True)
class PreprocessSpec:
    """The model's own image transform, in a form a decoder can apply (ffmpeg filters)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # "bicubic" | "bilinear" | "nearest"
    resize_mode: str  # "shortest" (resize + center crop) | "squash" | "longest" (pad)


class _RandomInitNotice(logging.Filter):
    """Drops open_clip's 'Model initialized randomly' warning (logged on the root logger):
    mgvr asks for random weights on purpose (`--pretrained none`) and records that in the
    index. Installed once at import; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


if not any(isinstance(f, _RandomInitNotice) for f in logging.getLogger().filters):
    logging.getLogger().addFilter(_RandomInitNotice())


def frame_batch_size(device_type: str) -> int:
    """Frames encoded per batch on a device of this type ("cuda", "cpu")."""
    return 512 if device_type == "cuda" else 64


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ClipEncoder:
    """Encodes uint8 frames and captions into L2-normalised embeddings (float32, on the CPU)."""

    def __init__(self, model: torch.nn.Module, tokenizer, identity: ModelIdentity,
                 preprocess: PreprocessSpec, device: torch.device) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.identity = identity
        self.preprocess = preprocess
        self.device = device
        self._mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)

    @classmethod
    def load(cls, model: str, pretrained: str | None, device: str | None = None) -> ClipEncoder:
        resolved = weights.resolve(model, pretrained)
        torch_device = pick_device(device)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                clip_model = open_clip.create_model(
                    resolved.model_name, pretrained=resolved.load_pretrained, device=torch_device,
                    force_preprocess_cfg=resolved.preprocess or None)
        except (RuntimeError, FileNotFoundError, ValueError, OSError, KeyError) as e:
            raise ModelLoadError(
                f"cannot load {resolved.model_name} with weights {resolved.pretrained or 'none'}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; check --model and "
                "--pretrained (a tag, a weights file, or local-dir:PATH)") from e
        if resolved.weights_file is not None:
            weights_sha256 = weights.file_sha256(resolved.weights_file)
        else:
            weights_sha256 = state_dict_sha256(clip_model)
        cfg = clip_model.visual.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
        preprocess = PreprocessSpec(size, tuple(cfg["mean"]), tuple(cfg["std"]),
                                    cfg.get("interpolation", "bicubic"),
                                    cfg.get("resize_mode", "shortest"))
        tokenizer = open_clip.get_tokenizer(resolved.model_name)
        with torch.inference_mode():  # works for every tower type, unlike reading a projection
            embed_dim = int(clip_model.encode_text(tokenizer(["a"]).to(torch_device)).shape[1])
        identity = ModelIdentity(
            name=resolved.model_name,
            pretrained=resolved.pretrained or weights.RANDOM_INIT,
            weights_sha256=weights_sha256,
            embed_dim=embed_dim,
            image_size=size,
            context_length=int(clip_model.context_length),
            architecture=resolved.architecture,
        )
        return cls(clip_model, tokenizer, identity, preprocess, torch_device)

    @property
    def embed_dim(self) -> int:
        return self.identity.embed_dim

    def frame_batch_size(self) -> int:
        return frame_batch_size(self.device.type)

    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 frames on the device -> (N, 3, S, S) model input:
        [0, 1], then (x - mean) / std."""
        return (frames.permute(0, 3, 1, 2).float() / 255.0 - self._mean) / self._std

    @torch.inference_mode()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """(N, S, S, 3) uint8 RGB frames, already resized and cropped -> (N, D) float32."""
        outputs = []
        # Even chunks: 72 frames run as 36 + 36, not as 64 + a nearly empty batch of 8.
        chunks = max(1, math.ceil(len(frames) / self.frame_batch_size()))
        step = max(1, math.ceil(len(frames) / chunks))
        for start in range(0, len(frames), step):
            batch = torch.from_numpy(frames[start:start + step])
            if self.device.type == "cuda":  # pinned pages let the copy overlap the last batch
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True)
            pixels = self.pixels(batch)
            with torch.autocast(self.device.type, dtype=torch.float16,
                                enabled=self.device.type == "cuda"):
                features = self.model.encode_image(pixels)
            outputs.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        if not outputs:
            return torch.empty(0, self.embed_dim)
        return torch.cat(outputs)

    @torch.inference_mode()
    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """(H, W, 3) uint8 RGB pictures of any size -> (N, D) float32: the model's own eval
        transform (open_clip's resize, crop and normalisation, which indexing reproduces
        in ffmpeg), then the image tower, as for frames."""
        if not images:
            return torch.empty(0, self.embed_dim)
        spec = self.preprocess
        transform = open_clip.image_transform(spec.image_size, is_train=False, mean=spec.mean,
                                              std=spec.std, resize_mode=spec.resize_mode,
                                              interpolation=spec.interpolation)
        pixels = torch.stack([transform(Image.fromarray(image)) for image in images])
        with torch.autocast(self.device.type, dtype=torch.float16,
                            enabled=self.device.type == "cuda"):
            features = self.model.encode_image(pixels.to(self.device))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """Captions -> ((Q, D) float32, flags: True where a text ran past the context)."""
        if not texts or any(not text.strip() for text in texts):
            raise UsageError("empty query; pass the text to search for, e.g. "
                             "mgvr search \"a man cooking\"")
        context = self.identity.context_length
        # One extra position shows whether a text would have run past the model's context.
        probe = self.tokenizer(texts, context_length=context + 1)
        truncated = [bool(row[context] != 0) for row in probe]
        tokens = self.tokenizer(texts, context_length=context).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.float16,
                            enabled=self.device.type == "cuda"):
            features = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu(), truncated


def state_dict_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_for_index(identity: ModelIdentity, device: str | None = None) -> ClipEncoder:
    """Load the model an index was built with, refusing weights that differ from the recorded."""
    if identity.architecture:
        weights.register_architecture(identity.architecture, identity.name)
    encoder = ClipEncoder.load(identity.name, identity.pretrained, device)
    if encoder.identity.weights_sha256 != identity.weights_sha256:
        raise IncompatibleIndexError(
            f"the weights at {identity.pretrained} changed since the index was built "
            f"(sha256 {encoder.identity.weights_sha256[:12]}, index has "
            f"{identity.weights_sha256[:12]}); restore them or re-index into a fresh --index")
    return encoder
