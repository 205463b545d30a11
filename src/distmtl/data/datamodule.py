"""The LightningDataModule: training sources behind the multi-source sampler, eval splits in order
(sharded over the processes under DDP)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from distmtl.data.csvformat import EncodedSource
from distmtl.data.mixing import SourceMix, source_mix
from distmtl.data.sampler import MultiSourceBatchSampler
from distmtl.data.sources import IndexedDataset, MultiSourceDataset, SourceDataset
from distmtl.data.augment import DecodeResize, FusedAugment
from distmtl.data.transforms import Augmentation, Preprocessing, eval_transform


class MultiSourceDataModule(L.LightningDataModule):
    def __init__(
        self,
        train_sources: Sequence[EncodedSource],
        eval_sources: Mapping[str, EncodedSource],
        preprocessing: Preprocessing,
        augmentation: Augmentation,
        *,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        sampling="equal",
        epoch_batches: int | None = None,
        num_workers: int = 2,
        seed: int = 0,
        pin_memory: bool | str = "auto",
        prefetch_factor: int | None = None,
        persistent_workers: bool = True,
        max_repeats: Sequence[float | None] | None = None,
        run_batches: int | None = None,
        report: bool = True,
        augment_on: str = "workers",
    ):
        super().__init__()
        self.train_sources = list(train_sources)
        self.eval_sources = dict(eval_sources)
        self.pre = preprocessing
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.persistent_workers = persistent_workers
        self.sampling = sampling
        self.max_repeats = list(max_repeats) if max_repeats is not None else [None] * len(self.train_sources)
        self.run_batches = run_batches
        self.report = report
        self.mix: SourceMix | None = None
        # "device": workers decode and resize, the module augments the batch on the training device
        # (MultiTaskModule.on_after_batch_transfer); "workers": the fused per-image augmentation
        self.augment_on = augment_on
        self.seed = int(seed)
        transform = DecodeResize(preprocessing) if augment_on == "device" else FusedAugment(preprocessing, augmentation)
        self.train_set = MultiSourceDataset(
            [SourceDataset(s, transform, preprocessing.channels, draft_size=preprocessing.size,
                           as_tensor=augment_on == "device")
             for s in self.train_sources], seed=seed)
        self.sampler = MultiSourceBatchSampler(
            self.train_set.sizes, batch_size, ratios=sampling, epoch_batches=epoch_batches, seed=seed)

    def _loader_kwargs(self) -> dict:
        pin = self.pin_memory
        if pin == "auto":
            trainer = getattr(self, "trainer", None)
            pin = trainer is not None and trainer.accelerator is not None and \
                type(trainer.accelerator).__name__ != "CPUAccelerator"
        # each loader draws its workers' base seed from its own generator, not the global one: a
        # resumed run re-creates the training iterator mid-epoch, and a draw from the global
        # generator there would shift every later dropout and drop-path mask
        generator = torch.Generator().manual_seed(self.seed)
        kwargs = {"num_workers": self.num_workers, "pin_memory": bool(pin), "generator": generator}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = int(self.prefetch_factor)
        return kwargs

    def source_mix(self, world_size: int | None = None) -> SourceMix:
        """The run's per-source shares with ``max_repeats`` applied, for ``world_size`` ranks."""
        world = world_size or self.sampler.world_size
        run = self.run_batches or len(self.sampler)
        return source_mix([s.name for s in self.train_sources], self.train_set.sizes, self.sampling,
                          self.max_repeats, batch_size=self.batch_size, world_size=world, run_batches=run,
                          epoch_batches=self.sampler.epoch_batches)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        self.mix = self.source_mix(trainer.world_size if trainer is not None else None)
        self.sampler.weights = self.mix.weights
        if self.report and (trainer is None or trainer.is_global_zero):
            print(self.mix.table(), file=sys.stderr, flush=True)
        # persistent workers live as long as the DataLoader: worth it across training epochs only
        return DataLoader(self.train_set, batch_sampler=self.sampler,
                          persistent_workers=self.persistent_workers and self.num_workers > 0,
                          **self._loader_kwargs())

    def eval_dataloader(self, split: str) -> DataLoader:
        """The split in order; under DDP (a process group of several processes) each process reads
        its own shard. torch's ``DistributedSampler`` pads the last shard with a few repeated rows
        so that every process runs the same number of batches; every item carries its position
        (``index``), by which the module keeps each row once (``evaluation.gathered``)."""
        source = self.eval_sources[split]
        dataset = IndexedDataset(SourceDataset(source, eval_transform(self.pre), self.pre.channels))
        sampler = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sampler = DistributedSampler(dataset, shuffle=False, drop_last=False)
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, sampler=sampler,
                          **self._loader_kwargs())

    def val_dataloader(self):
        return self.eval_dataloader("val") if "val" in self.eval_sources else []

    def test_dataloader(self):
        return self.eval_dataloader("test") if "test" in self.eval_sources else []

    def state_dict(self) -> dict:
        """The sampler's epoch and how many of its batches training has consumed (for resuming)."""
        state = self.sampler.state_dict()
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            consumed = int(trainer.global_step) * int(trainer.accumulate_grad_batches)
            # a checkpoint after an epoch's last batch is saved before the loop moves to the next
            # epoch: it resumes at the next epoch's first batch (not at the finished epoch's first)
            per_epoch = max(1, len(self.sampler))
            done = max(0, consumed - int(trainer.current_epoch) * per_epoch)
            state["epoch"] = int(trainer.current_epoch) + done // per_epoch
            state["start_batch"] = done % per_epoch
        return {"sampler": state}

    def load_state_dict(self, state: dict) -> None:
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])
