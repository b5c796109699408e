"""What benchmarks/run.py times: each variant (floor, trainer, reference) of each mode, in the process
that runs it, so that its peak memory is its own. run.py's docstring says what each variant does.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from traintrain.choices import TEXT_ENCODER_BLOCK
from traintrain.config import ALL_BLOCK_IDS, TrainConfig
from traintrain.models.assembly import TEXT_ENCODER_FOLDERS, build_text_encoder, config_template
from traintrain.models.components import ModelComponents
from traintrain.models.encoding import Conditioning, encode_prompts
from traintrain.models.families import SPECS, Family
from traintrain.models.loading import load_model
from traintrain.models.tiny import write_tiny_model
from traintrain.models.tokenizers import build_tiny_tokenizer
from traintrain.networks.network import AdapterNetwork, NetworkSpec
from traintrain.training.events import Event, Progress

RANK = 16  # alpha = rank: the update's scale is 1 in every variant (diffusers' example sets lora_alpha=rank)
LEARNING_RATE = 1e-4
UNET_BLOCKS = [block for block in ALL_BLOCK_IDS if block != TEXT_ENCODER_BLOCK]  # the floors adapt the UNet only
CAPTION = "a photo of a cat"  # every picture's caption, and iLECO's Original prompt
TARGET_PROMPT = "a photo of a dog"  # iLECO's Target prompt
IMAGES = 8
PHASES = {"LoRA": "LoRA", "iLECO": "iLECO", "Difference": "difference"}  # the trainer's phase that is timed


@dataclass(frozen=True)
class Case:
    """One size: model, resolution, batch and step counts, the same for every variant timed on it."""

    size: str  # its name in the table
    family: str  # sd1, sd2, sdxl
    full: bool  # the family's real architecture (random weights), else the tiny test model
    pixels: int
    batch: int
    warmup: int  # steps run before timing starts
    steps: int  # steps timed
    checkpointing: bool = False


@dataclass
class Measurement:
    seconds_per_step: float
    peak_mb: float
    setup_s: float = 0.0  # from the variant's start to its first step: loading, and the trainer's preparation
    warmup_s: float = 0.0  # the untimed warm-up steps (with train_compile: the compiles are there)
    after_s: float = 0.0  # from the last step to the end: the trainer's saves and previews


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """bf16 on a GPU, as users train there; fp32 on the CPU, where fp16 does not run."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def reset_peak(device: torch.device) -> None:
    """From here on the peak counts: CUDA's allocator peak, or the process's RSS high-water mark."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return process_status_mb("VmHWM")


def process_status_mb(name: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux; NaN elsewhere), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(step: Callable[[], None], case: Case, device: torch.device, started: float) -> Measurement:
    """Seconds per step over case.steps steps after case.warmup untimed ones, and their peak memory.

    The median of each step's time on the CPU (robust to other processes taking the cores for a
    while); on a GPU the mean over all of them, as a wait for the device after each would slow them.
    """
    setup = time.perf_counter() - started
    for _ in range(case.warmup):
        step()
    reset_peak(device)  # on a GPU also waits for the warm-up to finish
    warmup = time.perf_counter() - started - setup
    if device.type == "cuda":
        start = time.perf_counter()
        for _ in range(case.steps):
            step()
        torch.cuda.synchronize()
        return Measurement((time.perf_counter() - start) / case.steps, peak_mb(device), setup, warmup)
    times = []
    for _ in range(case.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return Measurement(statistics.median(times), peak_mb(device), setup, warmup)


# ------------------------------------------------------------------ model and data, written once per run


def full_size_components(family: Family) -> ModelComponents:
    """The family's real UNet, VAE and text encoder(s) with random weights, and the tiny tokenizer(s):
    the architecture decides the cost, the weights and the vocabulary do not."""
    tokenizers = [build_tiny_tokenizer() for _ in SPECS[family].text_encoder_prefixes]
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config_template(family, "unet"))
    vae = AutoencoderKL.from_config(config_template(family, "vae"))
    encoders = [
        build_text_encoder(config_template(family, folder) | {
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        })
        for folder, tokenizer in zip(TEXT_ENCODER_FOLDERS, tokenizers, strict=False)
    ]
    return ModelComponents(family, unet, vae, encoders, tokenizers, source=f"random {family.value}")


def write_model(case: Case, out: Path) -> Path:
    """A diffusers folder every variant loads; on a GPU in bf16 (half the disk, the weights it trains in)."""
    family = Family(case.family)
    if not case.full:
        return write_tiny_model(family, "diffusers", out)
    components = full_size_components(family)
    if torch.cuda.is_available():
        for part in (components.unet, components.vae, *components.text_encoders):
            part.to(torch.bfloat16)
    return write_tiny_model(family, "diffusers", out, components=components)


def write_images(folder: Path, pixels: int) -> list[Path]:
    """IMAGES square noise pictures with CAPTION in caption files: the LoRA data, and Difference's pair."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(IMAGES):
        path = folder / f"{index:02d}.png"
        Image.fromarray(rng.integers(0, 256, (pixels, pixels, 3), dtype=np.uint8)).save(path)
        path.with_suffix(".txt").write_text(CAPTION)
        paths.append(path)
    return paths


