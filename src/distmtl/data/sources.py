"""Torch datasets over encoded sources; images are decoded lazily, in DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from distmtl.data.csvformat import EncodedSource
from distmtl.data.transforms import array_to_image, decode_tensor, load_image
from distmtl.errors import DistmtlError


class SourceDataset(Dataset):
    """One source: item ``i`` is ``{"image", "targets", "masks", "groups"}`` in the batch layout.

    ``groups`` maps each identity task to the sample's identity group id in this source (-1:
    missing); it is empty without identity tasks. Every item of a source has the same keys, and
    every source of one experiment the same tasks, so default collation works across sources.
    """

    def __init__(self, source: EncodedSource, transform: Callable, channels: int,
                 draft_size: int | None = None, as_tensor: bool = False):
        self.source = source
        self.transform = transform  # returns the image tensor, or a dict of item fields ("image", "aug")
        self.channels = channels
        self.draft_size = draft_size  # training: JPEGs decode at a reduced DCT scale covering this
        self._reader = None  # a packed source's records, opened in the process that reads them
        self.as_tensor = as_tensor  # decode with torchvision.io to a uint8 tensor instead of a PIL image
        self._targets = {t: torch.from_numpy(v) for t, v in source.targets.items()}
        self._masks = {t: torch.from_numpy(v) for t, v in source.masks.items()}
        # a source restricted to some tasks (dataclasses.replace of targets/masks) keeps all groups
        self._groups = {t: torch.from_numpy(v) for t, v in source.groups.items() if t in source.targets}

    def __len__(self) -> int:
        return len(self.source)

    def decode(self, i: int):
        ref = self.source.images[i]
        if self.source.pixels is not None:
            array = self.source.pixels[int(ref)]
            if (array.ndim == 2 and self.channels == 1) or (array.ndim == 3 and array.shape[2] == self.channels == 3):
                # already in the model's colour mode: a CHW uint8 tensor skips the PIL round trip
                tensor = torch.from_numpy(np.ascontiguousarray(array))
                return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
            return array_to_image(array, self.channels)
        if self.source.shards is not None:
            if self._reader is None:
                from distmtl.data.shards import ShardReader

                self._reader = ShardReader(self.source.shards)
            where = f"{self.source.shards} record {int(ref)}"
            try:
                data = self._reader[int(ref)]
                if self.as_tensor:
                    return decode_tensor(data, self.channels, where)
                return load_image(data, self.channels, self.draft_size)
            except DistmtlError as exc:
                raise DistmtlError(f"{where}: {exc}") from None
        if self.as_tensor:
            return decode_tensor(ref, self.channels, str(ref))
        return load_image(ref, self.channels, self.draft_size)

    def __getitem__(self, i: int) -> dict:
        out = self.transform(self.decode(i))
        item = {
            "targets": {t: v[i] for t, v in self._targets.items()},
            "masks": {t: v[i] for t, v in self._masks.items()},
            "groups": {t: v[i] for t, v in self._groups.items()},
        }
        item.update(out if isinstance(out, dict) else {"image": out})
        return item


class IndexedDataset(Dataset):
    """``dataset``'s items with their position in it (``item["index"]``): rows evaluated by several
    processes can then be put back in the dataset's order, each once."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "index": i}


class MultiSourceDataset(Dataset):
    """Several sources behind one global index: source ``s`` holds ``offsets[s] .. offsets[s+1]-1``."""

    def __init__(self, datasets: Sequence[SourceDataset], seed: int = 0):
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.seed = int(seed)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict:
        """``index`` may carry the epoch (``sample + epoch * len(self)``, as the sampler yields it):
        the sample's random augmentation is then a function of (seed, epoch, sample) alone."""
        epoch, index = divmod(int(index), len(self))
        s = int(np.searchsorted(self.offsets, index, side="right") - 1)
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed would also queue a CUDA reseed, which on a
            # CUDA build without an initialised GPU records a stack trace per call (2 ms a sample)
            torch.default_generator.manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)
            item = self.datasets[s][index - int(self.offsets[s])]
        item["source"] = s
        return item
