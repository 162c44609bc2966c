"""Checkpoints hold plain data only: a crafted pickle is refused without running, a broken file is named."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from balanced_l1.experiments.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

CPU = torch.device("cpu")


def _state() -> dict[str, object]:
    return {"fingerprint": {"arm": "a"}, "iteration": 3, "model": {"w": torch.ones(2)}, "rng": [rng_state(CPU)]}


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned_by_checkpoint",))


def test_a_checkpoint_round_trips_through_weights_only_loading(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.pt", _state())
    ckpt = load_checkpoint(tmp_path / "c.pt", {"arm": "a"}, 1)
    assert ckpt["iteration"] == 3 and torch.equal(ckpt["model"]["w"], torch.ones(2))


def test_random_states_are_restored_exactly_from_plain_data(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    save_checkpoint(tmp_path / "c.pt", _state())
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "c.pt", {"arm": "a"}, 1)["rng"][0], CPU)
    got = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"version": 2, "payload": _Payload()}, path)
    with pytest.raises(CheckpointMismatchError, match=r"refused: it is not a plain-data checkpoint.*posix\.system"):
        load_checkpoint(path, {}, 1)
    assert not (tmp_path / "pwned_by_checkpoint").exists()
    path.write_bytes(pickle.dumps(_Payload()))  # a bare pickle, not even a torch zip
    with pytest.raises(CheckpointMismatchError, match=str(path)):
        load_checkpoint(path, {}, 1)
    assert not (tmp_path / "pwned_by_checkpoint").exists()


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, None], ids=["empty", "garbage", "truncated"])
def test_an_unreadable_checkpoint_is_named_with_the_reason(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "c.pt"
    if content is None:
        save_checkpoint(path, _state())
        content = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointMismatchError, match=f"{path}: cannot read the checkpoint"):
        load_checkpoint(path, {"arm": "a"}, 1)


def test_a_checkpoint_of_other_settings_or_process_count_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.pt", _state())
    with pytest.raises(CheckpointMismatchError, match="written by a run with other settings"):
        load_checkpoint(tmp_path / "c.pt", {"arm": "b"}, 1)
    with pytest.raises(CheckpointMismatchError, match="written by 1 process"):
        load_checkpoint(tmp_path / "c.pt", {"arm": "a"}, 2)
