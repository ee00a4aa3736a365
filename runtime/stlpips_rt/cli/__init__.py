"""The console scripts of the runtime: ``stlpips-score`` (:mod:`.score`, :mod:`.video`) and ``stlpips-serve``
(:mod:`.serve`), built from the option groups in :mod:`.options`."""
