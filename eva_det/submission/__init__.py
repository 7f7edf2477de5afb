"""Test-set inference packaged for the COCO / LVIS evaluation servers.

What ``tools/test_dev_submission.py`` runs:

* :mod:`.pipeline`: :func:`run_submission`, resumable sharded inference and the zips;
* :mod:`.cache`: the shard cache (fingerprints, shard files);
* :mod:`.server`: what the servers accept (file names, formats, per-image caps) and its checks.

It sits above :mod:`eva_det.engine` (it builds the model with
:func:`eva_det.engine.build.build_inference_model`); nothing in eva_det below it imports it.
"""

from .pipeline import DEFAULT_SHARD_SIZE, SubmissionReport, run_submission

__all__ = ["DEFAULT_SHARD_SIZE", "SubmissionReport", "run_submission"]
