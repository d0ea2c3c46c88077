"""MedCLIP's released weights: download the zip with a known SHA-256 (pooch), unpack only the checkpoint.

MedCLIP-ViT's weights are published as one zip archive (:data:`CHECKPOINT_URL`) holding
``pytorch_model.bin``. :func:`download_medclip_checkpoint` fetches it with ``pooch.retrieve``, which
streams into a temporary file in the destination folder, checks its SHA-256 and only then moves it into
place (a wrong hash leaves nothing behind); the archive is unpacked by the project's safe
:func:`calibprompt.archives.extract_zip` (no absolute or ``..`` paths, no links, size and
compression-ratio limits) into a private folder, and the one ``pytorch_model.bin`` is moved onto its
final name. The archive and the folder are removed afterwards, whatever happened.

The expected SHA-256 is, in order: the ``sha256`` argument, the environment variable
:data:`CHECKPOINT_SHA256_ENV`, and for :data:`CHECKPOINT_URL` :data:`CHECKPOINT_SHA256`. An archive from
any other URL without a known hash is refused before anything is downloaded.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from calibprompt.archives import extract_zip  # the project's one zip-safety routine

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKPOINT_SHA256",
    "CHECKPOINT_SHA256_ENV",
    "CHECKPOINT_URL",
    "MedCLIPDownloadError",
    "download_medclip_checkpoint",
]

CHECKPOINT_URL = "https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip"
CHECKPOINT_NAME = "pytorch_model.bin"
#: SHA-256 of the zip at :data:`CHECKPOINT_URL`. MedCLIP's authors publish no checksum; this is the value
#: an independent project pinning the same release records for ``medclip-vit-pretrained.zip`` (its
#: ``pytorch_model.bin``: ``07bf9f917ccce482ea30ec84e533a30c3ad395c424d3624f6b72edf8484f8126``). If the
#: release is ever re-published, set :data:`CHECKPOINT_SHA256_ENV` to the new archive's hash.
CHECKPOINT_SHA256 = "414b3ac515431c06018400ab2d83ee7307e314020cd4f6babbfdea4a58515725"
#: An environment variable naming the expected SHA-256 of the archive (overrides :data:`CHECKPOINT_SHA256`).
CHECKPOINT_SHA256_ENV = "CALIBPROMPT_MEDCLIP_SHA256"

_MAX_EXTRACT_BYTES = 4 << 30  # the unpacked archive may hold at most 4 GiB
_MAX_MEMBERS = 100
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class MedCLIPDownloadError(RuntimeError):
    """The MedCLIP checkpoint could not be downloaded, verified or extracted."""


def _expected_sha256(url: str, sha256: str | None) -> str:
    """The archive's expected SHA-256 (64 lower-case hex digits); refuses an unverifiable download."""
    given = sha256 if sha256 is not None else os.environ.get(CHECKPOINT_SHA256_ENV, "").strip() or None
    if given is None:
        if url == CHECKPOINT_URL:
            return CHECKPOINT_SHA256
        raise MedCLIPDownloadError(
            f"Refusing to use an unverified download: no SHA-256 is known for {url}. Pass sha256=... or set "
            f"{CHECKPOINT_SHA256_ENV} to the archive's SHA-256 (e.g. the output of `sha256sum` on a copy you trust)."
        )
    digest = given.lower().removeprefix("sha256:")
    if not _SHA256.match(digest):
        raise ValueError(f"The expected SHA-256 must be 64 hexadecimal digits (optionally 'sha256:' first), "
                         f"got {given!r}; check {CHECKPOINT_SHA256_ENV} or the sha256 argument.")
    return digest


def _copy_file_url(url: str, output_file, pooch=None) -> None:  # noqa: ARG001 - pooch's downloader signature
    """A pooch downloader for ``file://`` URLs: a copy of the archive on this machine or a mounted share."""
    source = urllib.request.url2pathname(urllib.parse.urlparse(url).path)
    with open(source, "rb") as src:
        if hasattr(output_file, "write"):
            shutil.copyfileobj(src, output_file, _CHUNK)
            return
        with open(output_file, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)


