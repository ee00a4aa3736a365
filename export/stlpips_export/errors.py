"""Errors of the export stage; each message says what was wrong and what to do."""


class ExportError(Exception):
    """Base class for every error the export stage raises on purpose."""


class UnknownModelError(ExportError):
    """A net-variant that is not in the registry (stlpips_rt.variants)."""


class InvalidOptionError(ExportError):
    """Export options that cannot go together or do not fit the model (e.g. --static below its minimum size)."""


class SimplifyError(ExportError):
    """onnxsim could not simplify the graph."""


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


class CalibrationError(ExportError):
    """No usable calibration images for --int8 (empty or unreadable --calibration folder, scikit-image missing)."""


class GateError(ExportError):
    """An int8 graph ranks image pairs differently from its float32 graph beyond the gate; nothing was written."""


class ExporterUnavailableError(ExportError):
    """The chosen ONNX exporter cannot run here (a package it needs is missing)."""
