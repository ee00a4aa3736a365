"""The :class:`Scorer`: one onnxruntime session over an stlpips model, scoring image pairs."""

from __future__ import annotations

import dataclasses
import os
import platform
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import precision as precision_modes
from .batching import plan_runs
from .contract import Key, ModelInfo, ModelSpec
from .deprecated import MOVED, translate
from .engine import winograd
from .engine.cpus import available_cpus
from .engine.device_run import DeviceRunner, check_float_range, device_pair
from .engine.device_tensors import DeviceArray
from .engine.model_files import info_from_session, resolve_model
from .engine.options import ProviderOptions, SessionConfig
from .engine.profiling import OperatorProfile, profile_session
from .engine.providers import SHORT_NAMES, engine_of
from .engine.routing import route
from .engine.session import build_session
from .engine.side_by_side import SideBySide, one_thread, pieces, split
from .errors import (
    DeviceTensorError,
    ImageSizeError,
    InferenceError,
    ModelError,
    NotAnStlpipsModelError,
    StlpipsError,
)
from .io import images, manifest
from .tiling import plan as tiling
from .tiling import run as tiled

ImageLike = Any  # path, PIL image, or numpy array (see stlpips_rt.images)


class Scorer:
    """Perceptual distance (ST-LPIPS / LPIPS) between images, through an exported ONNX graph.

    Args:
        model: path to an .onnx file, or a short name (``"alex-st"``, ``"vgg-lpips"``, ``"alex-st-spatial"``)
            looked up in ``$STLPIPS_MODEL_DIR``, then ``./models`` (:func:`stlpips_rt.resolve_model` searches other
            folders too).
        providers: ``"auto"`` (TensorRT, CUDA, CPU: the first available; OpenVINO only when named, or for
            ``precision="fast"`` where the fast path takes it: docs/reproducibility.md), a short name, a
            comma-separated list or a list. An explicit provider that is not available raises ProviderError.
            TensorRT and CUDA are tried as one chain (TensorRT, CUDA, CPU); a GPU provider named here never
            silently becomes the CPU (engine/session.py, docs/gpu.md).
        precision: ``"exact"`` (float32, parity with PyTorch) or ``"fast"``: the fastest reduced-precision path
            for the model and machine (:func:`stlpips_rt.precision.fast_path`: fp16 on TensorRT, TF32 on CUDA,
            else the model's gated int8 file beside it, else bf16 on OpenVINO, else fp32).
        threads: CPU threads (None: one per CPU this process may use: its affinity, capped by a container's CPU
            quota; engine/cpus.py). On the CPU provider a batch of pairs runs as that many pieces
            side by side, one thread each (the same bits, faster for small images: engine/side_by_side.py);
            a single pair, a tile and other providers run on that many intra-op threads.
        batch_size: largest number of pairs per graph run.
        max_memory: working-memory budget of one graph run, in bytes or as ``"2G"``, ``"512M"`` (None: a quarter
            of the machine's memory). Pairs whose full frame would exceed it are scored tile by tile, exactly
            (docs/tiling.md); ``scorer.plan(h, w)`` says what happens for a size. GPU tensors run as given.
        image: how inputs are read (:class:`~stlpips_rt.ImageOptions`: ``float_range`` of float arrays,
            ``resize``, ``max_pixels``).
        provider_options: per-provider settings, at most one object per provider:
            :class:`~stlpips_rt.CudaOptions` (device, cuDNN search, CUDA's fast mode, I/O binding, extra options),
            :class:`~stlpips_rt.TensorRTOptions` (fp16, engine cache, workspace, profile shapes),
            :class:`~stlpips_rt.OpenVinoOptions` (device), :class:`~stlpips_rt.CpuOptions` (Winograd for VGG's wide
            layers, on by default). Providers not named keep their defaults.

        **deprecated: the 0.1 keywords (``device_id``, ``tensorrt``, ``float_range``, ``resize``, ``models_dir``,
            ...) still work, with a DeprecationWarning naming their replacement (:mod:`stlpips_rt.deprecated`);
            any other keyword is a TypeError.

    GPU tensors (PyTorch, CuPy, JAX, ... through ``__cuda_array_interface__`` or DLPack) passed to
    :meth:`score_batch`, :meth:`score_many` or :meth:`run_arrays` are bound on the device without a copy; they must
    be float32 NCHW RGB in [-1, 1]. ``device_output=True`` leaves the distances on the device (a
    :class:`~stlpips_rt.engine.device_tensors.DeviceArray`, readable through DLPack or ``__cuda_array_interface__``).

    ``scorer.provider`` and ``scorer.precision`` say what actually runs. One Scorer may be used from many
    threads at once: onnxruntime's ``run`` is thread-safe and the one piece of state created later (an old file's
    ``-tiles`` companion session, on the first pair that needs it) is created under a lock.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = "alex-st",
        providers: str | Sequence[str] = "auto",
        precision: str = "exact",
        *,
        threads: int | None = None,
        batch_size: int = 16,
        max_memory: int | str | None = None,
        image: images.ImageOptions | None = None,
        provider_options: Iterable[ProviderOptions] = (),
        **deprecated: Any,
    ) -> None:
        if deprecated:
            unknown = sorted(deprecated.keys() - MOVED.keys())
            if unknown:
                raise TypeError(f"Scorer() got an unexpected keyword argument {unknown[0]!r}")
            moved = translate({"model": model, "image": image, "provider_options": provider_options, **deprecated})
            model, image, provider_options = moved["model"], moved["image"], moved["provider_options"]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.image_options = image or images.ImageOptions()
        path = resolve_model(model)
        # "fast" may pick another file (the model's int8 sibling) and provider: engine.routing decides.
        path, chosen = route(path, providers, precision)
        spec = ModelSpec.from_file_name(path.name)
        self.config = SessionConfig.build(threads, precision, provider_options)
        try:
            mode = precision_modes.session_mode(precision, spec.precision if spec else "fp32")
            self._session_args = (chosen, dataclasses.replace(self.config, precision=mode), not _is_auto(providers))
            self._routed_path = path
            built = build_session(path, *self._session_args)
            self._session, path = built.session, built.path
        except StlpipsError:
            raise
        except Exception as exc:  # onnxruntime's exception types are private
            if any(code in str(exc) for code in ("INVALID_PROTOBUF", "INVALID_GRAPH", "NO_MODEL")):
                raise NotAnStlpipsModelError(f"{path}: onnxruntime cannot load it as an ONNX model ({exc})") \
                    from None
            raise ModelError(f"{path}: onnxruntime could not build a session on {chosen[0]} ({exc})") from None
        self.info: ModelInfo = info_from_session(path, self._session)
        self.provider: str = SHORT_NAMES.get(self._session.get_providers()[0], chosen[0])
        self.precision: str = precision_modes.runs_as(self.provider, self.config.precision, self.info.precision)
        if self.info.precision == "fp32":  # OpenVINO says what it computes in (a CPU without bf16 runs f32)
            self.precision = getattr(self._session, "inference_precision", None) or self.precision
        io_binding = self.config.cuda.io_binding
        self._io_binding = self.provider in ("cuda", "tensorrt") if io_binding is None else io_binding
        self._device = DeviceRunner(self._session, self.provider, self.config.cuda.device_id, self.info.min_size,
                                    self.info.static_hw, self.info.num_layers)
        self.max_memory: int = tiling.default_budget() if max_memory is None else tiling.parse_memory(max_memory)
        self.geometry = tiling.read_geometry(self.info.metadata)
        if max_memory is not None and (self.geometry is None or self.geometry.bytes_per_pixel is None):
            raise ModelError(f"{path}: max_memory needs the file's memory model (stlpips.bytes_per_pixel and "
                             "stlpips.layer_*), which files exported before tiling support lack; re-export it")
        self._tiles_lock = threading.Lock()
        self._tiles_graph: tuple[Any, tiling.ModelGeometry] | None = None
        self._features_graph: tuple[Any, Any] | None = None  # (run, matrix.FeatureModel), on first use
        self._runs_lock = threading.Lock()
        self._runs = {"pairs": 0, "broadcast": 0}
        # On the CPU provider a batch runs as pieces side by side, one thread each (engine/side_by_side.py).
        threads = self._cpu_threads()
        self._side_by_side = SideBySide(threads, self._one_thread_session) \
            if self.provider == "cpu" and not self._io_binding and threads > 1 else None

    def __repr__(self) -> str:
        return (f"Scorer(model={self.info.path.name!r}, provider={self.provider!r}, "
                f"precision={self.precision!r}, batch_size={self.batch_size})")

    def provenance(self) -> dict[str, Any]:
        """What computes this Scorer's distances, as a JSON-ready dict: the model file (name, sha256, short name,
        metadata format, file precision), the provider and precision that run, the engine and its version, the
        resize applied to inputs, the threads, the stlpips-deploy version and the CPU. ``stlpips-score`` writes it
        beside every output (docs/reproducibility.md)."""
        from . import __version__

        meta = self.info.metadata
        resize = self.image_options.resize
        return {
            "stlpips_deploy": __version__,
            "model": {"file": self.info.path.name, "sha256": manifest.file_sha256(self.info.path),
                      "short_name": self.info.short_name,
                      "format": f"{meta.get(Key.FORMAT)}.{self.info.format_minor}",
                      "file_precision": self.info.precision},
            "provider": self.provider,
            "precision": self.precision,
            "engine": engine_of(self._session),
            # the file's graph, or the form the CPU provider rewrites it to (engine/winograd.py): 1e-7 apart
            "graph": "winograd" if winograd.applies(self.info.path, [self.provider], self.config) else "file",
            "resize": None if resize is None else list(resize) if isinstance(resize, tuple) else [resize, resize],
            "threads": self.config.threads,
            "cpu": manifest.cpu_name(),
            "machine": platform.machine(),
        }

    # --- inputs ------------------------------------------------------------------------------------------
    def _options(self, float_range: str | None) -> images.ImageOptions:
        if float_range is None:
            return self.image_options
        return dataclasses.replace(self.image_options, float_range=images.normalize_range(float_range))

    def load(self, item: ImageLike, name: str = "image", float_range: str | None = None) -> np.ndarray:
        """One image -> float32 ``[3, H, W]`` in [-1, 1], checked against the model's minimum size."""
        x = images.load(item, str(item) if images.is_path(item) else name, self._options(float_range))
        images.check_size(x, str(item) if images.is_path(item) else name, self.info.min_size, self.info.static_hw)
        return x

    def _load_all(self, items: Any, name: str, float_range: str | None) -> tuple[list[np.ndarray], list[str]]:
        opts = self._options(float_range)
        arrays, names = [], []
        for item, item_name in images.expand(items, name):
            x = images.load(item, item_name, opts)
            images.check_size(x, item_name, self.info.min_size, self.info.static_hw)
            arrays.append(x)
            names.append(item_name)
        return arrays, names

    def _load_pairs(self, a: Any, b: Any, float_range: str | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        x0, n0 = self._load_all(a, "a", float_range)
        x1, n1 = self._load_all(b, "b", float_range)
        if len(x0) != len(x1):
            raise ImageSizeError("a vs b", f"{len(x0)} images vs {len(x1)} images; pass equally many, or use "
                                           "score_many(ref, candidates) for one reference")
        for p, q, m, n in zip(x0, x1, n0, n1, strict=True):
            images.check_pair(p, q, m, n)
        return x0, x1

    # --- prepared arrays ---------------------------------------------------------------------------------
    def run_arrays(self, in0: Any, in1: Any, outputs: Sequence[str] = ("dist",),
                   device_output: bool = False) -> list[np.ndarray] | list[DeviceArray]:
        """Run the graph once on raw batches: float32 ``[N0, 3, H, W]`` and ``[N1, 3, H, W]`` in [-1, 1] with
        N0 == N1 or either 1 (broadcast). No conversion, no checks of values and no chunking: for callers that
        prepare tensors themselves (benchmarks, parity checks). GPU tensors are bound without a copy (in runs of
        ``batch_size``). ``--tiles`` files also give their per-layer maps (``scorer.info.layer_maps``)."""
        self._check_outputs(outputs, extra=self.info.layer_maps)
        pair = device_pair(in0, in1, ("in0", "in1"))
        if pair is not None:
            return self._run_device(pair, outputs, None, device_output, ("in0", "in1"))
        if device_output:
            raise DeviceTensorError("in0", "device_output=True needs GPU tensors as inputs")
        in0 = np.ascontiguousarray(in0, dtype=np.float32)
        in1 = np.ascontiguousarray(in1, dtype=np.float32)
        return self._infer(in0, in1, outputs)

    @property
    def runs(self) -> dict[str, int]:
        """Graph runs on the host so far, by form: ``broadcast`` (one reference, in0 of batch 1, against several
        candidates: its features computed once for the run) and ``pairs`` (every other run)."""
        with self._runs_lock:
            return dict(self._runs)

    def operator_profile(self, in0: Any, in1: Any, runs: int = 10, warmup: int = 2) -> OperatorProfile:
        """Where this Scorer's time goes, by operator type, on one batch (float32 ``[N0, 3, H, W]`` and
        ``[N1, 3, H, W]`` in [-1, 1], as :meth:`run_arrays` takes them), profiled as the Scorer runs it: a second
        session like the one the batch runs on, with the engine's profiler on (onnxruntime's, or OpenVINO's
        performance counters), runs it ``warmup`` times, then ``runs`` timed times. A batch that runs as pieces
        side by side (the CPU provider, ``engine/side_by_side.py``) is profiled as its first piece on a one-thread
        session, which is what each thread runs (:attr:`OperatorProfile.pieces` says so). ``stlpips-bench
        --profile`` prints it."""
        chosen, config, explicit = self._session_args
        in0 = np.ascontiguousarray(in0, dtype=np.float32)
        in1 = np.ascontiguousarray(in1, dtype=np.float32)
        count = self._pieces(in0, in1)
        if count > 1:
            config = one_thread(config)
            in0, in1 = split(in0, in1, count)[0]
        session = build_session(self._routed_path, chosen, dataclasses.replace(config, profile=True), explicit).session
        profile = profile_session(session, lambda s: self._infer(in0, in1, ("dist",), s, counted=False), runs,
                                  warmup)
        return dataclasses.replace(profile, pieces=count, pairs=max(len(in0), len(in1)))

    def _pieces(self, in0: np.ndarray, in1: np.ndarray) -> int:
        """Into how many side-by-side runs a batch goes (1: one run on the scorer's own session)."""
        if self._side_by_side is None:
            return 1
        return pieces(len(in0), len(in1), self._side_by_side.threads, in1.shape[2] * in1.shape[3])

    def _one_thread_session(self) -> Any:
        chosen, config, explicit = self._session_args
        return build_session(self._routed_path, chosen, one_thread(config), explicit).session

    def _infer(self, in0: np.ndarray, in1: np.ndarray, outputs: Sequence[str], session: Any = None,
               counted: bool = True) -> list[np.ndarray]:
        """One run of a batch (counted once in :attr:`runs` however it runs). Without an explicit ``session``, on
        the CPU provider, the batch may run as pieces side by side; tiles and profiles pass their session and run
        whole (a tile plan's memory is one run's)."""
        if counted:  # operator_profile's runs are not this Scorer's
            with self._runs_lock:
                self._runs["broadcast" if len(in0) == 1 < len(in1) else "pairs"] += 1
        if session is None and (count := self._pieces(in0, in1)) > 1:
            return self._side_by_side.run(in0, in1, outputs, self._run_session, count)
        return self._run_session(in0, in1, outputs, session or self._session)

    def _run_session(self, in0: np.ndarray, in1: np.ndarray, outputs: Sequence[str], session: Any) \
            -> list[np.ndarray]:
        try:
            if self._io_binding:
                binding = session.io_binding()
                binding.bind_cpu_input("in0", in0)
                binding.bind_cpu_input("in1", in1)
                for name in outputs:
                    binding.bind_output(name)
                session.run_with_iobinding(binding)
                return binding.copy_outputs_to_cpu()
            return session.run(list(outputs), {"in0": in0, "in1": in1})
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed on a batch of shape {in1.shape} on {self.provider}: {exc}") \
                from None

    def _check_outputs(self, outputs: Sequence[str], extra: Sequence[str] = ()) -> None:
        for name in outputs:
            if name not in self.info.outputs and name not in extra:
                raise ModelError(
                    f"{self.info.path.name} has no output {name!r} (it has {', '.join(self.info.outputs)}); export "
                    f"a model with it, e.g. `stlpips-export --net {self.info.net} --variant {self.info.variant} "
                    f"{'--spatial' if name == 'dist_map' else '--layers'}`"
                )

    def evaluate(self, x0: Sequence[np.ndarray] | np.ndarray, x1: Sequence[np.ndarray],
                 outputs: Sequence[str] = ("dist",)) -> dict[str, np.ndarray]:
        """Run prepared arrays (from :meth:`load`) and return each output in input order. ``x0`` is either a list
        pairing with ``x1`` (pairwise equal shapes) or one reference ``[3, H, W]`` array scored against every
        ``x1`` through the broadcast graph (in0 has batch 1: the reference's features are computed once per run).
        Items are grouped by image size and split into runs of at most ``batch_size`` pairs and at most
        ``max_memory``; a size whose single pair exceeds ``max_memory`` is scored tile by tile (:meth:`plan`)."""
        self._check_outputs(outputs)
        reference = x0[None] if isinstance(x0, np.ndarray) and x0.ndim == 3 else None
        results: dict[str, list[Any]] = {name: [None] * len(x1) for name in outputs}
        shapes = [x.shape for x in x1]
        for group in plan_runs(shapes, max(1, len(x1))):  # one group per image size
            plan = self.plan(*shapes[group[0]][1:])
            if plan.tiled:
                pairs = x0 if reference is not None else [x0[i] for i in group]
                values = self._evaluate_tiled(plan, pairs, [x1[i] for i in group], outputs)
                for name in outputs:
                    for j, i in enumerate(group):
                        results[name][i] = values[name][j]
                continue
            for start in range(0, len(group), plan.pairs_per_run):
                run = group[start:start + plan.pairs_per_run]
                in0 = reference if reference is not None else np.stack([x0[i] for i in run])
                in1 = np.stack([x1[i] for i in run])
                for name, value in zip(outputs, self._infer(in0, in1, outputs), strict=True):
                    for j, i in enumerate(run):
                        results[name][i] = value[j]
        return {name: _stack(values) for name, values in results.items()}

    # --- memory budget and tiles -------------------------------------------------------------------------
    def plan(self, height: int, width: int) -> tiling.TilePlan:
        """What scoring pairs of ``height x width`` does within ``max_memory``: full frame (and how many pairs per
        run), or which tiles; ``str(plan)`` says it in one line. Raises :class:`MemoryBudgetError` when even one
        tile does not fit."""
        plan = tiling.plan_tiles(height, width, self.geometry, self.max_memory, self.info.min_size,
                                 self.batch_size, static=self.info.static_hw is not None)
        if not plan.tiled:
            return plan
        try:
            geometry = self._tiles()[1]
        except ModelError as exc:
            return dataclasses.replace(plan, reason=f"; cannot run: {exc}")
        return tiling.plan_tiles(height, width, geometry, self.max_memory, self.info.min_size, self.batch_size)

    def _tiles(self) -> tuple[Any, tiling.ModelGeometry]:
        """The session and geometry of the ``--tiles`` graph: this file if it is one, else its ``-tiles``
        companion, loaded on first use."""
        with self._tiles_lock:
            if self._tiles_graph is None:
                if self.geometry is not None and self.geometry.layer_maps:
                    self._tiles_graph = (self._session, self.geometry)
                else:
                    self._tiles_graph = self._load_tiles_companion()
            return self._tiles_graph

    def _load_tiles_companion(self) -> tuple[Any, tiling.ModelGeometry]:
        """Files exported before every export carried its layer maps: a ``-tiles`` file beside this one, if any."""
        spec = dataclasses.replace(self.info.spec, spatial=False, layers=False, tiles=True)
        path = self.info.path.parent / spec.file_name
        if not path.is_file():
            raise ModelError(f"{self.info.path.name} has no per-layer distance maps, which scoring pairs larger than "
                             f"max_memory ({tiling.format_bytes(self.max_memory)}) tile by tile needs: it was "
                             "exported before every export carried them. Re-export it with `stlpips-export --net "
                             f"{self.info.net} --variant {self.info.variant}`, or raise max_memory")
        session = build_session(path, *self._session_args).session
        info = info_from_session(path, session)
        geometry = tiling.read_geometry(info.metadata)
        if (info.net, info.variant) != (self.info.net, self.info.variant) or geometry is None \
                or not geometry.layer_maps or geometry.bytes_per_pixel is None:
            raise NotAnStlpipsModelError(f"{path}: not a {self.info.short_name} graph with per-layer maps and a "
                                         "memory model; re-export it with `stlpips-export --net "
                                         f"{self.info.net} --variant {self.info.variant}`")
        return session, geometry

    def _evaluate_tiled(self, plan: tiling.TilePlan, x0: np.ndarray | list[np.ndarray], x1: list[np.ndarray],
                        outputs: Sequence[str]) -> dict[str, list[np.ndarray]]:
        session, geometry = self._tiles()
        return tiled.evaluate_tiled(lambda a, b, names: self._infer(a, b, names, session), plan,
                                    geometry.windows, geometry.layer_maps, x0, x1, outputs)

    def evaluate_many(self, ref: np.ndarray, candidates: Sequence[np.ndarray],
                      outputs: Sequence[str] = ("dist",)) -> dict[str, np.ndarray]:
        """One prepared reference against many prepared candidates of its size (broadcast graph)."""
        return self.evaluate(ref, candidates, outputs)

    def _run_device(self, pair: Any, outputs: Sequence[str], float_range: str | None, device_output: bool,
                    names: tuple[str, str] = ("a", "b")) -> list[Any]:
        """Run GPU tensors (``pair``, from device_pair) through the session without a host round trip."""
        check_float_range(float_range if float_range is not None else self.image_options.float_range, names[0])
        return self._device.run(pair[0], pair[1], outputs, self.batch_size, device_output, names)

    # --- public scoring ----------------------------------------------------------------------------------
    def score(self, a: ImageLike, b: ImageLike, float_range: str | None = None) -> float:
        """Distance between two images (0 = identical; larger = more different)."""
        x0 = self.load(a, "a", float_range)
        x1 = self.load(b, "b", float_range)
        images.check_pair(x0, x1, str(a) if images.is_path(a) else "a", str(b) if images.is_path(b) else "b")
        return float(self.evaluate([x0], [x1])["dist"][0])

    def score_batch(self, a: Any, b: Any, float_range: str | None = None,
                    device_output: bool = False) -> np.ndarray | DeviceArray:
        """Distances of pairs ``(a[i], b[i])``; ``a`` and ``b`` are lists or 4-D batches of equal length, or two
        GPU tensors ``[N, 3, H, W]`` (bound without a copy). Returns float32 ``[N]``, on the device with
        ``device_output=True``."""
        pair = device_pair(a, b)
        if pair is not None:
            return self._run_device(pair, ("dist",), float_range, device_output)[0]
        if device_output:
            raise DeviceTensorError("a", "device_output=True needs GPU tensors as inputs")
        x0, x1 = self._load_pairs(a, b, float_range)
        return self.evaluate(x0, x1)["dist"].reshape(len(x0))

    def score_many(self, ref: ImageLike, candidates: Any, float_range: str | None = None,
                   device_output: bool = False) -> np.ndarray | DeviceArray:
        """Distances of every candidate to one reference, through the broadcast graph (the reference's
        features are computed once per run). GPU tensors (ref ``[3, H, W]`` or ``[1, 3, H, W]``, candidates
        ``[N, 3, H, W]``) are bound without a copy. Returns float32 ``[N]``, on the device with
        ``device_output=True``."""
        pair = device_pair(ref, candidates, ("ref", "candidates"))
        if pair is not None:
            if pair[0].with_batch_axis().shape[0] != 1:
                raise ImageSizeError("ref", f"GPU tensor of shape {pair[0].shape}; one reference is [3, H, W] or "
                                            "[1, 3, H, W] (score_batch scores pairs)")
            return self._run_device(pair, ("dist",), float_range, device_output, ("ref", "candidates"))[0]
        if device_output:
            raise DeviceTensorError("ref", "device_output=True needs GPU tensors as inputs")
        r = self.load(ref, "ref", float_range)
        xs, names = self._load_all(candidates, "candidates", float_range)
        ref_name = str(ref) if images.is_path(ref) else "ref"
        for x, name in zip(xs, names, strict=True):
            images.check_pair(r, x, ref_name, name)
        return self.evaluate_many(r, xs)["dist"].reshape(len(xs))

    def spatial(self, a: ImageLike, b: ImageLike, float_range: str | None = None) -> np.ndarray:
        """Per-pixel distance map ``[H, W]`` of one pair (spatial models only): the per-layer maps upsampled to the
        image size and summed, so its mean is close to (not exactly) the distance."""
        return self.spatial_batch([a], [b], float_range)[0]

    def spatial_batch(self, a: Any, b: Any, float_range: str | None = None) -> np.ndarray:
        """Distance maps ``[N, H, W]`` of pairs of one size (spatial models only)."""
        self._check_outputs(("dist_map",))
        x0, x1 = self._load_pairs(a, b, float_range)
        if len({x.shape for x in x0}) > 1:
            raise ImageSizeError("a", "spatial_batch needs one image size for all pairs; call spatial per pair")
        return self.evaluate(x0, x1, ("dist_map",))["dist_map"][:, 0]

    def layers(self, a: ImageLike, b: ImageLike, float_range: str | None = None) -> np.ndarray:
        """Per-layer distances ``[L]`` of one pair (models exported with dist_layers); they sum to the distance."""
        return self.layers_batch([a], [b], float_range)[0]

    def layers_batch(self, a: Any, b: Any, float_range: str | None = None) -> np.ndarray:
        """Per-layer distances ``[N, L]`` (models exported with dist_layers)."""
        self._check_outputs(("dist_layers",))
        x0, x1 = self._load_pairs(a, b, float_range)
        return self.evaluate(x0, x1, ("dist_layers",))["dist_layers"]

    # --- distance matrices (stlpips_rt.matrix, docs/matrix.md) ----------------------------------------------
    def _features(self) -> tuple[Any, Any]:
        """The features graph beside this model (``{name}_features.onnx``): its :class:`~.matrix.extract.Runner`
        and description, loaded on first use, always float32 on this scorer's provider; on the CPU provider one
        intra-op thread per run and this scorer's threads as runs side by side (matrix/extract.py), with memory
        patterns as the side-by-side pair session (engine/side_by_side.py: 392-401 images/s of alex-st 64x64
        features against 365 without)."""
        from .matrix import extract
        from .matrix.model import FeatureModel, features_path

        with self._tiles_lock:
            if self._features_graph is None:
                path = features_path(self.info.path, ModelSpec.from_file_name(self.info.path.name))
                chosen, config, explicit = self._session_args
                config = one_thread(dataclasses.replace(config, precision="exact"))
                session = build_session(path, chosen, config, explicit).session
                model = FeatureModel.from_metadata(path, dict(session.get_modelmeta().custom_metadata_map))
                model.check_graph([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
                self._features_graph = (extract.session_runner(session, model, self._cpu_threads()), model)
            return self._features_graph

    def features(self, images_: Any, *, float_range: str | None = None, spill_dir: str | os.PathLike[str] | None = None,
                 cache: str | os.PathLike[str] | Any = None, skip_errors: bool = False,
                 progress: Any = None) -> Any:
        """Each image's features, computed once (the same bits however the images are batched): a
        :class:`~stlpips_rt.matrix.FeatureSet` for :meth:`matrix` and :meth:`nearest`, ``.save(folder)`` and
        ``FeatureSet.load(folder)``. Images are paths, arrays, PIL images, a list or a 4-D batch, all of one size
        (else an ImageSizeError names the others; ``resize=`` brings them to one). Past ``max_memory / 2`` the
        features are spilled to a memory-mapped file in ``spill_dir``. ``cache``: a folder, or a
        :class:`~stlpips_rt.matrix.cache.FeatureCache` (its size limit), caching image files' features by model,
        file content, image options and engine (docs/matrix.md, "The feature cache"); None: no cache.
        ``skip_errors``: leave unreadable images out (``result.failed``) instead of raising. The memory of a
        FeatureSet that is gone (it and every view of its rows) serves the next call, unzeroed: the Scorer keeps one
        such block (``matrix.features.RowsPool``)."""
        from .matrix import extract
        from .matrix.cache import FeatureCache

        runner, model = self._features()
        opts = self._options(float_range)
        items = images.expand(images_, "images")

        def loader(item: Any, name: str) -> Any:
            def load() -> np.ndarray:
                x = images.load(item, name, opts)
                images.check_size(x, name, model.min_size, model.static_hw)
                return x
            return load

        hooks = None
        if cache is not None:
            store = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
            engine = " ".join([self.provider, *(f"{k}={v}" for k, v in engine_of(self._session).items())])
            store.bind(model.sha256, {"resize": opts.resize, "float_range": opts.float_range}, engine)
            store.paths = {name: Path(item) for item, name in items if images.is_path(item)}
            hooks = (store.get, store.put, store.key)
        features, report = extract.compute(runner, model, ((name, loader(item, name)) for item, name in items),
                                           len(items), self.max_memory, spill_dir, skip_errors, hooks, progress)
        features.failed = report.failed
        features.report = report
        return features

    def _as_features(self, value: Any, what: str) -> Any:
        from .matrix.features import FeatureSet

        if isinstance(value, str | os.PathLike) and Path(value).is_dir() and (Path(value) / "features.json").is_file():
            value = FeatureSet.load(value)
        if isinstance(value, FeatureSet):
            _, model = self._features()
            value.check_model(model.sha256, model.name, what)
            return value
        return self.features(value)

    def matrix_plan(self, rows: int, height: int, width: int, cols: int | None = None,
                    block: int | None = None) -> Any:
        """How a ``rows x rows`` (or ``rows x cols``) matrix of ``height x width`` images runs within
        ``max_memory``: feature bytes, spilled or not, blocks; ``str(plan)`` says it in one line."""
        from .matrix.head import BLOCK
        from .matrix.plan import MatrixPlan

        runner, model = self._features()
        outputs = runner.run(np.zeros((1, 3, height, width), dtype=np.float32))
        per_image = 4 * sum(int(np.prod(o.shape[1:])) for o in outputs)
        return MatrixPlan(rows, cols, per_image, self.max_memory, self._cpu_threads(), block or BLOCK)

    def _cpu_threads(self) -> int:
        """The CPU threads this scorer uses: side-by-side pieces, features runs and the matrix head."""
        return self.config.threads or available_cpus()

    def matrix(self, a: Any, b: Any = None, *, out: np.ndarray | None = None, progress: Any = None,
               block: int | None = None) -> np.ndarray:
        """Distances of every pair: ``[N, N]`` when ``b`` is None (each unordered pair computed once, zero diagonal,
        exactly symmetric), else ``[M, N]`` (rows ``a``, columns ``b``). ``a`` and ``b`` are images (as for
        :meth:`features`), FeatureSets or saved features folders. float32, equal to :meth:`score` on each pair to
        float32 rounding (docs/matrix.md). ``out``: an array (or ``np.lib.format.open_memmap``) to fill.
        ``block``: images a side of the head's blocks (default ``matrix.head.BLOCK``; the same blocks give the same
        bits, as on Ray)."""
        from .matrix import head

        fa = self._as_features(a, "a")
        fb = None if b is None else self._as_features(b, "b")
        if fb is not None:
            fa.check_comparable(fb, "b")
        plan = self.matrix_plan(len(fa), *fa.image_hw, None if fb is None else len(fb), block) \
            if fa.spill_path is not None else None
        kwargs = dict(threads=self._cpu_threads(), progress=progress, block_size=block or head.BLOCK)
        if plan is not None:
            kwargs.update(panel_rows=plan.panel_rows, group=plan.group)
        if fb is None:
            return head.pairwise(fa.data, fa.weights, out, **kwargs)
        return head.cross(fa.data, fb.data, fa.weights, out, **kwargs)

    def nearest(self, queries: Any, corpus: Any = None, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items of ``corpus`` to each query: indices ``[M, k]`` (int64) and distances
        ``[M, k]`` (float32), nearest first, ties to the lower index. ``corpus=None``: the queries among
        themselves, each image's own entry left out."""
        from .matrix import head

        if corpus is None:
            return head.top_k(self.matrix(queries), k, exclude_self=True)
        return head.top_k(self.matrix(queries, corpus), k)

    def score_video(self, ref: str | os.PathLike[str], dist: Any, **options: Any) -> np.ndarray:
        """Per-frame distances between a reference video and one distorted video (float32 ``[N]``) or a list of
        them (``[M, N]``, the reference decoded once, broadcast graph). Decoded as a stream with PyAV (extra
        ``video``); options are :class:`stlpips_rt.video.VideoOptions` fields (``align="index"|"time"``,
        ``stride``, ``start``, ``end``, ...). For rows with frame times, use :func:`stlpips_rt.video.iter_scores`."""
        from .video.stream import VideoOptions, score_video

        return score_video(self, ref, dist, VideoOptions(**options))


def _is_auto(spec: str | Sequence[str]) -> bool:
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    return [n.strip().lower() for n in names if n.strip()] in ([], ["auto"])


def _stack(values: list[Any]) -> np.ndarray:
    if not values:
        return np.zeros((0,), dtype=np.float32)
    return np.stack([np.asarray(v, dtype=np.float32) for v in values])
