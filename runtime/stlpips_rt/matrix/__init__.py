"""Distance matrices: each image's features computed once, the head for every pair in blocks (docs/matrix.md).

Depends on numpy, onnxruntime (through a session or callable the caller builds) and the runtime's ground floor
(contract, errors, variants) only:

- :mod:`.model`: the features graph's description (:class:`FeatureModel`) and where it lives beside a pair graph;
- :mod:`.features`: :class:`FeatureSet` (rows of features in memory or on disk, saved and loaded with a header
  naming the model's sha256) and :class:`FeatureLayout`;
- :mod:`.extract`: running images through the features graph, spilling to disk past a memory budget;
- :mod:`.head`: the head for many pairs at once (blocked Gram form in float64, direct form for near-duplicates);
- :mod:`.plan`: how a matrix is cut and what it costs in memory;
- :mod:`.cache`: features cached on disk, keyed by model sha256 and each file's name, size and mtime.
"""

from .features import FeatureLayout, FeatureSet, FeaturesMismatchError
from .model import FeatureModel, features_path

__all__ = ["FeatureLayout", "FeatureModel", "FeatureSet", "FeaturesMismatchError", "features_path"]
