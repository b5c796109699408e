"""modules/shared.py: cmd_opts, with --ckpt-dir and --lora-dir (the latter added by the Lora extension's preload)."""

import argparse

cmd_opts = argparse.Namespace(ckpt_dir=None, lora_dir=None)
