"""balanced-l1: the Balanced L1 loss of Libra R-CNN, and the rest of its balanced learning."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version

from balanced_l1.functional import balanced_l1_loss
from balanced_l1.modules import BalancedL1Loss
from balanced_l1.params import BalancedL1Params

__all__ = ["BalancedL1Loss", "BalancedL1Params", "balanced_l1_loss"]

try:  # the version is written once, in pyproject.toml, and read from the installed distribution
    __version__ = _distribution_version("balanced-l1")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
