"""Errors of the export stage; each message says what was wrong and what to do."""


class ExportError(Exception):
    """Base class for every error the export stage raises on purpose."""


class WeightsNotFoundError(ExportError):
    """The package that ships a checkpoint is not installed, or a --weights path does not exist."""


class ChecksumError(ExportError):
    """A registered checkpoint's sha256 differs from the pinned value (tampered or wrong version)."""


class UnsafePickleError(ExportError):
    """A pickle asked for something other than numpy arrays."""


class CheckpointMismatchError(ExportError):
    """A checkpoint's keys or shapes do not fit the architecture it is loaded into."""


class ParityError(ExportError):
    """ONNX Runtime disagrees with the PyTorch reference beyond the tolerance."""