# ------------------------------------------------------------------ (b) the trainer


def trainer_config(case: Case, mode: str, model: Path, images: Path, dtype: torch.dtype,
                   compiled: bool = False) -> TrainConfig:
    """The job: same network, rank, precision, batch and resolution as the floor; warm-up + timed steps.
    `compiled`: with train_compile (the compiled variant)."""
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    iterations = case.warmup + case.steps
    settings = dict(
        mode=mode, model=str(model), network_type="lierla", network_rank=RANK, network_alpha=RANK,
        network_blocks=UNET_BLOCKS, train_iterations=iterations, train_batch_size=case.batch,
        train_learning_rate=LEARNING_RATE, train_lr_scheduler="constant", image_size=[case.pixels, case.pixels],
        image_buckets_step=64, image_min_length=case.pixels, train_model_precision=precision,
        train_lora_precision="fp32", train_vae_precision=precision, save_precision="fp16", train_seed=1,
        save_lora_name=f"bench_{mode}", save_overwrite=True, use_gradient_checkpointing=case.checkpointing,
        train_sync_every=0,  # the default: every step on the CPU, every 10 (or 2 s) on a GPU
        preview_sampling_steps=1,  # iLECO always renders previews after training; not timed, kept short
        train_compile=compiled,
    )
    if mode == "LoRA":
        settings |= dict(lora_data_directory=str(images))
    elif mode == "iLECO":
        settings |= dict(original_prompt=CAPTION, target_prompt=TARGET_PROMPT)
    else:  # pass 1 (the copier) is not timed: one step; pass 2 is
        settings |= dict(original_image=str(images / "00.png"), target_image=str(images / "01.png"),
                         train_iterations=1, use_2nd_pass_settings=True, second_pass={"train_iterations": iterations})
    return TrainConfig(**settings)


class ProgressTimer:
    """A reporter that keeps the timed phase's Progress events; resets the peak memory once the warm-up
    is done and reads it at the last step, before the job saves."""

    def __init__(self, phase: str, warmup: int, device: torch.device):
        self.phase, self.warmup, self.device = phase, warmup, device
        self.events: list[Progress] = []
        self.peak: float | None = None
        self.created = time.perf_counter()
        self.phase_started = self.last_step_at = 0.0
        self.warmup_s = 0.0  # the phase's start to its last warm-up step

    def __call__(self, event: Event) -> None:
        if not isinstance(event, Progress) or event.phase != self.phase:
            return
        if event.step >= self.warmup and not any(e.step >= self.warmup for e in self.events):
            reset_peak(self.device)
        if not self.events:
            self.phase_started = time.perf_counter() - event.elapsed
        self.events.append(event)
        if event.step == self.warmup:
            self.warmup_s = event.elapsed
        if event.step == event.total:
            self.peak = peak_mb(self.device)
            self.last_step_at = time.perf_counter()

    def seconds_per_step(self) -> float:
        """The median over the intervals between read-backs (each step on the CPU), per step."""
        first, last = timed_span(self.events, self.warmup)
        reads = [event for event in read_points(self.events) if first.step <= event.step <= last.step]
        per_step = [(b.elapsed - a.elapsed) / (b.step - a.step) for a, b in itertools.pairwise(reads)]
        return statistics.median(per_step)


