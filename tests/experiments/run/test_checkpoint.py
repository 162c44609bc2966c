"""Checkpoints hold plain data only: a crafted pickle is refused without running, a broken file is named, and a
file edited or damaged behind a matching fingerprint is refused naming what is wrong, never with a traceback."""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from balanced_l1.experiments.output_folder.errors import CheckpointMismatchError
from balanced_l1.experiments.run.checkpoint import (
    load_checkpoint,
    restore_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

CPU = torch.device("cpu")


def _parts() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer, torch.amp.GradScaler("cpu", enabled=False)


def _state() -> dict[str, Any]:
    model, optimizer, scaler = _parts()
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()  # a momentum buffer per parameter
    return {
        "fingerprint": {"arm": "a"},
        "iteration": 3,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": [rng_state(CPU)],
        "history": [{"loss": 1.0, "loss_box_reg": 0.5}] * 3,
        "gradient_balance": [{"roi_heads": {"inlier_fraction": 0.5, "box_cls_gradient_ratio": None}}] * 3,
    }


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned_by_checkpoint",))


def test_a_checkpoint_round_trips_through_weights_only_loading(tmp_path: Path) -> None:
    state = _state()
    save_checkpoint(tmp_path / "c.pt", state)
    ckpt = load_checkpoint(tmp_path / "c.pt", {"arm": "a"}, 1)
    assert ckpt["iteration"] == 3 and torch.equal(ckpt["model"]["bias"], state["model"]["bias"])
    assert ckpt.path == tmp_path / "c.pt"


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


# --- edited behind a matching fingerprint -------------------------------------------------------------------------


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda ckpt: ckpt.pop(key)


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda ckpt: ckpt.__setitem__(key, value)


def _rng(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda ckpt: change(ckpt["rng"][0])


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_without("model"), "it has no 'model'"),
        (_without("optimizer"), "it has no 'optimizer'"),
        (_set("model", [1, 2]), "'model' must be a dict, got list"),
        (_set("model", {"weight": "not a tensor"}), "'model' must map parameter names to tensors"),
        (_set("iteration", -5), r"'iteration' must be >= 0 \(this run's length\), got -5"),
        (_set("iteration", "3"), "'iteration' must be a int, got str"),
        (_set("iteration", True), "'iteration' must be a int, got bool"),
        (_set("iteration", 2), "'iteration' is 2 but 'history' has 3 entries"),
        (_set("history", None), "'history' must be a list, got NoneType"),
        (_set("history", [{"loss": "1.0"}] * 3), "'history' entry #0 must map 'loss' and other names to finite"),
        (_set("history", [{"loss": float("nan")}] * 3), "'history' entry #0 must map 'loss' .* finite numbers"),
        (_set("history", [{"loss": float("inf")}] * 3), "'history' entry #0 must map 'loss' .* finite numbers"),
        (_set("history", [{"loss": 10**400}] * 3), "'history' entry #0 must map 'loss' .* finite numbers"),
        (
            _set("gradient_balance", [{"roi_heads": {"inlier_fraction": float("-inf")}}] * 3),
            "'gradient_balance' entry #0 must map stages to {statistic: finite number or null}",
        ),
        (_set("gradient_balance", {"a": 1}), "'gradient_balance' must be a list, got dict"),
        (_set("gradient_balance", [[1]] * 3), "'gradient_balance' entry #0 must map stages"),
        (_set("rng", ["state"]), "the random state of rank 0: must be a dictionary, got str"),
        (
            _rng(lambda s: s.__setitem__("torch", [1, 2])),
            "the random state of rank 0: 'torch' must be torch's generator state",
        ),
        (
            _rng(lambda s: s["numpy"].__setitem__("keys", [1] * 624)),
            "the random state of rank 0: 'numpy' must be NumPy's MT19937 state",
        ),
        (
            _rng(lambda s: s["numpy"].__setitem__("pos", 10**6)),
            "the random state of rank 0: 'numpy' must be NumPy's MT19937 state",
        ),
        (_rng(lambda s: s.__setitem__("numpy_gauss", "no")), "the random state of rank 0: 'numpy_gauss' must be"),
        (
            _rng(lambda s: s.__setitem__("python", [3, [1, 2], None])),
            "the random state of rank 0: 'python' must be Python's random state",
        ),
        (_rng(lambda s: s.__setitem__("cuda", "x")), "the random state of rank 0: 'cuda' must be a list"),
        (_set("roi_sample", torch.zeros(2, 5, dtype=torch.float64)), "'roi_sample' must be a float64 tensor of 12"),
        (_set("roi_sample", torch.zeros(2, 12, dtype=torch.complex128)), "'roi_sample' must be a float64 tensor"),
        (_set("roi_sample", torch.full((2, 12), float("nan"), dtype=torch.float64)), "'roi_sample' holds NaN"),
        (_set("roi_sample", torch.full((2, 12), float("inf"), dtype=torch.float64)), "'roi_sample' holds NaN"),
    ],
)
def test_an_edited_checkpoint_with_the_right_fingerprint_is_refused_naming_the_problem(
    tmp_path: Path, tamper: Callable[[dict[str, Any]], None], reason: str
) -> None:
    state = _state()
    tamper(state)
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointMismatchError, match=f"^{tmp_path / 'c.pt'}: not a well-formed checkpoint: {reason}"):
        load_checkpoint(tmp_path / "c.pt", {"arm": "a"}, 1)


