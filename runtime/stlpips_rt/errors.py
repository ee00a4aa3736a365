"""Typed errors of the runtime. Every error a user can cause derives from :class:`StlpipsError`.

Messages name the offending item (a file path, or the argument and index of an array) and say what to do.
"""

from __future__ import annotations


class StlpipsError(Exception):
    """Base class of every error raised by ``stlpips_rt`` for bad input, files or configuration."""


# --- model files -------------------------------------------------------------------------------------------
class ModelError(StlpipsError):
    """The model could not be found, or the file is not a usable stlpips ONNX model."""


class ModelNotFoundError(ModelError):
    """A model path or short name did not resolve to a file."""


class NotAnStlpipsModelError(ModelError):
    """An ONNX file without the stlpips metadata contract (format 1), or with values this runtime rejects."""


# --- execution providers -----------------------------------------------------------------------------------
class ProviderError(StlpipsError):
    """An execution provider was requested that is unknown or not available in this onnxruntime."""


class InferenceError(StlpipsError):
    """onnxruntime failed while running the graph (out of memory, driver error, ...)."""


class ProviderFallbackWarning(UserWarning):
    """A requested execution provider could not be used and a slower one runs instead (the message says why)."""


# --- images ------------------------------------------------------------------------------------------------
class ImageError(StlpipsError):
    """Base class of input image errors; ``item`` names the offending input."""

    def __init__(self, item: str, message: str) -> None:
        super().__init__(f"{item}: {message}")
        self.item = item


class ImageReadError(ImageError):
    """A file that does not exist, cannot be decoded, or is truncated."""


class NotAnImageError(ImageReadError):
    """Data that no image decoder recognises (a text file, a PDF, ...): not a damaged image but no image at all."""


class ImageTooLargeError(ImageError):
    """An image over the pixel limit (protection against decompression bombs)."""


class ImageValueError(ImageError):
    """An array holding NaN or Inf, or with a dtype the runtime does not accept."""


class ImageRangeError(ImageError):
    """A float array outside its declared value range, or a float array whose range was not declared."""


class ChannelError(ImageError):
    """An image whose channel count is not 1 (grey), 3 (RGB) or 4 (RGBA), or whose layout cannot be told."""


class ImageSizeError(ImageError):
    """The two images of a pair differ in size, or an image is below the model's minimum size.

    ``resize``: whether resizing is the remedy, and to what: ``True`` (any one size), ``(H, W)`` (that size), or
    ``False`` (not a remedy). The message says it in Python's terms; :func:`describe` says it for the command line
    (``--resize SIZE``) or the service (which does not resize)."""

    def __init__(self, item: str, message: str, resize: bool | tuple[int, int] = False) -> None:
        self.problem = message
        self.resize = resize
        super().__init__(item, self.wording("python"))

    def wording(self, interface: str = "python") -> str:
        """The problem and its remedy, for ``interface``: "python", "cli" or "service"."""
        if self.resize is False:
            return self.problem
        size = self.resize if isinstance(self.resize, tuple) else None
        if interface == "cli":
            if size is None:
                remedy = "pass --resize SIZE to score every image at SIZE x SIZE"
            elif size[0] == size[1]:
                remedy = f"pass --resize {size[0]}"
            else:
                remedy = f"--resize makes square images: scale them to {size[0]}x{size[1]} (HxW) first"
        elif interface == "service":
            remedy = "the service does not resize: send images of " + \
                ("one size" if size is None else f"{size[0]}x{size[1]} (HxW)")
        else:
            remedy = f"pass image=ImageOptions(resize={size or '(H, W)'})"
        return f"{self.problem} ({remedy})"


class MemoryBudgetError(ImageError):
    """An image too large to score within ``max_memory`` even tile by tile (the budget is below one tile)."""


class DeviceTensorError(ImageError):
    """A GPU tensor (``__cuda_array_interface__`` or DLPack) that cannot be bound without a copy: wrong dtype,
    layout or device, or a Scorer that does not run on that device."""


# --- the scoring service (stlpips-serve) ---------------------------------------------------------------------
class RequestError(StlpipsError):
    """A malformed request to the scoring service: not multipart, a field missing, too many fields."""


class RequestTooLargeError(RequestError):
    """A request body over the service's size limit."""


class NoSuchModelError(RequestError):
    """A request for a model (or model version) that the scoring service does not serve."""


class AuthenticationError(RequestError):
    """A request to a service started with a token that does not carry it (``Authorization: Bearer <token>``)."""


# --- videos ------------------------------------------------------------------------------------------------
class VideoError(StlpipsError):
    """Base class of video input errors; ``item`` names the offending file (and frame, where there is one)."""

    def __init__(self, item: str, message: str) -> None:
        super().__init__(f"{item}: {message}")
        self.item = item


class VideoReadError(VideoError):
    """A video that does not exist, is not a video (text, a single image, audio only), or cannot be decoded."""


class VideoMismatchError(VideoError):
    """Two videos that cannot be paired as asked: frame sizes, frame counts or frame rates differ."""


# --- outputs -----------------------------------------------------------------------------------------------
class OutputMismatchError(StlpipsError):
    """``--resume`` into an output another set-up wrote (another model file, precision, provider or resize), or
    one without a manifest saying which: resuming would mix two models' distances in one file."""


# --- optional dependencies ---------------------------------------------------------------------------------
class MissingExtraError(StlpipsError):
    """A feature needs an optional dependency that is not installed; the message names the extra."""


def describe(exc: BaseException, interface: str = "python") -> str:
    """An error's message for ``interface`` ("python", "cli", "service"): the remedies of a
    :class:`ImageSizeError` name that interface's option; any other error is ``str(exc)``."""
    if isinstance(exc, ImageSizeError):
        return f"{exc.item}: {exc.wording(interface)}"
    return str(exc)
