"""Weights by name through the Hugging Face hub client (``huggingface_hub``).

Wherever eva_det takes a checkpoint path (``train.init_checkpoint``, ``--weights`` of the demo,
``model_zoo.get(checkpoint=...)``) it also takes a hub name:

==========================================  ======================================================
``hf://ORG/NAME/PATH``                       file ``PATH`` of hub repository ``ORG/NAME``, e.g.
                                             ``hf://BAAI/EVA/eva_coco_det.pth``
``hf://ORG/NAME@REV/PATH``                   the same at a branch, tag or commit
``hf://ORG/NAME``                            the repository's weights file: ``model.safetensors``,
                                             else ``pytorch_model.bin`` (timm's layout)
``timm/MODEL.TAG``                           ``hf://timm/MODEL.TAG``, e.g.
                                             ``timm/eva02_base_patch14_224.mim_in22k``
a model-zoo name (``eva02_L_coco_bsl``)      that release's file (``docs/MODEL_ZOO.md``)
``https://huggingface.co/ORG/NAME/resolve/REV/PATH``  the same file by URL (the zoo's links)
==========================================  ======================================================

An existing local file of the same name always wins. Downloads go through ``hf_hub_download``,
so they use the client's shared cache (``HF_HOME`` / ``HF_HUB_CACHE``, default
``~/.cache/huggingface/hub``), resume after an interruption, follow ``HF_ENDPOINT`` (a mirror)
and ``HF_TOKEN``, and with ``HF_HUB_OFFLINE=1`` read the cache only. Pretrained backbones named
this way (timm's EVA-02 MIM weights, the official ``eva02/pt/`` files) are converted to eva_det's
layout when loaded (:func:`eva_det.checkpoint.convert.convert_for_model`).
"""

import logging
import os
import re
from dataclasses import dataclass
from typing import Optional

from eva_det.errors import InputError

__all__ = ["HubFile", "Weights", "parse_hub_name", "download", "resolve_weights"]

logger = logging.getLogger(__name__)

