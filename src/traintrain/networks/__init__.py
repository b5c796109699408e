"""Adapter networks (LoRA family): modules, targeting (blocks, elements), kohya-format files."""
