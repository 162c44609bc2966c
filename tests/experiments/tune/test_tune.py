"""``balanced-l1 tune`` on tiny data with SQLite: the study's trials, pruning, resuming, its refusals."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from balanced_l1.cli import main

pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parents[3]
TINY = ["--iters", "4", "--batch-size", "2", "--train-images", "4", "--val-images", "3", "--image-size", "64"]
ARMS = ["--arm-modules", "tests.experiments.tune.tune_arms"]
SPACE = ["--space", "weighted_smooth_l1(loss_weight=0.5..2:log),blind"]


def _tune(out: Path, *extra: str) -> int:
    return main(["tune", *TINY, *ARMS, "--eval-every", "2", "--out", str(out), *extra])


def _trials(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "tune.json").read_text())["trials"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tune") / "out"
    assert _tune(out, *SPACE, "--trials", "4", "--confirm", "0") == 0
    return out


def test_the_baseline_is_the_first_trial_and_the_search_trials_follow_on_its_seed(searched: Path) -> None:
    trials = _trials(searched)
    assert [t["role"] for t in trials] == ["baseline", "search", "search", "search", "search"]
    assert trials[0]["arm"] == "smooth_l1" and {t["seed"] for t in trials} == {0}
    assert all(t["state"] in ("complete", "pruned") for t in trials)


def test_a_trial_that_can_only_lose_is_pruned_and_keeps_its_last_ap(searched: Path) -> None:
    trials = _trials(searched)
    assert trials[0]["intermediate_AP"]["2"] > 0  # the baseline is ahead at the first point: blind (AP 0) is behind
    blind = [t for t in trials if t["arm"] == "blind"]
    assert blind and all(t["state"] == "pruned" and t["AP"] == 0.0 for t in blind)
    assert all(list(t["intermediate_AP"]) == ["2"] for t in blind)
    kept = [t for t in trials if t["arm"] != "blind"]
    ahead = trials[0]["intermediate_AP"]["2"]
    assert all(
        (t["state"] == "complete" and t["gradient_balance"] is not None)
        or (t["state"] == "pruned" and t["intermediate_AP"]["2"] < ahead)  # pruned only when behind the baseline
        for t in kept
    )
    assert any(t["state"] == "complete" for t in kept)


def test_outputs_and_one_line_per_finished_trial_are_written(searched: Path) -> None:
    for name in ("tune.json", "tune_history.png", "config.toml", "study.db"):
        assert (searched / name).is_file()
    log = (searched / "log.txt").read_text()
    assert log.count("] smooth_l1 seed 0: AP") == 1 and log.count("trial ") >= 5 and "trial(s) left" in log


def test_running_the_command_again_reruns_no_finished_trial(searched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in (searched / "runs").glob("*.json")}
    assert _tune(searched, *SPACE, "--trials", "4", "--confirm", "0") == 0
    assert len(_trials(searched)) == 5
    assert {p.name: p.stat().st_mtime_ns for p in (searched / "runs").glob("*.json")} == before
    assert "started: iter" not in capsys.readouterr().err


def test_a_worker_with_other_settings_is_refused_naming_what_differs(
    searched: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _tune(searched, *SPACE, "--trials", "4", "--confirm", "0", "--lr", "0.02") == 2
    err = capsys.readouterr().err
    assert "created with other settings or data" in err and "settings.lr (study: 0.04, here: 0.02)" in err


def test_the_best_settings_and_the_baseline_are_confirmed_on_new_seeds_and_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    space = ["--space", "weighted_smooth_l1(loss_weight=0.5..2:log)"]
    assert _tune(out, *space, "--trials", "2", "--confirm", "1", "--confirm-seeds", "1,2", "--pruner", "none") == 0
    trials = _trials(out)
    search = [t for t in trials if t["role"] == "search"]
    best = max(search, key=lambda t: t["AP"])
    confirm = [(t["arm"], t["seed"]) for t in trials if t["role"] == "confirm"]
    assert sorted(confirm) == sorted([("smooth_l1", 1), ("smooth_l1", 2), (best["arm"], 1), (best["arm"], 2)])
    assert all(t["state"] == "complete" for t in trials)
    verdict = json.loads((out / "tune.json").read_text())["verdict"]
    assert [(v["arm"], v["baseline"], tuple(v["seeds"])) for v in verdict] == [(best["arm"], "smooth_l1", (0, 1, 2))]
    ap = {(t["arm"], t["seed"]): 100 * t["AP"] for t in trials if t["state"] == "complete"}
    differences = [ap[(best["arm"], s)] - ap[("smooth_l1", s)] for s in (0, 1, 2)]
    assert verdict[0]["mean_difference"] == pytest.approx(sum(differences) / 3)
    assert verdict[0]["word"] in capsys.readouterr().out


def test_a_confirmation_without_a_setting_to_confirm_is_failed_with_the_reason(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _tune(out, "--space", "blind", "--trials", "1", "--confirm", "1", "--confirm-seeds", "1") == 0
    trials = _trials(out)
    assert [(t["role"], t["state"]) for t in trials] == [
        ("baseline", "complete"), ("search", "pruned"), ("confirm", "complete"), ("confirm", "fail")
    ]  # fmt: skip
    assert "only 0 setting(s) finished the search" in trials[3]["reason"]
    assert json.loads((out / "tune.json").read_text())["verdict"] == []


def test_a_diverging_trial_is_recorded_as_failed_with_the_reason_and_the_study_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "out"
    space = ["--space", "nan_boxes,weighted_smooth_l1(loss_weight=0.5..2:log)"]
    assert _tune(out, *space, "--trials", "4", "--confirm", "0", "--pruner", "none", "--sampler-seed", "3") == 0
    trials = _trials(out)
    failed = [t for t in trials if t["arm"] == "nan_boxes"]
    assert failed and all(t["state"] == "fail" and "loss became nan" in t["reason"] for t in failed)
    assert len(trials) == 5 and [t["state"] for t in trials].count("complete") == 5 - len(failed)


def test_a_grid_trial_gives_the_ap_of_the_same_arm_and_seed_run_by_compare(tmp_path: Path) -> None:
    assert (
        _tune(tmp_path / "t", "--sampler", "grid", "--arms", "smooth_l1,giou", "--pruner", "none", "--confirm", "0")
        == 0
    )
    assert main(["compare", *TINY, "--arms", "smooth_l1,giou", "--jobs", "1", "--out", str(tmp_path / "c")]) == 0
    compared = json.loads((tmp_path / "c" / "results.json").read_text())["arms"]
    tuned = {t["arm"]: t["AP"] for t in _trials(tmp_path / "t")}
    assert tuned == {arm: compared[arm]["per_seed"]["0"]["AP"] for arm in ("smooth_l1", "giou")}


BAD = [
    (["--trials", "2", "--space", "weighted_smooth_l1(loss_weight=0.5..1"], "a '(' without its ')'"),
    (["--trials", "2", "--space", "nosuch(alpha=0.1..1)"], "unknown arm 'nosuch'"),
    (
        ["--trials", "2", "--space", "weighted_smooth_l1(loss_weight=0..2)"],
        "arm 'weighted_smooth_l1', loss_weight=0.0 is not accepted",
    ),
    (["--trials", "2", "--space", "weighted_smooth_l1(loss_weight=2..1)"], "the low end must be below the high end"),
    (["--trials", "2", "--space", "weighted_smooth_l1(loss_weight=1..2:cube)"], "after ':' only 'log' is allowed"),
    (["--trials", "2", "--space", "weighted_smooth_l1(nokey=1..2)"], "unknown key 'nokey'"),
    (["--trials", "2", "--space", "x" * 5000], "5000 characters, at most 4096"),
    (["--trials", "0"], "trials must be between 1 and 10000, got 0"),
    (["--trials", "3", "--timeout", "-1"], "timeout must be > 0"),
    ([], "give a budget: --trials N and/or --timeout SECONDS"),
    (["--trials", "2", "--confirm", "-1"], "confirm must be between 0 and 20, got -1"),
    (["--trials", "2", "--confirm-seeds", "0,1"], "repeat the search's seed(s) [0]"),
    (["--trials", "2", "--storage", "not a url"], "storage: not a database URL"),
    (["--trials", "2", "--storage", "oracle://u:secret@h/db"], "storage oracle://u:***@h/db"),
    (["--trials", "2", "--sampler", "grid"], "--trials is for the TPE sampler"),
    (["--trials", "2", "--eval-every", "0"], "give --eval-every, or --pruner none"),
]


@pytest.mark.parametrize(("flags", "message"), BAD)
def test_a_bad_input_exits_2_with_its_message_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    out = tmp_path / "out"
    space = [] if "--space" in flags or "grid" in flags else SPACE
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", *TINY, *ARMS, "--eval-every", "2", "--out", str(out), *space, *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "secret" not in err
    assert not out.exists()


def test_tune_without_optuna_installed_exits_2_naming_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else find_spec(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        _tune(tmp_path / "out", *SPACE, "--trials", "1")
    assert (
        exit_info.value.code == 2
        and "tune needs optuna: pip install -e '.[tune]' in a clone" in capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


def test_an_unreachable_database_exits_1_with_the_url_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql+psycopg2://tuner:secret@127.0.0.1:9/nodb"
    assert _tune(tmp_path / "out", *SPACE, "--trials", "1", "--storage", url) == 1
    err = capsys.readouterr().err
    assert "cannot use the study database postgresql+psycopg2://tuner:***@127.0.0.1:9/nodb" in err
    assert "secret" not in err and "Traceback" not in err


@pytest.mark.slow
def test_a_worker_killed_mid_trial_resumes_it_from_its_checkpoint_and_meets_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "balanced_l1.cli", "tune", *TINY, "--iters", "40", "--checkpoint-every", "2",
               *ARMS, "--space", "weighted_smooth_l1(loss_weight=0.5..2:log)", "--pruner", "none", "--trials", "2",
               "--confirm", "0", "--heartbeat", "1", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((out / "checkpoints").glob("weighted*.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)  # the baseline is finished and the first search trial has a checkpoint
    baseline_record = out / "runs" / "smooth_l1_seed0.json"
    stamp = baseline_record.stat().st_mtime_ns
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = _trials(out)
    finished = [t for t in trials if t["state"] == "complete"]
    assert [t["role"] for t in finished] == ["baseline", "search", "search"]
    failed = [t for t in trials if t["state"] == "fail"]
    assert len(failed) == 1 and any(t["retry_of"] == failed[0]["number"] for t in finished)
    assert baseline_record.stat().st_mtime_ns == stamp
    assert "resumed" in done.stderr or "resuming" in done.stderr
    with sqlite3.connect(out / "study.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == len(trials)
