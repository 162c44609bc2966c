"""What can be wrong with an output folder's files: one error type, :class:`OutputFolderError`, whose subclasses
say what failed; and :class:`ArmModulesNotGivenError`, a settings error about the folder's ``config.toml``."""

from __future__ import annotations

from balanced_l1.experiments.config.checks import ConfigError


class OutputFolderError(ValueError):
    """A file or folder in the output folder of ``balanced-l1 compare`` cannot be used; the subclass says why."""


class RunsNotFoundError(OutputFolderError):
    """The output folder has no finished run to load, evaluate or predict from (a bad argument: exit status 2)."""


class UnreadableRunFileError(OutputFolderError):
    """A finished run's record, RoI sample or weights cannot be read, or are not what ``compare`` writes."""


class RunMismatchError(OutputFolderError):
    """A finished run's record was written with other settings or data than the run that finds it."""


class CheckpointMismatchError(OutputFolderError):
    """A checkpoint was written by a run with other settings, or cannot be read, or is not well-formed."""


class ArmModulesNotGivenError(ConfigError):
    """``OUT/config.toml`` names arm modules that the caller did not give (a bad argument: exit status 2).

    An output folder is data: it is shared, downloaded and unpacked from archives, so nothing it names is ever
    imported. The modules that register a run's own arms come from the caller (``--arm-modules``).
    """