def read_points(events: list[Progress]) -> list[Progress]:
    """The events reported just after the loop read the losses back: the last of each burst.

    On a GPU the loop reads several steps' losses at once and reports them within microseconds, each
    with the time of the read; a step takes far longer. A gap over a tenth of the largest starts a new
    burst. A boundary missed only shortens the timed span; it cannot bias it.
    """
    gaps = [later.elapsed - earlier.elapsed for earlier, later in itertools.pairwise(events)]
    if not gaps:
        return list(events)
    cut = 0.1 * max(gaps)
    return [event for event, gap in zip(events, gaps, strict=False) if gap > cut] + [events[-1]]


def timed_span(events: list[Progress], warmup: int) -> tuple[Progress, Progress]:
    """From the first read after the warm-up to the last step (always read)."""
    if not events or events[-1].step != events[-1].total:
        raise RuntimeError("the trainer did not report its last step")
    starts = [event for event in read_points(events)[:-1] if event.step >= warmup]
    if not starts:
        raise RuntimeError(f"no read-back between step {warmup} and the last one; time more steps")
    return starts[0], events[-1]


def trainer_measurement(case: Case, mode: str, model: Path, images: Path, workdir: Path,
                        compiled: bool = False) -> Measurement:
    from traintrain.jobs.runner import run_job

    device, dtype = device_and_dtype()
    timer = ProgressTimer(PHASES[mode], case.warmup, device)
    run_job(trainer_config(case, mode, model, images, dtype, compiled), output_dir=workdir, report=timer)
    if timer.peak is None:
        raise RuntimeError(f"no progress of phase {PHASES[mode]}")
    return Measurement(timer.seconds_per_step(), timer.peak, timer.phase_started - timer.created,
                       timer.warmup_s, time.perf_counter() - timer.last_step_at)


# ------------------------------------------------------------------ (a) the floors


