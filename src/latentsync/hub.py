"""`latentsync download`: the published weights fetched through the Hugging Face Hub's own cache, and the
checkpoints folder (`weights.CheckpointLayout`) made a view of them.

Each Hub repository is fetched with `huggingface_hub.snapshot_download` and the manifest's file names as its
patterns, into the Hub cache that every Hugging Face tool shares (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
`~/.cache/huggingface/hub`): a file another tool already fetched is not fetched again, an interrupted download
resumes where it stopped (the cache keeps the part it received), and one commit of each repository is used
for all its files. The checkpoints folder then gets a symbolic link per file into the cache (a hard link, or a
copy, where the file system has no symbolic links), made under a temporary name and renamed into place, so
that every command keeps reading the one layout. Files already in the folder are kept as they are.

`revision` (a branch, tag or commit of the LatentSync repository of the version) pins the weights; files that
the cache already holds for that revision are used without asking the Hub, so a second download of the same
revision makes no request at all. Offline, or with `HF_HUB_OFFLINE=1`, only what the cache holds is used, and
each missing file is named in a line of its own. `HF_ENDPOINT` (a mirror), `HF_TOKEN`, `HF_HUB_ETAG_TIMEOUT` and
`HF_HUB_DOWNLOAD_TIMEOUT` are huggingface_hub's own settings.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterable

from .errors import DownloadError
from .fileio import atomic_write, remove_stale_temporaries, temporary_name
from .weights import (
    DEFAULT_CHECKPOINTS_DIR,
    FORMER_GROUPS,
    GROUPS,
    LATENTSYNC_REPOS,
    MANIFEST,
    CheckpointLayout,
    Remote,
    is_weight_file,
    recorded_version,
)

log = logging.getLogger(__name__)

REASON_MAX_CHARS = 200


class _HubUnreachable(Exception):
    """The Hub endpoint cannot be reached at all: no point trying the other files."""


def _reason(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:REASON_MAX_CHARS]


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection, timeout and protocol errors of the HTTP client under huggingface_hub (httpx2 in 2.x, httpx in
    1.x, requests before; whichever are installed)."""
    found: list[type[BaseException]] = []
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return tuple(found)


def expand_groups(groups: Iterable[str]) -> list[str]:
    groups = [FORMER_GROUPS.get(g, g) for g in groups]
    unknown = [g for g in groups if g not in GROUPS and g != "all"]
    if unknown:
        raise ValueError(f"unknown download group(s) {unknown}; expected {', '.join(GROUPS)} or all")
    return list(GROUPS) if "all" in groups else [g for g in GROUPS if g in groups]


def _check_reachable(repo: str, filename: str, revision: str | None) -> None:
    """One HEAD request without retries, so that an unreachable Hub fails in seconds (huggingface_hub retries a
    failed request with backoff, about 30 s, before giving up). Answers other than "no connection" are left
    to the download itself, which reports them per file."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import HfHubHTTPError, OfflineModeIsEnabled

    try:
        get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except OfflineModeIsEnabled:
        raise _HubUnreachable("offline mode is on (HF_HUB_OFFLINE)") from None
    except HfHubHTTPError:
        pass
    except _transport_errors() as e:
        raise _HubUnreachable(f"cannot reach {constants.ENDPOINT} ({_reason(e)})") from None


def _cached_snapshot(repo: str, filenames: list[str], revision: str | None, cache_dir: Path | None) -> Path | None:
    """The cache's snapshot of `repo` at `revision` when it holds every one of `filenames`, asking no one."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=filenames, cache_dir=cache_dir,
                                        local_files_only=True))
    except (LocalEntryNotFoundError, OSError):
        return None
    return folder if all(is_weight_file(folder / f) for f in filenames) else None


