"""Fill a Hugging Face hub cache by hand, in the layout ``huggingface_hub`` reads offline.

``<cache>/models--ORG--NAME/blobs/<sha256>`` holds the bytes, ``refs/<revision>`` the commit
hash, ``snapshots/<commit>/<path>`` a relative symlink to the blob. With ``HF_HUB_CACHE`` (or
``HF_HOME``) pointing there and ``HF_HUB_OFFLINE=1``, ``hf_hub_download(repo, path)`` returns
the snapshot file without any network access.
"""

import hashlib
import os
import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hub_cache(
    cache: str, repo_id: str, filename: str, source: str, revision: str = "main"
) -> str:
    """Copy file ``source`` into ``cache`` as ``filename`` of model repo ``repo_id``.

    Returns:
        str: the snapshot path ``hf_hub_download`` will return for it.
    """
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    blob = repo / "blobs" / digest
    blob.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, blob)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT / filename
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    if snapshot.exists() or snapshot.is_symlink():
        snapshot.unlink()
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    return str(snapshot)
