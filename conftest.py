"""Repository-wide pytest setup, loaded for the tests and for the doctests under ``src/``.

Keras 3 picks its backend once, at its first import, from ``KERAS_BACKEND`` (else
``~/.keras/keras.json``, else TensorFlow, which this project does not install). The doctest
collection imports every module of the package, ``balanced_l1.keras`` included, and the package
itself chooses no backend; so the test process uses the PyTorch backend (torch is a core
dependency, and Keras on PyTorch runs eagerly without compiling every op) unless ``KERAS_BACKEND``
says otherwise. tests/test_cross_framework.py runs the other backends in subprocesses.
"""

import importlib.util
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

# balanced_l1.mmdet is the mmdetection plugin (the ``mmdet`` extra); without mmdetection its doctests
# cannot be collected, and tests/test_mmdet.py skips.
collect_ignore = [] if importlib.util.find_spec("mmdet") else ["src/balanced_l1/mmdet.py"]
