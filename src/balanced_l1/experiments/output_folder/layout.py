"""Every name and path in the output folder ``OUT`` of ``balanced-l1 compare``, decided here alone.

::

    config.toml         the resolved settings (``--print-config``'s format, read back by ``--config``), written first
    log.txt             progress lines of every run (appended)
    results.json        settings, per-arm metrics per seed, mean and std, paired differences, the verdict
    loss_curves.png     training loss per arm
    ap_vs_iou.png       AP against IoU threshold 0.50..0.95 per arm
    gradient_balance.png  the gradient-balance statistics over training per arm (the paper's 0.3 marked)
    balance_vs_ap.png   each arm's AP against its RoI inlier/outlier and box/cls gradient ratios
    detections.png      the first 4 held-out images: ground truth and each arm's detections (first seed)
    ap_curve.png        AP on the held-out split during training per arm (only with --eval-every)
    runs/<arm>_seed<s>.json        one finished run: its fingerprint, metrics, loss history, gradient balance,
                                   validations during training and the number of classes
    runs/<arm>_seed<s>_model.pt    its final weights, a plain state_dict (``load_trained_model``)
    runs/<arm>_seed<s>_roi_sample.npy  a bounded sample of its RoI head's positives (``balanced-l1 balance``)
    checkpoints/<arm>_seed<s>.pt   the latest checkpoint of that run (for --resume)
    tensorboard/<arm>_seed<s>/     TensorBoard event files of that run (only with --tensorboard)
    evaluate/           written by ``balanced-l1 evaluate`` only (its results.json, show/ pictures)
    .balanced-l1.lock   held by the run using the folder
    tune.json, tune_history.png, tune_importance.png, study.db   written by ``balanced-l1 tune`` only

``<arm>`` is the arm's canonical name as a file name (:attr:`~balanced_l1.experiments.arm_specs.ArmSpec.file_stem`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from balanced_l1.experiments.arm_specs import ArmSpec

RESULTS_NAME = "results.json"
CONFIG_NAME = "config.toml"
LOG_NAME = "log.txt"
LOCK_NAME = ".balanced-l1.lock"
LOSS_CURVES_FIGURE = "loss_curves.png"
AP_VS_IOU_FIGURE = "ap_vs_iou.png"
GRADIENT_BALANCE_FIGURE = "gradient_balance.png"
BALANCE_VS_AP_FIGURE = "balance_vs_ap.png"
DETECTIONS_FIGURE = "detections.png"
AP_CURVE_FIGURE = "ap_curve.png"
#: ``balanced-l1 tune``'s files: every trial and the verdict, its figures, and its default study database.
TUNE_NAME = "tune.json"
TUNE_HISTORY_FIGURE = "tune_history.png"
TUNE_IMPORTANCE_FIGURE = "tune_importance.png"
STUDY_DATABASE = "study.db"

RUNS_FOLDER = "runs"
CHECKPOINTS_FOLDER = "checkpoints"
TENSORBOARD_FOLDER = "tensorboard"
EVALUATE_FOLDER = "evaluate"
#: Inside ``balanced-l1 evaluate``'s folder: its pictures of ``--show`` images.
SHOW_FOLDER = "show"

#: The files ``compare`` writes directly in ``OUT``.
OUTPUT_FILES = (
    RESULTS_NAME, LOSS_CURVES_FIGURE, AP_VS_IOU_FIGURE, GRADIENT_BALANCE_FIGURE, BALANCE_VS_AP_FIGURE, CONFIG_NAME,
    LOG_NAME, DETECTIONS_FIGURE, AP_CURVE_FIGURE, TUNE_NAME, TUNE_HISTORY_FIGURE, TUNE_IMPORTANCE_FIGURE,
    STUDY_DATABASE,
)  # fmt: skip
#: The folders ``compare`` and ``evaluate`` keep in ``OUT``.
OUTPUT_FOLDERS = (RUNS_FOLDER, CHECKPOINTS_FOLDER, TENSORBOARD_FOLDER, EVALUATE_FOLDER)


@dataclass(frozen=True)
class RunFiles:
    """Where one run (an arm and a seed) keeps its files, all named by its stem ``<arm>_seed<s>``.

    Attributes:
        out: the output folder.
        record: ``runs/<stem>.json``, the finished run's record; its presence marks the run finished.
        model: ``runs/<stem>_model.pt``, the finished run's final weights.
        roi_sample: ``runs/<stem>_roi_sample.npy``, a sample of the RoI head's positives (float64, ``(K, 12)``).
        checkpoint: ``checkpoints/<stem>.pt``, the run's latest checkpoint.
        tensorboard: ``tensorboard/<stem>/``, the run's TensorBoard event files.
    """

    out: Path
    record: Path
    model: Path
    roi_sample: Path
    checkpoint: Path
    tensorboard: Path

    @classmethod
    def named(cls, out: str | os.PathLike[str], stem: str) -> RunFiles:
        """The files of the run whose stem is ``stem`` in ``out``."""
        root = Path(out)
        runs = root / RUNS_FOLDER
        return cls(
            out=root,
            record=runs / f"{stem}.json",
            model=runs / f"{stem}_model.pt",
            roi_sample=runs / f"{stem}_roi_sample.npy",
            checkpoint=root / CHECKPOINTS_FOLDER / f"{stem}.pt",
            tensorboard=root / TENSORBOARD_FOLDER / stem,
        )

    @classmethod
    def of(cls, out: str | os.PathLike[str], arm: ArmSpec, seed: int) -> RunFiles:
        """The files of ``arm``'s run of ``seed`` in ``out``."""
        return cls.named(out, f"{arm.file_stem}_seed{seed}")

    @classmethod
    def of_record(cls, record: str | os.PathLike[str]) -> RunFiles:
        """The files of the run whose record is ``record`` (``OUT/runs/<stem>.json``)."""
        path = Path(record)
        return cls.named(path.parent.parent, path.stem)