@dataclass
class FloorInputs:
    """Everything a floor step reads, computed once: noisy latents, timesteps, target, both prompts."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    original: Conditioning
    target_cond: Conditioning
    pixels: int  # SDXL's time ids


def unet_call(components: ModelComponents, inputs: FloorInputs, cond: Conditioning) -> torch.Tensor:
    """One UNet pass; SDXL also takes the pooled text and the pixel size as time ids."""
    latents, kwargs = inputs.latents, {}
    if components.family is Family.SDXL:
        side = inputs.pixels
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=latents.dtype, device=latents.device)
        kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": time_ids.repeat(latents.shape[0], 1)}
    return components.unet(latents, inputs.timesteps, encoder_hidden_states=cond.hidden, **kwargs).sample


def floor_setup(components: ModelComponents, case: Case) -> FloorInputs:
    """Encode the prompts, then keep only the UNet on the device: the floor needs no VAE or text encoder."""
    device, dtype = device_and_dtype()
    with torch.no_grad():
        encoded = [encode_prompts(components, [prompt] * case.batch) for prompt in (CAPTION, TARGET_PROMPT)]
    side = case.pixels // components.latent_factor
    components.vae, components.text_encoders = None, []
    unet = components.unet.requires_grad_(False).eval().to(device, dtype)
    if case.checkpointing:
        unet.enable_gradient_checkpointing()
        unet.train()  # diffusers checkpoints only in training mode
    shape = (case.batch, unet.config.in_channels, side, side)
    original, target = (
        Conditioning(c.hidden.to(device, dtype), None if c.pooled is None else c.pooled.to(device, dtype))
        for c in encoded
    )
    return FloorInputs(torch.randn(shape, device=device, dtype=dtype), torch.randint(0, 1000, (case.batch,),
                       device=device), torch.randn(shape, device=device, dtype=dtype), original, target, case.pixels)


def adapter(components: ModelComponents) -> AdapterNetwork:
    """Our network as the trainer builds it (lierla, RANK, every UNet block, fp32), hooked in."""
    device, _ = device_and_dtype()
    spec = NetworkSpec(rank=RANK, alpha=RANK, blocks=list(UNET_BLOCKS))
    return AdapterNetwork(components, spec, torch.float32).to(device).apply()


def floor_optimizer(parameters) -> torch.optim.Optimizer:
    """AdamW as the trainer builds it: torch's fused kernel (training/optimizers.py)."""
    return torch.optim.AdamW(parameters, lr=LEARNING_RATE, fused=True)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def lora_floor(components: ModelComponents, case: Case) -> Callable[[], None]:
    """One adapted UNet pass, MSE against the noise, backward, AdamW."""
    inputs = floor_setup(components, case)
    optimizer = floor_optimizer(adapter(components).parameters())

    def step() -> None:
        prediction = unet_call(components, inputs, inputs.original)
        optimizer_step(F.mse_loss(prediction.float(), inputs.target.float()), optimizer)

    return step


def ileco_floor(components: ModelComponents, case: Case) -> Callable[[], None]:
    """iLECO's two passes: the frozen model (adapter off, no grad) on the Target prompt gives the
    target of the adapted pass on the Original prompt; backward, AdamW."""
    inputs = floor_setup(components, case)
    network = adapter(components)
    optimizer = floor_optimizer(network.parameters())

    def step() -> None:
        with torch.no_grad():
            network.set_enabled(False)
            wanted = unet_call(components, inputs, inputs.target_cond)
            network.set_enabled(True)
        prediction = unet_call(components, inputs, inputs.original)
        optimizer_step(F.mse_loss(prediction.float(), wanted.float()), optimizer)

    return step


def difference_floor(components: ModelComponents, case: Case) -> Callable[[], None]:
    """Difference's pass 2: one UNet pass through the frozen copier and, stacked on it, the trained
    difference network; MSE against the noise, backward, AdamW on the difference network."""
    inputs = floor_setup(components, case)
    adapter(components).requires_grad_(False)  # the copier stays hooked in
    optimizer = floor_optimizer(adapter(components).parameters())

    def step() -> None:
        prediction = unet_call(components, inputs, inputs.original)
        optimizer_step(F.mse_loss(prediction.float(), inputs.target.float()), optimizer)

    return step


FLOORS = {"LoRA": lora_floor, "iLECO": ileco_floor, "Difference": difference_floor}


def floor_measurement(case: Case, mode: str, model: Path) -> Measurement:
    device, _ = device_and_dtype()
    torch.manual_seed(0)
    started = time.perf_counter()
    return measure(FLOORS[mode](load_model(model), case), case, device, started)


# ------------------------------------------------------------------ (c) the diffusers-style reference


def adapter_module_names(components: ModelComponents) -> list[str]:
    """The UNet module paths our network adapts, for peft's target_modules."""
    network = AdapterNetwork(components, NetworkSpec(rank=RANK, alpha=RANK, blocks=list(UNET_BLOCKS)))
    targets = {id(module.org_module[0]) for module in network.unet_modules}
    return [name for name, module in components.unet.named_modules() if id(module) in targets]


