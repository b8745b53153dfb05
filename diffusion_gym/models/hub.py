"""Offline-first access to the Hugging Face hub, shared by every loader of weights.

A hub id is tried in the local cache first; only if it is not there is the hub asked, and only
after a quick check that it can be reached at all, so nothing waits on a network that is not
there. When neither works, the error names the model and says how to provide it.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlparse

T = TypeVar("T")


def how_to_download(repo_id: str, option: str, filename: str | None = None) -> str:
    """The end of a "cannot be found" message: how to bring `repo_id` (or its `filename`) here."""
    if filename is None:
        return f"On a machine with hub access run `huggingface-cli download {repo_id} --local-dir DIR` and pass {option}='DIR'."
    return f"Pass {option}='PATH' of {filename}, or run `huggingface-cli download {repo_id} {filename}` on a machine with hub access."


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
        with quiet_libraries():
            return load(True)
    try:
        with quiet_libraries():
            return load(True)
    except (OSError, ValueError):
        pass  # not (fully) in the local cache: try the hub below, if it can be reached
    reason = hub_unreachable_reason()
    if reason is None:
        try:
            return load(False)  # a download shows its progress
        except (OSError, ValueError) as error:
            reason = str(error).splitlines()[0]
    raise ValueError(
        f"Could not load {repo_id!r}: it is not a local path, not in the Hugging Face cache, and the hub "
        f"could not provide it ({reason}). {how_to_provide}"
    )


def check_available(repo_id: str, how_to_provide: str, filename: str | None = None) -> None:
    """Raise now if `repo_id` (or its one file `filename`) is neither a local path, nor in the
    local cache, nor downloadable: rewards whose models load lazily call this when they are made,
    so that a missing model fails before any sampling, not at the end of the first episode."""
    if Path(repo_id if filename is None else Path(repo_id) / filename).exists():
        return
    if repo_id.startswith(("/", ".", "~")) or repo_id.count("/") > 1:  # a path, not a hub id ("owner/name"): it must exist here
        raise ValueError(f"{repo_id!r} does not exist (it is a path, not a hub id). {how_to_provide}")
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if filename is None:
            snapshot_download(repo_id, local_files_only=True)
        else:
            hf_hub_download(repo_id, filename, local_files_only=True)
        return
    except Exception:  # not a hub id, or not in the cache: can the hub be asked at the first use?
        pass
    reason = hub_unreachable_reason()
    if reason is not None:
        name = repo_id if filename is None else f"{repo_id}/{filename}"
        raise ValueError(f"{name!r} is not a local path, not in the Hugging Face cache, and the hub cannot be reached ({reason}). {how_to_provide}")


def hub_file(repo_id: str, filename: str) -> str:
    """The local path of one file of a hub repository (cache first); ValueError if unavailable."""
    from huggingface_hub import hf_hub_download

    return load_offline_first(
        f"{repo_id}/{filename}",
        lambda local_files_only: hf_hub_download(repo_id, filename, local_files_only=local_files_only),
        f"On a machine with hub access run `huggingface-cli download {repo_id} {filename} --local-dir DIR` "
        f"and pass the path of DIR/{filename}.",
    )


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence transformers' and diffusers' progress bars and warnings for what they load and
    save for us ("Loading weights", "should be kept in float32"); our own errors still come."""
    import diffusers
    import transformers

    levels = (transformers.logging.get_verbosity(), diffusers.logging.get_verbosity())
    bars = (transformers.utils.logging.is_progress_bar_enabled(), diffusers.utils.logging.is_progress_bar_enabled())
    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(levels[0])
        diffusers.logging.set_verbosity(levels[1])
        if bars[0]:
            transformers.utils.logging.enable_progress_bar()
        if bars[1]:
            diffusers.utils.logging.enable_progress_bar()
