"""The order of training samples and clicks: the seeded train/validation split, the endless sample
stream, per-object click seeds and mask chunks (all independent of the number of processes).
"""

from __future__ import annotations

import numpy as np

from unsamv2_engine.train.config import FinetuneConfig
from unsamv2_engine.train.dataset import sample_seed

__all__ = ["STREAM_ORDER", "SampleOrder", "mask_chunks", "object_click_seed", "split_indices"]

STREAM_ORDER = 4


def split_indices(n: int, config: FinetuneConfig) -> tuple[list[int], list[int]]:
    """(train, val) dataset indices: a seeded random ``val_fraction`` (at most ``val_max_images``) held out."""
    if config.val_fraction <= 0 or n < 2:
        return list(range(n)), []
    n_val = min(max(1, round(config.val_fraction * n)), config.val_max_images, n - 1)
    order = np.random.default_rng(sample_seed(config.seed, 0, 0, STREAM_ORDER)).permutation(n)
    val = sorted(int(i) for i in order[:n_val])
    return sorted(set(range(n)) - set(val)), val


class SampleOrder:
    """The endless stream of training samples: epoch after epoch, a seeded permutation of the train set."""

    def __init__(self, train_indices: list[int], seed: int) -> None:
        self.train = list(train_indices)
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def at(self, position: int) -> tuple[int, int]:
        """(epoch, dataset index) of stream position ``position``."""
        n = len(self.train)
        epoch, offset = divmod(position, n)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng(sample_seed(self.seed, epoch, 0, STREAM_ORDER)).permutation(n)}
        return epoch, self.train[int(self._perms[epoch][offset])]


def object_click_seed(click_seed: int, object_index: int) -> int:
    """The click-generator seed of object ``object_index`` of a sample (independent of chunking)."""
    return (int(click_seed) * 1_000_003 + 7919 * (int(object_index) + 1)) & 0x7FFF_FFFF_FFFF_FFFF


def mask_chunks(num_masks: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``num_masks`` masks, ``chunk`` at a time (0: all at once)."""
    step = num_masks if chunk <= 0 else int(chunk)
    return [(lo, min(lo + step, num_masks)) for lo in range(0, max(num_masks, 1), max(step, 1))]
