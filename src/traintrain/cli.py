"""The command line face: parse, build a validated TrainConfig, run the core, render its events.

Bad input prints one line naming the problem and the fix and exits with code 2 (no traceback
unless --debug).
"""

from __future__ import annotations

import argparse
import enum
import sys
import traceback
from dataclasses import fields
from pathlib import Path

from traintrain.config import TrainConfig
from traintrain.errors import UserError

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"traintrain: error: {message} (see --help)\n")


def _parameter_table() -> str:
    lines = ["parameters for --set KEY=VALUE (and preset/config JSON keys):"]
    for f in fields(TrainConfig):
        if f.name == "second_pass":
            continue
        default = f.default if f.default is not dataclasses_missing() else f.default_factory()
        if isinstance(default, enum.Enum):
            default = default.value
        if isinstance(default, list):
            default = ",".join(str(v) for v in default)
        choices = ""
        enum_cls = getattr(sys.modules["traintrain.config"], str(f.type), None)
        if isinstance(enum_cls, type) and issubclass(enum_cls, enum.Enum):
            choices = " {" + "|".join(m.value for m in enum_cls) + "}"
        lines.append(f"  {f.name}{choices}\n      {f.metadata['help']} (default: {default!s:.60})")
    lines.append("lists are comma-separated (network_blocks=IN01,OUT03); booleans are true/false.")
    return "\n".join(lines)