def test_an_iteration_beyond_the_runs_length_is_refused(tmp_path: Path) -> None:
    state = {**_state(), "fingerprint": {"settings": {"iters": 2, "epochs": None}}}
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointMismatchError, match=r"'iteration' must be 0 to 2 \(this run's length\), got 3"):
        load_checkpoint(tmp_path / "c.pt", state["fingerprint"], 1)
    with pytest.raises(CheckpointMismatchError, match="'iteration' must be 0 to 1"):
        load_checkpoint(tmp_path / "c.pt", state["fingerprint"], 1, iters=1)
    assert load_checkpoint(tmp_path / "c.pt", state["fingerprint"], 1, iters=3)["iteration"] == 3


def _bigger_weight(ckpt: dict[str, Any]) -> None:
    ckpt["model"]["weight"] = torch.zeros(4, 2)


def _momentum_of_another_shape(ckpt: dict[str, Any]) -> None:
    ckpt["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(7)


def _momentum_as_text(ckpt: dict[str, Any]) -> None:
    ckpt["optimizer"]["param_groups"][0]["momentum"] = "0.9"


def _state_of_no_parameter(ckpt: dict[str, Any]) -> None:
    ckpt["optimizer"]["state"][9] = {"momentum_buffer": torch.zeros(1)}


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (
            _bigger_weight,
            r"'model' 'weight' is a torch.float32 tensor of shape \[4, 2\], where this run holds a "
            r"torch.float32 tensor of shape \[3, 2\]",
        ),
        (
            lambda c: c["model"].__setitem__("weight", torch.zeros(3, 2, dtype=torch.complex64)),
            r"'model' 'weight' is a torch.complex64 tensor of shape \[3, 2\], where this run holds a torch.float32",
        ),
        (
            lambda c: c["model"].__setitem__("bias", torch.zeros(3, dtype=torch.int64)),
            r"'model' 'bias' is a torch.int64 tensor of shape \[3\], where this run holds a torch.float32",
        ),
        (lambda c: c["model"].pop("bias"), "'model' has no 'bias'"),
        (lambda c: c["model"].__setitem__("extra", torch.zeros(1)), "'model' has 'extra', which this model has not"),
        (
            _momentum_of_another_shape,
            r"'optimizer' momentum_buffer of parameter 0 is a torch.float32 tensor of "
            r"shape \[7\], where this run holds a torch.float32 tensor of shape \[3, 2\]",
        ),
        (
            lambda c: c["optimizer"]["state"][0].__setitem__("momentum_buffer", torch.tensor(0.0)),
            r"'optimizer' momentum_buffer of parameter 0 is a torch.float32 tensor of shape \[\], where this run holds "
            r"a torch.float32 tensor of shape \[3, 2\]",
        ),
        (
            lambda c: c["optimizer"]["state"][1].__setitem__("momentum_buffer", torch.zeros(3, dtype=torch.complex64)),
            r"'optimizer' momentum_buffer of parameter 1 is a torch.complex64 tensor of shape \[3\], where this run",
        ),
        (_momentum_as_text, "'optimizer' parameter group 0 has momentum = '0.9', this run's is 0.9"),
        (_state_of_no_parameter, "'optimizer' holds a state for 9, which is no parameter of this run"),
        (
            lambda c: c["optimizer"]["param_groups"][0].__setitem__("lr", float("nan")),
            "'optimizer' parameter group 0 has learning rate nan",
        ),
        (lambda c: c["optimizer"].__setitem__("param_groups", []), "'optimizer' has 0 parameter group"),
    ],
)
def test_a_checkpoint_that_does_not_fit_the_model_is_refused_before_anything_is_loaded(
    tmp_path: Path, tamper: Callable[[dict[str, Any]], None], reason: str
) -> None:
    state = _state()
    tamper(state)
    save_checkpoint(tmp_path / "c.pt", state)
    ckpt = load_checkpoint(tmp_path / "c.pt", {"arm": "a"}, 1)
    model, optimizer, scaler = _parts()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=f"^{tmp_path / 'c.pt'}: does not fit this run: {reason}"):
        restore_checkpoint(ckpt, model, optimizer, scaler, 0, CPU)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_well_formed_checkpoint_restores_weights_momentum_and_random_states(tmp_path: Path) -> None:
    state = _state()
    save_checkpoint(tmp_path / "c.pt", state)
    model, optimizer, scaler = _parts()
    weight = next(model.parameters())
    torch.nn.init.zeros_(weight)
    restore_checkpoint(load_checkpoint(tmp_path / "c.pt", {"arm": "a"}, 1), model, optimizer, scaler, 0, CPU)
    assert torch.equal(weight, state["model"]["weight"])
    assert torch.equal(optimizer.state[weight]["momentum_buffer"], state["optimizer"]["state"][0]["momentum_buffer"])


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_checkpoint_that_is_not_a_regular_file_is_refused_without_opening_it(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "c.pt"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    name = "a FIFO" if kind == "fifo" else "a folder"
    with pytest.raises(CheckpointMismatchError, match=f"^{path}: the checkpoint is {name}, not a regular file"):
        load_checkpoint(path, {"arm": "a"}, 1)


def test_a_checkpoint_over_the_bound_is_refused_by_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from balanced_l1.experiments.output_folder import files

    save_checkpoint(tmp_path / "c.pt", _state())
    monkeypatch.setattr(files, "MAX_CHECKPOINT_BYTES", 1024)
    with pytest.raises(CheckpointMismatchError, match=r"over the limit of 1 KiB for a checkpoint .*MAX_CHECKPOINT"):
        load_checkpoint(tmp_path / "c.pt", {"arm": "a"}, 1)
