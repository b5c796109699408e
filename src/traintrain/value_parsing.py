"""Reading parameter values from user text or JSON, with errors in the user's words (JSON types)."""

from __future__ import annotations

import math

from traintrain.errors import UserError

TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off", ""}


def parse_text(name, value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"expected text, got {json_type(value)}", field=name)
    return str(value)


def parse_bool(name, value) -> bool:
    if isinstance(value, bool):
        return value
    if not isinstance(value, (str, int)):
        raise UserError(f"expected true or false, got {json_type(value)}", field=name)
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise UserError(f"'{value}' is not a boolean; use true or false", field=name)


AUTO_WORDS = {"auto", "", "none", "null"}


def parse_auto_bool(name, value) -> bool | None:
    """true, false, or None for "auto" (decided from the model itself)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in AUTO_WORDS):
        return None
    if isinstance(value, str) and value.strip().lower() not in TRUE_WORDS | FALSE_WORDS:
        raise UserError(f"'{value}' is not true, false or auto", field=name)
    return parse_bool(name, value)


def parse_names(name, value, allowed) -> list[str]:
    """Upper-cased names from a list or comma-separated text, each one of `allowed`, without repeats."""
    result = []
    for item in parse_list(name, value):
        if not isinstance(item, str):
            raise UserError(f"expected names in the list, got {json_type(item)}", field=name)
        upper = item.strip().upper()
        if allowed and upper not in allowed:
            raise UserError(f"'{item}' is not one of: {', '.join(allowed)}", field=name)
        if upper not in result:
            result.append(upper)
    return result


def parse_choice(name, value, choice_cls):
    if isinstance(value, choice_cls):
        return value
    if not isinstance(value, str):
        raise UserError(f"expected one of {', '.join(m.value for m in choice_cls)}, got {json_type(value)}", field=name)
    return choice_cls.parse(value, name)


def json_type(value) -> str:
    """A value's type in the words of JSON, which is what users edit."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", tuple: "a list", str: "text", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


def parse_number(name, value, cast, meta):
    if isinstance(value, bool):
        raise UserError("expected a number, got a boolean", field=name)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            raise UserError("expected a number, got an empty value", field=name)
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"'{value}' is not a number", field=name) from None
    if not isinstance(value, (int, float)):
        raise UserError(f"expected a number, got {json_type(value)}", field=name)
    if not math.isfinite(value):
        raise UserError(f"expected a finite number, got {value}", field=name)
    if cast is int:
        if float(value) != int(value):
            raise UserError(f"expected a whole number, got {value}", field=name)
        value = int(value)
    else:
        value = float(value)
    low, high = meta.get("minimum"), meta.get("maximum")
    if low is not None and value < low:
        raise UserError(f"{value} is below the minimum {low}", field=name)
    if high is not None and value > high:
        raise UserError(f"{value} is above the maximum {high}", field=name)
    return value


def parse_list(name, value) -> list:
    if isinstance(value, str):
        return [part for part in (p.strip() for p in value.split(",")) if part]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise UserError(f"expected a comma-separated list, got {json_type(value)}", field=name)


def whole_pixels(value) -> int:
    """A pixel count from JSON or text: 512, 512.0 or "512"; anything else is a ValueError."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(value)
    return int(str(value).strip())


def parse_image_size(name, value) -> list[int]:
    """height,width in pixels; one value means a square; the order the user gave is kept."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else parse_list(name, value)
    try:
        sizes = [whole_pixels(v) for v in items]
    except ValueError:
        raise UserError(f"'{value}' is not height,width in pixels (e.g. 768,512 or 512)", field=name) from None
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 64 or any(s % 8 for s in sizes):
        raise UserError(
            f"'{value}' must be height,width (or one value) of multiples of 8, at least 64", field=name
        )
    return sizes