def dataclasses_missing():
    import dataclasses

    return dataclasses.MISSING


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="traintrain", description="Train LoRA, iLECO and Difference adapters for Stable Diffusion.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    train = commands.add_parser(
        "train", help="train an adapter", epilog=_parameter_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a LoRA (images), iLECO (two prompts) or Difference (two images) adapter.",
    )
    source = train.add_mutually_exclusive_group()
    source.add_argument("--preset", metavar="NAME", help="start from a shipped preset (LoRA, iLECO, Difference, Difference_Use2ndPass)")
    source.add_argument("--config", metavar="FILE", help="start from a settings JSON file")
    train.add_argument("--mode", help="LoRA, iLECO or Difference (case-insensitive)")
    train.add_argument("--model", metavar="PATH", help="base model: .safetensors/.ckpt file or diffusers folder")
    train.add_argument("--data", metavar="DIR", help="LoRA mode: folder of images (same as lora_data_directory)")
    train.add_argument("--output-dir", metavar="DIR", default="output", help="where the LoRA is saved (default: ./output)")
    train.add_argument("--tokenizer", metavar="DIR", help="folder with the tokenizer (vocab.json, merges.txt) for single-file models")
    train.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="set a parameter (repeatable); see the list below")
    train.add_argument("--debug", action="store_true", help="show tracebacks for errors")

    tiny = commands.add_parser("tiny-model", help="write a tiny random-weight model to check a set-up in seconds")
    tiny.add_argument("--family", choices=["sd1", "sd2", "sdxl"], default="sd1", help="model family (default sd1)")
    tiny.add_argument("--format", choices=["single-file", "diffusers"], default="single-file", help="file layout (default single-file)")
    tiny.add_argument("--out", required=True, metavar="PATH", help="output .safetensors file or folder")
    tiny.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    tiny.add_argument("--debug", action="store_true", help="show tracebacks for errors")

    demo = commands.add_parser("demo", help="train a LoRA on a tiny model and show before/after images")
    demo.add_argument("--out", default="demo_output", metavar="DIR", help="folder for the demo files (default demo_output)")
    demo.add_argument("--steps", type=int, default=None, help="training steps (default: about two minutes on 2 CPU cores)")
    demo.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    buckets = commands.add_parser(
        "buckets", help="show the bucket plan (frames, where each image goes) without training",
        description="Dry run of the image buckets: the frames (width x height) and, with --data, the frames of "
        "every image and the number of training samples. Options default to --config's values, else the defaults.",
    )
    buckets.add_argument("--config", metavar="FILE", help="take the image settings from a settings JSON file")
    buckets.add_argument("--image-size", metavar="H,W", help="training size as height,width (one value = square)")
    buckets.add_argument("--step", metavar="PX", help="bucket size step (image_buckets_step)")
    buckets.add_argument("--min-length", metavar="PX", help="shortest bucket side (image_min_length)")
    buckets.add_argument("--max-ratio", metavar="R", help="largest aspect ratio (image_max_ratio)")
    buckets.add_argument("--sub-image-num", metavar="N", help="extra smaller frames per image (sub_image_num)")
    buckets.add_argument("--mirroring", action="store_true", help="count flipped copies (image_mirroring)")
    buckets.add_argument("--num-multiply", metavar="N", help="repeats of every image (image_num_multiply)")
    buckets.add_argument("--disable-upscale", action="store_true", help="never enlarge images (image_disable_upscale)")
    buckets.add_argument("--data", metavar="DIR", help="folder of images to plan (lora_data_directory)")
    buckets.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    buckets.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    inspect = commands.add_parser("inspect", help="show what a LoRA file is: family, network type, ranks, blocks, metadata")
    inspect.add_argument("file", metavar="FILE", help="a .safetensors LoRA / LoCon / LoHa / LoKr file")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON (every module's rank and alpha)")
    inspect.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    # more subcommands: each adds its parser here and its handler to COMMANDS
    return parser


def parse_assignments(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. --set network_rank=8")
        key, value = item.split("=", 1)
        values[key.strip().replace("-", "_")] = value
    return values


def config_from_args(args) -> TrainConfig:
    from traintrain.presets import load_preset

    if args.preset:
        config = load_preset(args.preset)
    elif args.config:
        config = TrainConfig.load_json(Path(args.config))
    else:
        config = TrainConfig()
    values = parse_assignments(args.set)
    if args.mode:
        values["mode"] = args.mode
    if args.model:
        values["model"] = args.model
    if args.data:
        values["lora_data_directory"] = args.data
    return config.with_values(**values)


def _command_train(args) -> int:
    from traintrain.cli_progress import ProgressPrinter
    from traintrain.jobs.runner import run_job

    config = config_from_args(args)
    if config.model and not Path(config.model).exists():
        raise UserError(f"model not found: {config.model} (give a .safetensors/.ckpt file or a diffusers folder)")
    with ProgressPrinter(verbose=config.logging_verbose) as printer:
        result = run_job(config, output_dir=Path(args.output_dir), tokenizer_dir=args.tokenizer, report=printer)
    print(f"saved {result.path} (seed {result.seed})")
    return 0


def _command_tiny(args) -> int:
    from traintrain.models.tiny import write_tiny_model

    path = write_tiny_model(args.family, args.format, Path(args.out), seed=args.seed)
    print(f"wrote tiny {args.family} model ({args.format}) to {path}")
    return 0


def _command_demo(args) -> int:
    from traintrain.cli_progress import ProgressPrinter
    from traintrain.demo import run_demo

    with ProgressPrinter(verbose=False) as printer:
        result = run_demo(Path(args.out), steps=args.steps, report=printer)
    print(f"LoRA: {result.lora_path}\nbefore/after: {result.image_path}")
    return 0


def _command_buckets(args) -> int:
    import json

    from traintrain.cli_progress import ProgressPrinter
    from traintrain.data.plan_report import dry_run, plan_json, plan_lines

    options = {
        "image_size": args.image_size, "image_buckets_step": args.step, "image_min_length": args.min_length,
        "image_max_ratio": args.max_ratio, "sub_image_num": args.sub_image_num, "image_num_multiply": args.num_multiply,
        "lora_data_directory": args.data, "image_mirroring": args.mirroring or None,
        "image_disable_upscale": args.disable_upscale or None,
    }
    config = TrainConfig.load_json(Path(args.config)) if args.config else TrainConfig()
    config = config.with_values(**{key: value for key, value in options.items() if value is not None})
    with ProgressPrinter(stream=sys.stderr) as printer:  # warnings about skipped images go to stderr
        plan, assignment = dry_run(config, printer)
    print(json.dumps(plan_json(plan, assignment), ensure_ascii=False) if args.json else "\n".join(plan_lines(plan, assignment)))
    return 0


def _command_inspect(args) -> int:
    from traintrain.networks.inspect import format_summary, inspect_lora, summary_json

    summary = inspect_lora(Path(args.file))
    print(summary_json(summary) if args.json else format_summary(summary))
    return 0


COMMANDS = {"train": _command_train, "tiny-model": _command_tiny, "demo": _command_demo, "buckets": _command_buckets,
            "inspect": _command_inspect}


def quiet_libraries() -> None:
    """Library chatter (deprecations, dtype notes) would bury our own messages."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return int(exc.code or 0)
    quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"traintrain: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("traintrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
