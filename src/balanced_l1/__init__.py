"""balanced-l1: the Balanced L1 loss of Libra R-CNN, and the rest of its balanced learning."""

from balanced_l1.functional import balanced_l1_loss
from balanced_l1.modules import BalancedL1Loss
from balanced_l1.params import BalancedL1Params

__all__ = ["BalancedL1Loss", "BalancedL1Params", "balanced_l1_loss"]
__version__ = "0.1.0"