def _snapshot(repo: str, filenames: list[str], revision: str | None, cache_dir: Path | None,
              progress: bool) -> Path:
    """`filenames` of `repo` at `revision` fetched into the Hub cache; the snapshot folder.
    Raises `_HubUnreachable` when there is no connection, OSError with a reason for the repository."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from tqdm.auto import tqdm

    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=filenames, cache_dir=cache_dir,
                                      tqdm_class=None if progress else _quiet_tqdm(tqdm)))
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as e:
        offline = constants.HF_HUB_OFFLINE or isinstance(e, OfflineModeIsEnabled)
        raise _HubUnreachable("offline mode is on (HF_HUB_OFFLINE)" if offline
                              else f"cannot reach {constants.ENDPOINT}") from None
    except GatedRepoError:
        raise OSError(f"{repo} is gated: accept its terms on the Hub and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise OSError(f"revision {revision!r} not found in {repo}") from None
    except RepositoryNotFoundError:
        raise OSError(f"repository {repo} not found") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise OSError(f"HTTP {status} from {constants.ENDPOINT}") from None
    except _transport_errors() as e:
        raise _HubUnreachable(f"lost the connection to {constants.ENDPOINT} ({_reason(e)})") from None


def _quiet_tqdm(tqdm):
    class Quiet(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

    return Quiet


def link_into_place(source: Path, dest: Path) -> None:
    """`dest` becomes a view of `source` (a file in the Hub cache): a symbolic link to it, else a hard link,
    else a copy, made under a temporary name and renamed onto `dest`, so `dest` is never half there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest.parent, dest.name)
    tmp = temporary_name(dest, dest.suffix or ".tmp")
    try:
        try:  # to the snapshot's entry, so that the link shows the commit it came from
            os.symlink(source.absolute(), tmp)
        except OSError:
            try:
                os.link(source.resolve(), tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _write_version(root: Path, text: str) -> None:
    with atomic_write(CheckpointLayout(root).version_file) as tmp:
        tmp.write_text(text + "\n")


def download(version: str = "1.6", root: str | Path = DEFAULT_CHECKPOINTS_DIR, groups: Iterable[str] = ("inference",),
             progress: bool = True, revision: str | None = None, cache_dir: str | Path | None = None) -> list[Path]:
    """Fetch the weights of `groups` ("inference", "training", "eval", or "all") for LatentSync
    `version` through the Hub cache (`cache_dir`, default huggingface_hub's) and link them into `root`.

    `revision`: a branch, tag or commit of the version's LatentSync repository (default: its main branch).
    Files already in `root` (non-empty) are kept, except the version-specific ones (UNet, StableSyncNet,
    whether requested or not) when `root` holds another version or an unfinished switch, and except every
    file of the LatentSync repository when a `revision` is given. Once the inference files are all there,
    writes `latentsync_version.txt` (`weights.installed_version`). Raises DownloadError: a line for what went
    wrong, then one per file that could not be fetched (its source and where to put it by hand). Returns the
    paths of all requested files.
    """
    if version not in LATENTSYNC_REPOS:
        raise ValueError(f"unknown LatentSync version {version!r}; expected one of {', '.join(LATENTSYNC_REPOS)}")
    root = Path(root)
    cache = Path(cache_dir) if cache_dir is not None else None
    wanted = expand_groups(groups)
    entries = [r for r in MANIFEST if r.group in wanted]
    pinned = LATENTSYNC_REPOS[version]
    # Switching versions replaces every version-specific file in the folder, requested or not, so that the
    # folder never pairs a UNet with the other version's SyncNet. An unfinished switch is recorded as such.
    recorded = recorded_version(root)
    switching = recorded is not None and recorded != version
    todo = [r for r in MANIFEST
            if (r in entries and (not is_weight_file(root / r.dest)
                                  or (revision is not None and r.repo_for(version) == pinned)))
            or (switching and r.per_version and (r in entries or is_weight_file(root / r.dest)))]
    by_repo: dict[str, list[Remote]] = {}
    for remote in todo:
        by_repo.setdefault(remote.repo_for(version), []).append(remote)

    failures: list[tuple[Remote, str]] = []
    unreachable: str | None = None  # once the Hub cannot be reached, only the cache is looked at
    switch_started = False
    for repo, remotes in by_repo.items():
        rev = revision if repo == pinned else None
        filenames = [r.filename for r in remotes]
        snapshot = _cached_snapshot(repo, filenames, rev, cache)
        if snapshot is None:
            try:
                if unreachable is not None:
                    raise _HubUnreachable(unreachable)
                _check_reachable(repo, filenames[0], rev)
                log.info("fetching %s from %s", ", ".join(filenames), repo)
                snapshot = _snapshot(repo, filenames, rev, cache, progress)
            except _HubUnreachable as e:
                unreachable = str(e)
                failures += [(r, unreachable) for r in remotes]
                continue
            except OSError as e:  # the repository or revision is not there, gated, an HTTP error, a full disk
                failures += [(r, _reason(e)) for r in remotes]
                continue
        for remote in remotes:
            source = snapshot / remote.filename
            if not is_weight_file(source):
                failures.append((remote, f"not found in {repo}"))
                continue
            if switching and remote.per_version and not switch_started:
                _write_version(root, f"{recorded} -> {version} (unfinished)")
                switch_started = True
            link_into_place(source, root / remote.dest)

    inference = [r for r in entries if r.group == "inference"]
    failed = [r for r, _ in failures]
    if (inference and all(is_weight_file(root / r.dest) for r in inference)
            and not any(r in inference or r.per_version for r in failed)):
        _write_version(root, version)
    if failures:
        raise DownloadError(_failure_message(failures, version, root, revision))
    return [root / r.dest for r in entries]


def _failure_message(failures: list[tuple[Remote, str]], version: str, root: Path, revision: str | None) -> str:
    from huggingface_hub import constants, hf_hub_url

    reasons = {reason for _, reason in failures}
    shared = reasons.pop() if len(reasons) == 1 else None
    lines = [f"could not download {len(failures)} file(s)" + (f" ({shared})" if shared else "")
             + "; fetch each by hand and put it in place:"]
    for remote, reason in failures:
        repo = remote.repo_for(version)
        url = hf_hub_url(repo, remote.filename, revision=revision if repo == LATENTSYNC_REPOS[version] else None)
        line = f"  {remote.dest} from {repo} ({url}) -> {(root / remote.dest).absolute()}"
        lines.append(line if shared else f"{line} [{reason}]")
    if any("reach" in reason or "offline" in reason or "connection" in reason for _, reason in failures):
        lines.append(f"  (the Hub was asked at {constants.ENDPOINT}: set HF_ENDPOINT for a mirror; with "
                     "HF_HUB_OFFLINE=1 only files already in the Hugging Face cache are used)")
    return "\n".join(lines)