HUB_SCHEME = "hf://"
#: Weights files tried, in order, for a repository named without a file (timm's layout).
DEFAULT_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_URL = re.compile(r"^https?://huggingface\.co/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_REPO_ID = re.compile(r"^[\w.\-]+/[\w.\-]+$")


@dataclass(frozen=True)
class HubFile:
    """One file of a hub model repository.

    Attributes:
        repo_id (str): ``ORG/NAME``.
        filename (str or None): path inside the repository; None means the first of
            :data:`DEFAULT_WEIGHTS_FILES` that exists.
        revision (str or None): branch, tag or commit; None is the default branch.
    """

    repo_id: str
    filename: Optional[str] = None
    revision: Optional[str] = None

    def __str__(self) -> str:
        repo = self.repo_id + (f"@{self.revision}" if self.revision else "")
        return HUB_SCHEME + repo + (f"/{self.filename}" if self.filename else "")


@dataclass(frozen=True)
class Weights:
    """A checkpoint value resolved to something loadable.

    Attributes:
        path (str): a local file, or the value as given when it is not a hub name (a local path
            or another URL, left to detectron2's ``PathManager``).
        hub (HubFile or None): the hub file it was downloaded as.
    """

    path: str
    hub: Optional[HubFile] = None


def _zoo_hub_file(name: str) -> Optional[HubFile]:
    # the table is plain data; imported here because eva_det.model_zoo builds on this package
    from eva_det.model_zoo.table import hub_location

    location = hub_location(name)
    return HubFile(*location) if location is not None else None


def parse_hub_name(value: str) -> Optional[HubFile]:
    """The hub file ``value`` names (see the module docstring), or None for anything else.

    Raises:
        InputError: ``hf://`` followed by something that is not ``ORG/NAME[@REV][/PATH]``.
    """
    if value.startswith(HUB_SCHEME):
        parts = value[len(HUB_SCHEME) :].split("/")
        repo, rest = "/".join(parts[:2]), "/".join(parts[2:])
        revision = None
        if "@" in repo:
            repo, revision = repo.split("@", 1)
        if not _REPO_ID.match(repo) or not (revision is None or revision):
            raise InputError(
                f"Checkpoint {value!r}: a hub name is hf://ORG/NAME/PATH (e.g. "
                "hf://BAAI/EVA/eva_coco_det.pth), hf://ORG/NAME@REVISION/PATH or hf://ORG/NAME."
            )
        return HubFile(repo, rest or None, revision)
    match = _HUB_URL.match(value)
    if match:
        repo, revision, filename = match.groups()
        return HubFile(repo, filename, None if revision == "main" else revision)
    if value.startswith("timm/") and _REPO_ID.match(value):
        return HubFile(value)
    if "/" not in value and os.sep not in value:
        return _zoo_hub_file(value)
    return None


def missing_file_message(hub: HubFile, filename: str, error: Exception, offline: bool) -> str:
    """What to tell a user whose hub file is not cached and cannot be downloaded.

    Args:
        hub (HubFile): the name asked for.
        filename (str): the file of ``hub.repo_id`` that was tried.
        error (Exception): the client's error.
        offline (bool): whether ``HF_HUB_OFFLINE`` is set.
    """
    from huggingface_hub import constants

    why = (
        "HF_HUB_OFFLINE=1 is set, so only the local cache is read"
        if offline
        else f"the hub ({constants.ENDPOINT}) could not be reached: {type(error).__name__}"
    )
    return (
        f"Checkpoint {hub}: file {filename!r} of hub repository {hub.repo_id!r} is not in the "
        f"Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}. Download it where the hub is "
        f"reachable (`hf download {hub.repo_id} {filename}` fills the same cache; copy that "
        "folder over, or point HF_HOME at it), or set HF_ENDPOINT to a mirror"
        + (" and unset HF_HUB_OFFLINE" if offline else "")
        + f", or pass a local file instead (train.init_checkpoint=/path/to/"
        f"{os.path.basename(filename)})."
    )


def _download_one(hub: HubFile, filename: str) -> str:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return hf_hub_download(hub.repo_id, filename, revision=hub.revision)
    except LocalEntryNotFoundError as e:  # offline, or no network: not in the cache
        raise InputError(missing_file_message(hub, filename, e, constants.HF_HUB_OFFLINE)) from e
    except RepositoryNotFoundError as e:
        raise InputError(
            f"Checkpoint {hub}: hub repository {hub.repo_id!r} does not exist or is private "
            "(log in with `hf auth login` or set HF_TOKEN for a private one)."
        ) from e
    except RevisionNotFoundError as e:
        raise InputError(
            f"Checkpoint {hub}: revision {hub.revision!r} of {hub.repo_id!r} does not exist."
        ) from e
    except EntryNotFoundError as e:
        raise InputError(
            f"Checkpoint {hub}: hub repository {hub.repo_id!r} has no file {filename!r}."
        ) from e


def download(hub: HubFile) -> str:
    """The local file of ``hub``, downloaded into the hub cache unless it is there already.

    Raises:
        InputError: not cached while offline or unreachable, unknown repository, revision or
            file; the message names the repository and file and what to do.
    """
    if hub.filename is not None:
        return _download_one(hub, hub.filename)
    errors = []
    for filename in DEFAULT_WEIGHTS_FILES:
        if filename.endswith(".safetensors") and not _has_safetensors():
            continue
        try:
            return _download_one(hub, filename)
        except InputError as e:
            errors.append(str(e))
    raise InputError(
        f"Checkpoint {hub}: none of {list(DEFAULT_WEIGHTS_FILES)} could be found. "
        + " | ".join(errors)
    )


def _has_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_weights(value: str) -> Weights:
    """Resolve a checkpoint value: hub names are downloaded, anything else is returned as is.

    Args:
        value (str): a local path, a URL, or a hub name (see the module docstring).

    Raises:
        InputError: see :func:`download`.
    """
    if not value or os.path.isfile(value):
        return Weights(value)
    hub = parse_hub_name(value)
    if hub is None:
        return Weights(value)
    path = download(hub)
    logger.info("Checkpoint %s is %s.", hub, path)
    return Weights(path, hub)