def reference_batches(components: ModelComponents, case: Case, images: Path):
    """Pixel batches in [-1, 1] and their token ids, prepared once as the example's dataset does."""
    pictures = [
        torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
        for path in sorted(images.glob("*.png"))
    ]
    ids = [tokenizer([CAPTION] * case.batch, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids for tokenizer in components.tokenizers]
    starts = range(0, len(pictures) - case.batch + 1, case.batch)
    return itertools.cycle([(torch.stack(pictures[start:start + case.batch]), ids) for start in starts])


def reference_text(components: ModelComponents, ids: list[torch.Tensor], side: int):
    """The examples' prompt encoding: SD1/SD2 the last hidden state; SDXL both encoders' penultimate
    states and the second's pooled output, with the size as time ids."""
    device = components.unet.device
    if components.family is not Family.SDXL:
        return components.text_encoders[0](ids[0].to(device), return_dict=False)[0], None
    hiddens, pooled = [], None
    for encoder, token_ids in zip(components.text_encoders, ids, strict=False):
        output = encoder(token_ids.to(device), output_hidden_states=True)
        hiddens.append(output.hidden_states[-2])
        pooled = output[0]
    time_ids = torch.tensor([[side, side, 0, 0, side, side]], device=device).repeat(ids[0].shape[0], 1)
    return torch.cat(hiddens, dim=-1), {"text_embeds": pooled, "time_ids": time_ids.to(pooled.dtype)}


def reference_model(components: ModelComponents, case: Case) -> list[torch.nn.Parameter]:
    """Frozen model on the device; peft LoRA on our network's modules, trained in fp32 as ours is."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    device, dtype = device_and_dtype()
    names = adapter_module_names(components)
    for part in (components.unet, components.vae, *components.text_encoders):
        part.requires_grad_(False).to(device, dtype)
    if case.checkpointing:
        components.unet.enable_gradient_checkpointing()
    components.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                           target_modules=names))
    cast_training_params(components.unet, dtype=torch.float32)
    components.unet.train()
    lora = [p for p in components.unet.parameters() if p.requires_grad]
    if len(lora) != 2 * len(names):
        raise RuntimeError(f"peft adapted {len(lora) // 2} modules, our network {len(names)}")
    return lora


def reference_step(components: ModelComponents, case: Case, images: Path) -> Callable[[], None]:
    """train_text_to_image_lora.py's step: VAE encode, text encoder, DDPM add_noise, UNet, MSE,
    the loss read back for the log, backward, clip, AdamW, lr schedule."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    device, dtype = device_and_dtype()
    lora = reference_model(components, case)
    optimizer = torch.optim.AdamW(lora, lr=LEARNING_RATE, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    schedule = get_scheduler("constant", optimizer=optimizer)
    noise_scheduler = DDPMScheduler.from_config(config_template(components.family, "scheduler"))
    batches = reference_batches(components, case, images)
    vae, unet = components.vae, components.unet

    def step() -> None:
        pixels, ids = next(batches)
        latents = vae.encode(pixels.to(device, dtype)).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        hidden, added = reference_text(components, ids, case.pixels)
        prediction = unet(noisy, timesteps, hidden, added_cond_kwargs=added, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.item()  # the example adds it to train_loss every step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()

    return step


def reference_measurement(case: Case, model: Path, images: Path) -> Measurement:
    device, _ = device_and_dtype()
    torch.manual_seed(0)
    started = time.perf_counter()
    return measure(reference_step(load_model(model), case, images), case, device, started)


def run_variant(case: Case, mode: str, variant: str, model: Path, images: Path, workdir: Path) -> Measurement:
    """One variant, in this process."""
    if variant in ("trainer", "compiled"):
        return trainer_measurement(case, mode, model, images, workdir, compiled=variant == "compiled")
    if variant == "floor":
        return floor_measurement(case, mode, model)
    if variant == "reference" and mode == "LoRA":
        return reference_measurement(case, model, images)
    raise ValueError(f"no variant {variant!r} of mode {mode!r}")


def case_from_dict(values: dict) -> Case:
    return Case(**{f.name: values[f.name] for f in dataclasses.fields(Case) if f.name in values})
