"""The output folder ``OUT`` of ``balanced-l1 compare``: the one owner of what is in it.

- :mod:`~balanced_l1.experiments.output_folder.layout`: every name and path in ``OUT`` (and what each holds);
- :mod:`~balanced_l1.experiments.output_folder.files`: the readers and writers of run records, RoI samples,
  weights, checkpoints, the saved settings and ``results.json``;
- :mod:`~balanced_l1.experiments.output_folder.schema`: what a run record holds, checked before it is used;
- :mod:`~balanced_l1.experiments.output_folder.lock`: the lock that keeps two runs out of one folder, and the
  checks of the folder before a run writes to it;
- :mod:`~balanced_l1.experiments.output_folder.errors`: :class:`~.errors.OutputFolderError` and its subclasses,
  which say what failed.
"""
