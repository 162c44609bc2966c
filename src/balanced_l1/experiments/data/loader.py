"""The data order of a run and the DataLoaders that read it lazily.

Data order: iteration ``i`` trains on positions ``i * B .. (i + 1) * B - 1`` of an endless stream in
which epoch ``e`` is the permutation ``default_rng([seed, e])`` of the training images. Whether an
image is flipped is drawn from the same generator, after the permutation. So the order and the flips
depend only on the seed and the position: every arm of a seed sees the same images, flipped the
same way, in the same order, whatever the number of DataLoader workers, and a resumed run picks up
at its iteration. Under ``torchrun`` rank ``r`` of ``W`` takes every ``W``-th image of the global batch
starting at ``r`` (as ``DistributedSampler`` does), so the global batch is the one of a 1-process run.

The DataLoaders draw no random numbers from torch's global generator (they get their own), so
building one does not shift the random streams that the detector's samplers use.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from balanced_l1.experiments.data.coco_data import DetectionDataset, ImageReadError
from balanced_l1.experiments.data.split import DetectionSplit

Sample = tuple[torch.Tensor, dict[str, torch.Tensor]]


class DataOrder:
    """The seed's endless stream of ``(image index, flip)`` pairs, epoch by epoch.

    Args:
        seed: the run's seed.
        num_images: size of the training set.
        hflip: probability that an image is flipped horizontally.
    """

    def __init__(self, seed: int, num_images: int, hflip: float = 0.0) -> None:
        self.seed, self.num_images, self.hflip = seed, num_images, hflip
        self._epoch = -1
        self._order = np.empty(0, dtype=np.int64)
        self._flips = np.empty(0, dtype=bool)

    def _load_epoch(self, epoch: int) -> None:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(self.num_images)
            self._flips = rng.random(self.num_images) < self.hflip
            self._epoch = epoch

    def global_batch(self, iteration: int, batch_size: int) -> list[tuple[int, bool]]:
        """The ``(index, flip)`` pairs of global batch ``iteration``.

        Example:
            >>> DataOrder(0, 10).global_batch(3, 4) == DataOrder(0, 10).global_batch(3, 4)
            True
        """
        batch = []
        for position in range(iteration * batch_size, (iteration + 1) * batch_size):
            epoch, offset = divmod(position, self.num_images)
            self._load_epoch(epoch)
            batch.append((int(self._order[offset]), bool(self._flips[offset])))
        return batch


def global_batch(seed: int, iteration: int, batch_size: int, num_images: int) -> list[int]:
    """The image indices of global batch ``iteration`` in the seed's data order.

    Example:
        >>> sorted(i for it in range(5) for i in global_batch(1, it, 2, 10)) == list(range(10))
        True
    """
    return [index for index, _ in DataOrder(seed, num_images).global_batch(iteration, batch_size)]


class RankBatchSampler(Sampler[list[tuple[int, bool]]]):
    """This rank's share of each global batch, from iteration ``start`` to ``stop``.

    Args:
        order: the run's data order.
        batch_size: images per global batch.
        start: the first iteration (after ``--resume``, the checkpoint's).
        stop: the iteration to stop before.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, order: DataOrder, batch_size: int, start: int, stop: int, rank: int, world_size: int) -> None:
        self.order, self.batch_size = order, batch_size
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for iteration in range(self.start, self.stop):
            yield self.order.global_batch(iteration, self.batch_size)[self.rank :: self.world_size]


@dataclass(frozen=True)
class ReadFailure:
    """An image that could not be read, carried out of a worker process as a value instead of an exception."""

    message: str


class _Guarded(Dataset[Any]):
    """Returns :class:`ReadFailure` for an unreadable image, so that the main process raises a clean error."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Sample | ReadFailure:
        try:
            return self.dataset[key]
        except ImageReadError as err:
            return ReadFailure(str(err))


def _collate(batch: list[Sample | ReadFailure]) -> list[Sample | ReadFailure]:
    return batch


def unpack(batch: list[Sample | ReadFailure]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Split a batch into images and targets.

    Raises:
        ImageReadError: naming the first image of the batch that could not be read.
    """
    samples: list[Sample] = []
    for item in batch:
        if isinstance(item, ReadFailure):
            raise ImageReadError(item.message)
        samples.append(item)
    return [image for image, _ in samples], [target for _, target in samples]


def _loader(dataset: Dataset[Any], sampler: Sampler[Any], workers: int, device: torch.device) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),  # keeps torch's global RNG untouched
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )


def training_loader(
    split: DetectionSplit,
    order: DataOrder,
    *,
    batch_size: int,
    start: int,
    stop: int,
    rank: int,
    world_size: int,
    workers: int,
    device: torch.device,
) -> DataLoader[Any]:
    """A DataLoader yielding this rank's share of global batches ``start .. stop - 1`` (lists of samples).

    Images are read lazily, in ``workers`` processes when ``workers > 0``, pinned on CUDA.
    """
    sampler = RankBatchSampler(order, batch_size, start, stop, rank, world_size)
    return _loader(_Guarded(DetectionDataset(split)), sampler, workers, device)


class _ShardBatches(Sampler[list[int]]):
    """Consecutive batches of ``batch_size`` images; rank ``r`` of ``W`` takes batches ``r, r + W, ...``.

    Sharding whole batches keeps each batch's images together, so every image is padded and predicted
    exactly as in a one-process run.
    """

    def __init__(self, num_images: int, batch_size: int, rank: int, world_size: int) -> None:
        starts = range(0, num_images, batch_size)[rank::world_size]
        self.batches = [list(range(s, min(s + batch_size, num_images))) for s in starts]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


def evaluation_loader(
    split: DetectionSplit, *, batch_size: int, rank: int, world_size: int, workers: int, device: torch.device
) -> DataLoader[Any]:
    """A DataLoader over this rank's shard of a held-out split (whole batches, see :class:`_ShardBatches`)."""
    sampler = _ShardBatches(len(split), batch_size, rank, world_size)
    return _loader(_Guarded(DetectionDataset(split)), sampler, workers, device)