def _fetch(url: str, sha256: str, dest: Path, timeout: float) -> Path:
    """Download ``url`` into ``dest`` with pooch, checking its SHA-256; return the archive's path."""
    import pooch  # lazy: only a download needs it

    if urllib.parse.urlparse(url).scheme == "file":
        downloader = _copy_file_url
    else:
        downloader = pooch.HTTPDownloader(timeout=timeout)
    name = "." + (Path(urllib.parse.urlparse(url).path).name or "medclip-vit-pretrained.zip")
    try:
        return Path(pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=name, path=dest,
                                   downloader=downloader, progressbar=False))
    except ValueError as exc:  # pooch: the downloaded file's hash differs (the file was deleted)
        raise MedCLIPDownloadError(
            f"The file downloaded from {url} does not match the expected SHA-256 {sha256} ({exc}); it was "
            f"deleted. If the release was re-published on purpose, set {CHECKPOINT_SHA256_ENV} to its new hash."
        ) from exc
    except OSError as exc:  # requests' errors are OSErrors too: offline, refused, timed out, not found
        raise MedCLIPDownloadError(
            f"Cannot download the MedCLIP checkpoint from {url} ({exc}). This machine may be offline: "
            f"download that zip on a connected machine, take {CHECKPOINT_NAME} out of it and put it in {dest}."
        ) from exc


def _extract_checkpoint(archive: Path, target: Path) -> Path:
    """Unpack ``archive`` safely beside ``target`` and move its one ``pytorch_model.bin`` onto ``target``."""

    if not zipfile.is_zipfile(archive):
        raise MedCLIPDownloadError(f"The downloaded file is not a zip archive: {archive.name}.")
    scratch = Path(tempfile.mkdtemp(prefix=".medclip-extract-", dir=target.parent))
    try:
        try:
            extract_zip(archive, scratch, max_files=_MAX_MEMBERS, max_bytes=_MAX_EXTRACT_BYTES)
        except ValueError as exc:
            raise MedCLIPDownloadError(f"Refusing the downloaded archive as unsafe or damaged: {exc}") from exc
        found = [p for p in scratch.rglob(CHECKPOINT_NAME) if p.is_file() and not p.is_symlink()]
        if len(found) != 1:
            raise MedCLIPDownloadError(f"Expected exactly one {CHECKPOINT_NAME} in the archive, found {len(found)}.")
        with open(found[0], "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(found[0], target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def download_medclip_checkpoint(dest_dir: str | os.PathLike, *, url: str = CHECKPOINT_URL, timeout: float = 10.0,
                                force: bool = False, sha256: str | None = None) -> Path:
    """Download MedCLIP's released zip, verify its SHA-256 and extract only ``pytorch_model.bin`` into ``dest_dir``.

    Args:
        dest_dir: the folder of the checkpoint (the app uses ``<data dir>/models/medclip-vit``).
        url: the archive (``https://``, or ``file://`` for a local copy).
        timeout: seconds bounding the connection and each read.
        force: download again even when ``dest_dir/pytorch_model.bin`` exists (else it is kept).
        sha256: the archive's expected SHA-256 (default: :data:`CHECKPOINT_SHA256_ENV`, then
            :data:`CHECKPOINT_SHA256` for :data:`CHECKPOINT_URL`; no default for other URLs).

    Returns the checkpoint's path. The archive and the unpacked folder are deleted afterwards; on any
    error ``dest_dir`` holds nothing new.

    Raises:
        MedCLIPDownloadError: no known hash for ``url``, offline or refused, a hash mismatch, or an
            archive that is not a zip, is unsafe, or does not hold exactly one ``pytorch_model.bin``.
        ValueError: ``sha256`` (or the environment variable) is not 64 hexadecimal digits.
    """
    dest = Path(dest_dir).expanduser()
    target = dest / CHECKPOINT_NAME
    if target.is_file() and not force:
        return target
    expected = _expected_sha256(url, sha256)
    dest.mkdir(parents=True, exist_ok=True)
    archive = None
    try:
        archive = _fetch(url, expected, dest, timeout)
        return _extract_checkpoint(archive, target)
    finally:
        if archive is not None:
            archive.unlink(missing_ok=True)
