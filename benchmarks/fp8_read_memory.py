"""How much memory reading an fp8 model file takes: our reader (one tensor at a time, into bfloat16) against a
plain one (safetensors' load_file, then float32, as the reader did before), each in a fresh process.

    python benchmarks/fp8_read_memory.py [--megabytes 256]

Prints each reader's growth of the process's peak RSS (the file's mapped pages included) and their ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from speed_variants import peak_mb, reset_peak

from traintrain.models.checkpoint_reading import read_checkpoint

SIDE = 4096  # each tensor 4096 x 4096: 16 MB in fp8


def write_fp8_file(path: Path, megabytes: int) -> None:
    tensors = {f"model.diffusion_model.layer{i}.weight": torch.randn(SIDE, SIDE).to(torch.float8_e4m3fn)
               for i in range(max(1, megabytes // 16))}
    save_file(tensors, str(path))


def peak_growth_mb(path: Path, reader: str) -> float:
    """Run in a child process: the peak RSS's growth while reading `path` with `reader`."""
    cpu = torch.device("cpu")
    reset_peak(cpu)  # from the RSS now, imports done
    before = peak_mb(cpu)
    if reader == "ours":
        state = read_checkpoint(path)
    else:
        state = {key: value.float() for key, value in load_file(str(path)).items()}
    assert state
    return peak_mb(cpu) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256, help="size of the fp8 file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(peak_growth_mb(Path(args.child[0]), args.child[1]))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model_fp8.safetensors"
        write_fp8_file(path, args.megabytes)
        growth = {reader: float(subprocess.run([sys.executable, __file__, "--child", str(path), reader],
                                               capture_output=True, text=True, check=True).stdout.split()[-1])
                  for reader in ("ours", "load_file + float32")}
        print(f"fp8 file: {path.stat().st_size / 2**20:.0f} MB")
        for reader, megabytes in growth.items():
            print(f"  {reader:20s} peak RSS growth {megabytes:7.0f} MB")
        print(f"  ours / load_file + float32: {growth['ours'] / growth['load_file + float32']:.2f}")


if __name__ == "__main__":
    main()
