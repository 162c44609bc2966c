"""Data order, flips and DataLoaders: fixed by the seed, the same with any number of workers or ranks."""

from __future__ import annotations

import torch

from balanced_l1.experiments.data.loader import DataOrder, RankBatchSampler, evaluation_loader, training_loader, unpack
from balanced_l1.experiments.data.synthetic import make_synthetic_dataset


def test_each_epoch_is_a_permutation_and_the_seed_fixes_order_and_flips() -> None:
    order = DataOrder(seed=1, num_images=10, hflip=0.5)
    epoch = [pair for it in range(5) for pair in order.global_batch(it, 2)]
    assert sorted(i for i, _ in epoch) == list(range(10))
    assert epoch == [pair for it in range(5) for pair in DataOrder(1, 10, 0.5).global_batch(it, 2)]
    assert epoch != [pair for it in range(5) for pair in DataOrder(2, 10, 0.5).global_batch(it, 2)]


def test_flip_probability_is_honoured_and_zero_never_flips() -> None:
    flips = [f for it in range(200) for _, f in DataOrder(0, 100, 0.3).global_batch(it, 10)]
    assert 0.25 < sum(flips) / len(flips) < 0.35
    assert not any(f for it in range(50) for _, f in DataOrder(0, 100, 0.0).global_batch(it, 10))


def test_the_order_does_not_depend_on_the_flip_probability() -> None:
    with_flips = [i for it in range(7) for i, _ in DataOrder(3, 9, 0.5).global_batch(it, 4)]
    assert with_flips == [i for it in range(7) for i, _ in DataOrder(3, 9, 0.0).global_batch(it, 4)]


def test_ranks_split_each_global_batch_like_distributed_sampler() -> None:
    order = DataOrder(0, 13)
    shards = [list(RankBatchSampler(order, 6, 2, 5, rank, 2)) for rank in range(2)]
    for it, (a, b) in enumerate(zip(*shards, strict=True), start=2):
        assert sorted(a + b) == sorted(order.global_batch(it, 6)) and len(a) == len(b) == 3


def test_loaders_with_workers_give_the_same_batches_and_leave_the_global_rng_alone() -> None:
    split = make_synthetic_dataset(6, 2, image_size=64)["train"]
    batches = []
    for workers in (0, 2):
        torch.manual_seed(7)
        loader = training_loader(
            split, DataOrder(0, 6, 0.5), batch_size=2, start=1, stop=4, rank=0, world_size=1, workers=workers,
            device=torch.device("cpu"),
        )  # fmt: skip
        batches.append([unpack(batch) for batch in loader])
    for (img_a, tgt_a), (img_b, tgt_b) in zip(*batches, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(img_a, img_b, strict=True))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(tgt_a, tgt_b, strict=True))
    assert len(batches[0]) == 3


def test_building_and_iterating_a_loader_draws_nothing_from_torch_global_rng() -> None:
    split = make_synthetic_dataset(4, 2, image_size=64)["train"]
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    loader = training_loader(
        split, DataOrder(0, 4), batch_size=2, start=0, stop=2, rank=0, world_size=1, workers=1,
        device=torch.device("cpu"),
    )  # fmt: skip
    list(loader)
    assert torch.equal(torch.rand(3), expected)


def test_evaluation_shards_are_whole_batches_that_together_cover_the_split() -> None:
    split = make_synthetic_dataset(2, 7, image_size=64)["val"]
    ids = []
    for rank in range(3):
        loader = evaluation_loader(split, batch_size=2, rank=rank, world_size=3, workers=0, device=torch.device("cpu"))
        for batch in loader:
            ids.append([int(t["image_id"]) for t in unpack(batch)[1]])
    assert sorted(ids) == [[1, 2], [3, 4], [5, 6], [7]]
