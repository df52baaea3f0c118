"""What the training and evaluation loops share around their batches: a progress bar for a
person watching, and the count of unreadable images (or a stop at the first)."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from condnet.errors import CondnetError


def progress_bar(iterable, total: int, desc: str, enabled: bool) -> Any:
    """`iterable` with a progress bar on stderr when `enabled`."""
    return tqdm(
        iterable, total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True
    )


def count_bad_images(messages: list[str], on_bad_image: str) -> int:
    """Count unreadable images; with data.on_bad_image=error, stop at the first."""
    if messages and on_bad_image == "error":
        raise CondnetError(f"{messages[0]} (data.on_bad_image=error)")
    return len(messages)
