"""Model families, offline loading of single-file checkpoints and diffusers folders, tiny models."""
