"""Small helpers used across eva_det (the lowest layer: imports nothing of eva_det but errors).

* :mod:`.atomic`: atomic file writes (temporary file + rename).
* :mod:`.sections`: config sections read over defaults defined in code.
* :mod:`.categories`: model class index <-> dataset category id.
* :mod:`.modules`: unwrapping DistributedDataParallel.
* :mod:`.testing`: synthetic data and independent references for tests and benches.
"""
