"""How much memory reading a model file takes, each reader in a fresh process.

- An fp8 `.safetensors`: our reader (one tensor at a time, into bfloat16) against a plain one (safetensors'
  load_file, then float32, as the reader did before). Printed: the growth of the peak RSS (the file's mapped
  pages included).
- A `.ckpt` (an SD1 model in fp16), the whole model loaded (`load_model`) from a memory-mapped read (ours)
  against torch.load reading the file into memory (as before), in the file's precision (as a GPU run in fp16
  loads it before moving it to the GPU) and in float32 (a CPU run). Printed: the peak of the process's
  anonymous memory (RssAnon, sampled every millisecond), what the system cannot drop under pressure, unlike
  a file's mapped pages.

    python benchmarks/read_memory.py [--megabytes 256] [--full]   # --full: SD1.5's size (a 2 GB .ckpt)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from speed_variants import full_size_components, peak_mb, process_status_mb, reset_peak

from traintrain.models import checkpoint_reading
from traintrain.models.families import Family
from traintrain.models.loading import load_model
from traintrain.models.tiny import write_tiny_model

SIDE = 4096  # each tensor 4096 x 4096: 16 MB in fp8
FP8_READERS = ("ours", "load_file + float32")
CKPT_READERS = ("memory-mapped", "torch.load into memory")


def write_fp8_file(path: Path, megabytes: int) -> None:
    tensors = {f"model.diffusion_model.layer{i}.weight": torch.randn(SIDE, SIDE).to(torch.float8_e4m3fn)
               for i in range(max(1, megabytes // 16))}
    save_file(tensors, str(path))


def write_ckpt(folder: Path, full: bool) -> Path:
    """An SD1 single file in fp16 as a Lightning-style .ckpt, its tokenizer in `model.tokenizer/`."""
    components = full_size_components(Family.SD1) if full else None
    single = write_tiny_model("sd1", "single-file", folder / "model.safetensors", components=components)
    path = folder / "model.ckpt"
    torch.save({"state_dict": {key: value.half() for key, value in load_file(str(single)).items()}}, path)
    single.unlink()
    return path


class AnonymousPeak:
    """The highest RssAnon seen while inside (Linux), sampled by a thread."""

    def __enter__(self) -> AnonymousPeak:
        self.start = self.peak = rss_anon_mb()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.001):
            self.peak = max(self.peak, rss_anon_mb())

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, rss_anon_mb())


def rss_anon_mb() -> float:
    return process_status_mb("RssAnon")


def growth_mb(path: Path, reader: str, dtype: str = "float32") -> float:
    """Run in a child process: what reading `path` with `reader` adds to the measured peak."""
    if reader in FP8_READERS:
        cpu = torch.device("cpu")
        reset_peak(cpu)  # from the RSS now, imports done
        before = peak_mb(cpu)
        state = checkpoint_reading.read_checkpoint(path) if reader == "ours" else {
            key: value.float() for key, value in load_file(str(path)).items()}
        assert state
        return peak_mb(cpu) - before
    if reader == "torch.load into memory":
        load = checkpoint_reading.torch_load
        checkpoint_reading.torch_load = lambda file, mmap=False: load(file)  # type: ignore[assignment]
    with AnonymousPeak() as anonymous:
        components = load_model(path, tokenizer_dir=path.with_name("model.tokenizer"), dtype=getattr(torch, dtype))
    assert components.unet is not None
    return anonymous.peak - anonymous.start


def measured(path: Path, reader: str, dtype: str = "float32") -> float:
    done = subprocess.run([sys.executable, __file__, "--child", str(path), reader, dtype],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256, help="size of the fp8 file")
    parser.add_argument("--full", action="store_true", help="the .ckpt at SD1.5's size (else the tiny SD1 model)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(growth_mb(Path(args.child[0]), *args.child[1:]))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model_fp8.safetensors"
        write_fp8_file(path, args.megabytes)
        growth = {reader: measured(path, reader) for reader in FP8_READERS}
        print(f"fp8 file: {path.stat().st_size / 2**20:.0f} MB")
        for reader, megabytes in growth.items():
            print(f"  {reader:24s} peak RSS growth {megabytes:7.0f} MB")
        print(f"  ours / load_file + float32: {growth['ours'] / growth['load_file + float32']:.2f}")
        path.unlink()
        ckpt = write_ckpt(Path(folder), args.full)
        size = "at SD1.5 size" if args.full else "tiny"
        print(f".ckpt file (SD1 {size}, fp16): {ckpt.stat().st_size / 2**20:.0f} MB")
        for dtype in ("float16", "float32"):
            growth = {reader: measured(ckpt, reader, dtype) for reader in CKPT_READERS}
            for reader, megabytes in growth.items():
                print(f"  loaded as {dtype}, {reader:24s} peak anonymous memory growth {megabytes:7.0f} MB")
            print(f"  loaded as {dtype}, memory-mapped / torch.load into memory: "
                  f"{growth['memory-mapped'] / growth['torch.load into memory']:.2f}")


if __name__ == "__main__":
    main()
