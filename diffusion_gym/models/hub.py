"""Offline-first access to the Hugging Face hub, shared by every loader of weights.

A hub id is tried in the local cache first; only if it is not there is the hub asked, and only
after a quick check that it can be reached at all, so nothing waits on a network that is not
there. When neither works, the error names the model and says how to provide it.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (offline mode, no route, DNS), or None if it answers."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as error:
        return f"no connection to the hub: {error}"
    return None


def load_offline_first(repo_id: str, load: Callable[[bool], T], how_to_provide: str) -> T:
    """`load(local_files_only)` from a local folder or the local cache, else from the hub if it can be reached.

    Args:
        repo_id: the hub id, named in the error.
        load: loads the thing; called with True (cache only), then False (may download).
        how_to_provide: the end of the error message: how a user gets the weights here.

    Raises:
        ValueError: neither the cache nor the hub could provide `repo_id`.
    """
    if Path(repo_id).is_dir():  # a local folder: nothing to ask the hub (its own errors come through)
        return load(True)
    try:
        return load(True)
    except (OSError, ValueError):
        pass  # not (fully) in the local cache: try the hub below, if it can be reached
    reason = hub_unreachable_reason()
    if reason is None:
        try:
            return load(False)
        except (OSError, ValueError) as error:
            reason = str(error).splitlines()[0]
    raise ValueError(
        f"Could not load {repo_id!r}: it is not a local path, not in the Hugging Face cache, and the hub "
        f"could not provide it ({reason}). {how_to_provide}"
    )


def hub_file(repo_id: str, filename: str) -> str:
    """The local path of one file of a hub repository (cache first); ValueError if unavailable."""
    from huggingface_hub import hf_hub_download

    return load_offline_first(
        f"{repo_id}/{filename}",
        lambda local_files_only: hf_hub_download(repo_id, filename, local_files_only=local_files_only),
        f"On a machine with hub access run `huggingface-cli download {repo_id} {filename} --local-dir DIR` "
        f"and pass the path of DIR/{filename}.",
    )
