"""A training data stream that ``--resume`` continues where the checkpoint left it.

detectron2's ``TrainingSampler`` (and ``RepeatFactorTrainingSampler``) produce an infinite,
seeded stream of dataset indices, sharded by rank: rank ``r`` of ``W`` takes positions
``r, r + W, r + 2W, ...`` of one global stream. Restarting a run restarts that stream at position
0 (and, without ``train.seed``, with a new random seed), so a resumed run would see the first
images again and the rest of the epoch never.

Choice made here: checkpoint the *position in the global stream* and the sampler seed, and on
resume start the stream at that position. :class:`ResumableTrainLoader` counts the samples it
delivered (batches x total batch size, identical on every rank) and is registered as the
checkpointable ``"data_loader"``; the samplers below are detectron2's with an adjustable start.
Skipping ahead only generates indices (no image is read), so resuming late in a long schedule
costs a fraction of a second per epoch skipped.

Exactness: a non-resumed run draws exactly detectron2's stream. A resumed run continues it
exactly when batches are formed in stream order: ``aspect_ratio_grouping=False``, or datasets
whose images all fall in one aspect-ratio bucket. With aspect-ratio grouping over several
buckets, images that were waiting in a bucket at the checkpoint (fewer than the per-rank batch
size per bucket) are not replayed and as many already-used ones are drawn again. Random
augmentations are not replayed (each data-loader worker seeds its own generator).
"""

import itertools
import logging
from typing import Optional

import torch
from detectron2.config import instantiate
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils.comm import get_world_size
from detectron2.utils.registry import locate

__all__ = [
    "ResumableRepeatFactorTrainingSampler",
    "ResumableTrainLoader",
    "ResumableTrainingSampler",
    "build_resumable_train_loader",
]

logger = logging.getLogger(__name__)


class _ResumableStream:
    """Start position and checkpointable seed for detectron2's infinite samplers.

    ``start`` is a position in the global (all ranks) stream; rank ``r`` yields positions
    ``start + r, start + r + W, ...``.
    """

    start: int = 0

    def __iter__(self):
        positions = itertools.islice(
            self._infinite_indices(), self.start + self._rank, None, self._world_size
        )
        yield from positions

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)


class ResumableTrainingSampler(_ResumableStream, TrainingSampler):
    """detectron2's ``TrainingSampler`` whose stream can start at ``start`` (same arguments)."""


class ResumableRepeatFactorTrainingSampler(_ResumableStream, RepeatFactorTrainingSampler):
    """detectron2's ``RepeatFactorTrainingSampler`` whose stream can start at ``start``."""


_RESUMABLE = {
    TrainingSampler: ResumableTrainingSampler,
    RepeatFactorTrainingSampler: ResumableRepeatFactorTrainingSampler,
}


class ResumableTrainLoader:
    """Iterable of training batches whose stream position is saved in checkpoints.

    A checkpointable: ``state_dict()`` is ``{"seed": sampler seed or None, "samples_seen": int}``,
    the number of samples (over all ranks) handed to the trainer so far.
    """

    def __init__(self, loader, sampler: Optional[_ResumableStream], total_batch_size: int):
        """
        Args:
            loader: detectron2's batched train loader (iterable of lists of dicts).
            sampler: the resumable sampler inside ``loader``; None if it has none (then a
                resumed run restarts the stream, with a warning).
            total_batch_size (int): samples per iteration over all ranks.
        """
        self.loader = loader
        self.sampler = sampler
        self.total_batch_size = int(total_batch_size)
        self.samples_seen = 0

    def __iter__(self):
        if self.sampler is not None:
            self.sampler.start = self.samples_seen
        elif self.samples_seen:
            logger.warning(
                "The training sampler cannot skip ahead: the resumed run restarts the data "
                "stream from its beginning."
            )
        if self.samples_seen:
            logger.info("Data stream resumes at sample %d.", self.samples_seen)
        for batch in self.loader:
            self.samples_seen += self.total_batch_size
            yield batch

    def state_dict(self) -> dict:
        seed = self.sampler.seed if self.sampler is not None else None
        return {"seed": seed, "samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict) -> None:
        self.samples_seen = int(state["samples_seen"])
        if self.sampler is not None and state.get("seed") is not None:
            self.sampler.seed = state["seed"]

    def resume_at_iteration(self, start_iter: int) -> None:
        """For checkpoints without a data position: assume ``start_iter`` full batches."""
        if start_iter > 0 and self.samples_seen == 0:
            logger.warning(
                "The checkpoint has no data stream position (saved by an older version): "
                "assuming %d iterations x %d samples were used.",
                start_iter,
                self.total_batch_size,
            )
            self.samples_seen = start_iter * self.total_batch_size


def _target(cfg):
    target = cfg["_target_"]
    return locate(target) if isinstance(target, str) else target


def _build_sampler(sampler_cfg, size: int):
    """The resumable version of the configured sampler (detectron2's default if None)."""
    if sampler_cfg is None:
        return ResumableTrainingSampler(size)
    if not hasattr(sampler_cfg, "keys") or "_target_" not in sampler_cfg:
        return sampler_cfg  # an already-built sampler object
    cls = _RESUMABLE.get(_target(sampler_cfg))
    if cls is None:
        logger.warning(
            "dataloader.train.sampler %s cannot skip ahead: a resumed run restarts its stream.",
            sampler_cfg["_target_"],
        )
        return instantiate(sampler_cfg)
    return cls(**{k: instantiate(v) for k, v in sampler_cfg.items() if k != "_target_"})


def build_resumable_train_loader(loader_cfg) -> ResumableTrainLoader:
    """Instantiate ``cfg.dataloader.train`` with a resumable sampler.

    Args:
        loader_cfg: a LazyCall of a loader function taking ``dataset`` and ``sampler`` (e.g.
            detectron2's ``build_detection_train_loader``) with ``total_batch_size``.
    """
    dataset = instantiate(loader_cfg.dataset)
    sampler = None
    if not isinstance(dataset, torch.utils.data.IterableDataset):
        sampler = _build_sampler(loader_cfg.get("sampler", None), len(dataset))
    kwargs = {
        k: instantiate(v)
        for k, v in loader_cfg.items()
        if k not in ("_target_", "dataset", "sampler")
    }
    loader = _target(loader_cfg)(dataset=dataset, sampler=sampler, **kwargs)
    resumable = sampler if isinstance(sampler, _ResumableStream) else None
    total = kwargs.get("total_batch_size") or kwargs["single_gpu_batch_size"] * get_world_size()
    return ResumableTrainLoader(loader, resumable, total)
