"""Data-parallel training over the processes `accelerate launch` starts (torch.distributed underneath).

Every process builds the same model, network and seed, so all draw the same batches, noise and
timesteps; each runs the UNet on its own contiguous shard of every batch, and one all-reduce per
step averages the gradients and the loss, so every process takes the same optimizer step and
the result is that of one process training the whole batch. Only the main process reports,
logs, saves and previews. A stop request is agreed on at the steps where the losses are read back
(a read waits for the device anyway), so all processes stop after the same step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import overload

import torch

from traintrain.errors import UserError


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    count: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.count > 1

    def device(self) -> torch.device:
        """The process's own GPU (its local rank), or the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank) if self.distributed else torch.device("cuda")
        return torch.device("cpu")

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.count:
            raise UserError(
                f"train_batch_size {batch_size} cannot be split over {self.count} processes",
                f"set train_batch_size to a multiple of {self.count} (each process trains an equal share "
                "of every batch)",
                field="train_batch_size",
            )

    def agree(self, value: int) -> int:
        """The main process's value (a random seed) in every process."""
        if not self.distributed:
            return value
        shared = [value]
        torch.distributed.broadcast_object_list(shared, src=0)
        return shared[0]

    def share(self, batch: int) -> tuple[int, int]:
        """This process's [start, end) of a batch of `batch` samples: contiguous, sizes differing by at most one
        (a bucket's last batch may be smaller than train_batch_size, or than the number of processes)."""
        size, extra = divmod(batch, self.count)
        start = self.rank * size + min(self.rank, extra)
        return start, start + size + (1 if self.rank < extra else 0)

    @overload
    def shard(self, tensor: torch.Tensor) -> torch.Tensor: ...

    @overload
    def shard(self, tensor: None) -> None: ...

    def shard(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """This process's share of a batch (dim 0); the batch is the same in every process. A process left
        without a sample runs on the first one and `weigh` gives its loss no weight."""
        if tensor is None or not self.distributed:
            return tensor
        start, end = self.share(tensor.shape[0])
        return tensor[start:end] if end > start else tensor[:1]

    def weigh(self, loss: torch.Tensor, batch: int) -> torch.Tensor:
        """A shard's mean loss scaled so that `average` gives the mean over the whole batch of `batch`
        samples, whatever the shards' sizes."""
        if not self.distributed:
            return loss
        start, end = self.share(batch)
        return loss * ((end - start) * self.count / batch)

    def average(self, params, loss: torch.Tensor, stop_requested: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Average the gradients and the loss over the processes in one all-reduce, and count the stop
        requests; returns the mean loss and the count (a tensor: read it where the loop reads anyway).
        One process: the loss as it is and no count."""
        if not self.distributed:
            return loss, None
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [
            loss.detach().reshape(1).float(), torch.tensor([float(stop_requested)], device=loss.device),
        ])
        torch.distributed.all_reduce(flat)
        offset = 0
        for param, grad in zip(params, grads, strict=True):
            count = grad.numel()
            averaged = (flat[offset : offset + count] / self.count).view_as(grad).to(grad.dtype)
            if param.grad is None:
                param.grad = averaged
            else:
                param.grad.copy_(averaged)
            offset += count
        return flat[offset] / self.count, flat[offset + 1]


SINGLE = Processes()


def launched_processes() -> Processes:
    """The process group `accelerate launch` set up in the environment, joined once; else one process."""
    count = int(os.environ.get("WORLD_SIZE", "1"))
    if count <= 1:
        return SINGLE
    processes = Processes(int(os.environ["RANK"]), count, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(processes.local_rank)
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return processes

