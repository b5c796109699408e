"""On-disk cache of VAE latent distributions, so a second run on the same images skips encoding.

An entry is keyed by the image file's bytes, the frame, whether it is the mirrored copy, and a
fingerprint of the VAE (its encoder weights and dtype): an edited image, another frame or another
VAE never reuses a stale latent. The distribution (mean, std) is stored rather than a sample, so
each run still draws its own sample from its seed, exactly as it would without the cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from traintrain.errors import UserError
from traintrain.fileio import atomic_path

CACHE_VERSION = "1"
"""Part of every key: change it when image preparation (conversion, resizing) changes."""

_ENCODER_PREFIXES = ("encoder.", "quant_conv.")


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks so large images do not sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def vae_fingerprint(vae) -> str:
    """sha256 of the VAE encoder's weights and dtype: only the encoder shapes a latent."""
    digest = hashlib.sha256(type(vae).__name__.encode())
    for name, tensor in vae.state_dict().items():
        if not name.startswith(_ENCODER_PREFIXES):
            continue
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class LatentCache:
    """A folder of `{key}.safetensors` files, each holding the `mean` and `std` of one encoding."""

    def __init__(self, folder: Path, vae_id: str):
        self.folder = Path(folder)
        self.vae_id = vae_id
        self.hits = 0
        self.misses = 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(
                f"latent_cache_dir {self.folder} cannot be created ({error.strerror}): choose a writable folder"
            ) from error

    @classmethod
    def for_vae(cls, folder: str | Path, vae) -> LatentCache:
        return cls(Path(folder), vae_fingerprint(vae))

    def key(self, image_digest: str, frame: tuple[int, int], mirrored: bool) -> str:
        text = f"v{CACHE_VERSION}|{image_digest}|{frame[0]}x{frame[1]}|mirrored={mirrored}|{self.vae_id}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def load(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached (mean, std), or None when absent or unreadable (it is then encoded again)."""
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            tensors = load_file(str(path))
            entry = tensors["mean"], tensors["std"]
        except (SafetensorError, OSError, KeyError):
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def store(self, key: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        tensors = {"mean": mean.float().contiguous(), "std": std.float().contiguous()}
        try:
            with atomic_path(self._path(key)) as tmp:
                save_file(tensors, str(tmp), metadata={"format": "traintrain-latent", "version": CACHE_VERSION})
        except OSError as error:
            raise UserError(
                f"cannot write to latent_cache_dir {self.folder} ({error.strerror}): free disk space or "
                "choose another folder"
            ) from error
