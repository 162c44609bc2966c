"""``balanced-l1 tune``: an Optuna study whose trials are runs of ``compare``'s runner.

- :mod:`~balanced_l1.experiments.tune.space`: the search space (the arms' declared ranges, ``--space``);
- :mod:`~balanced_l1.experiments.tune.settings`: the settings a tune adds to ``compare``'s;
- :mod:`~balanced_l1.experiments.tune.study`: the storage, the study's queue of trials, claims and heartbeats;
- :mod:`~balanced_l1.experiments.tune.trial`: one trial, one run of the runner, pruned at validation points;
- :mod:`~balanced_l1.experiments.tune.worker`: the loop every worker (and every rank) runs;
- :mod:`~balanced_l1.experiments.tune.outputs`: ``tune.json``, the verdict and the figures.
"""
