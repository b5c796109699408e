"""`key=value` settings text, as train_optimizer_settings and train_lr_scheduler_settings take it.

Both pass keyword arguments to a library class, so they share one syntax: `key=value` per line or
separated by ';', values read as Python literals (0.01, True, 0.9,0.99, [100, 200]).
"""

from __future__ import annotations

import ast
import re

from traintrain.errors import UserError

EXAMPLES = {
    "train_optimizer_settings": "weight_decay=0.01; betas=0.9,0.99",
    "train_lr_scheduler_settings": "eta_min=1e-6; T_max=500",
}


def parse_settings(text: str, field: str = "train_optimizer_settings") -> dict:
    """The keyword arguments written in `text`; a malformed item is a UserError on `field`."""
    settings = {}
    for item in re.split(r"[;\n]", text or ""):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"'{item}' is not key=value", f"e.g. {EXAMPLES.get(field, 'name=value')}", field=field)
        settings[key] = _literal(value.strip())
    return settings


def _literal(text: str):
    words = {"true": True, "false": False, "none": None}
    if text.lower() in words:
        return words[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
