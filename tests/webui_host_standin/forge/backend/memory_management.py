"""Forge backend/memory_management.py: unload_all_models()."""

from modules.host_calls import record


def unload_all_models():
    record("unload_all_models")
