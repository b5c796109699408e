"""Not a host module: the record of what the extension called, in order, with the time."""

import time

calls: list[tuple[str, float]] = []


def record(name: str) -> None:
    calls.append((name, time.time()))


def names() -> list[str]:
    return [name for name, _ in calls]
