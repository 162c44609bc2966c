"""Experiments behind ``balanced-l1 compare``: data sets, training loop, COCO evaluation, reports.

Modules: :mod:`~balanced_l1.experiments.synthetic` (the embedded data set),
:mod:`~balanced_l1.experiments.coco_data` (COCO-format folders), :mod:`~balanced_l1.experiments.arms`
(the registry of compared configurations), :mod:`~balanced_l1.experiments.train`,
:mod:`~balanced_l1.experiments.evaluate`, :mod:`~balanced_l1.experiments.report` and
:mod:`~balanced_l1.experiments.compare` (orchestration). Nothing is imported here, so the command
line stays light until ``compare`` runs.
"""
