"""Safe extraction of uploaded zip archives (datasets zipped by a user).

:func:`extract_zip` checks the whole central directory before writing anything, then streams
each member into a private ``.partial-*`` folder inside ``dest_dir`` with byte counters (declared
sizes are not trusted), and only renames that folder into place when every member was written.
On any error the partial folder is removed and ``dest_dir`` is left as it was.

Where the files end up: ``dest_dir/<archive stem>`` (the stem reduced to letters, digits,
``.``, ``_``, ``-`` and spaces; ``-2``, ``-3``... appended when that name is taken). The
returned path is the dataset root: that folder, or its only top-level sub-folder when the
archive's content sits under a single folder (``Kather.zip`` holding ``Kather/ADI/...``
returns ``dest_dir/Kather/Kather``).

A foundation module (it needs only :mod:`calibprompt.paths`), so that every layer that unpacks an
archive (uploaded datasets in ``data``, a downloaded checkpoint in ``backbones``) uses this one routine;
``calibprompt.data.archives`` and ``calibprompt.data.extract_zip`` re-export it.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from calibprompt.fileio import format_bytes
from calibprompt.paths import shown

__all__ = ["extract_zip", "DEFAULT_MAX_FILES", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_RATIO"]

DEFAULT_MAX_FILES = 20_000
DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_RATIO = 200

#: Members no larger than this (uncompressed, as declared) are exempt from the per-member ratio check:
#: small text files compress very well and cannot expand into much. Actual bytes are capped at the
#: declared size while extracting, and the whole archive's ratio is checked too (below), so many small
#: members cannot add up to a bomb.
_RATIO_EXEMPT_BYTES = 1024**2
#: Archives expanding to more than this are held to ``max_ratio`` as a whole as well
_WHOLE_RATIO_FLOOR = 16 * 1024**2
_CHUNK = 1024**2
#: OS errors passed on as they are (the caller says them in plain words): a full disk or quota, a read-only
#: or permission-denied data directory
_DISK_FAULTS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DRIVE = re.compile(r"^[A-Za-z]:")


def _is_junk(parts: tuple[str, ...]) -> bool:
    """macOS metadata that archivers add: ``__MACOSX/`` folders and ``.DS_Store`` files."""
    return "__MACOSX" in parts or parts[-1] == ".DS_Store"


def _member_parts(name: str) -> tuple[str, ...]:
    """The path components of a member name, refusing absolute names and ``..``."""
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or _DRIVE.match(normalised):
        raise ValueError(
            f"The archive contains a file with an absolute path ({name!r}), which could overwrite "
            "files elsewhere. Re-create the archive from the dataset folder itself."
        )
    parts = tuple(p for p in normalised.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ValueError(
            f"The archive contains a path that points outside its folder ({name!r}, with '..'). "
            "Re-create the archive from the dataset folder itself."
        )
    return parts


def _plan(infos: list[zipfile.ZipInfo], max_files: int, max_bytes: int, max_ratio: float):
    """Check the central directory; return ``[(info, parts, is_dir)]`` of the members to write."""
    plan = []
    total = packed = 0
    first_over = None
    for info in infos:
        name = info.filename
        parts = _member_parts(name)
        if not parts:
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ValueError(
                f"The archive contains a symbolic link ({name!r}); links are not accepted. "
                "Zip the actual files instead (e.g. without the --symlinks option)."
            )
        if info.flag_bits & 0x1:
            raise ValueError(
                f"The archive member {name!r} is encrypted (password-protected). Create the archive "
                "without a password."
            )
        if _is_junk(parts):
            continue
        is_dir = name.replace("\\", "/").endswith("/")
        plan.append((info, parts, is_dir))
        if is_dir:
            continue
        total += info.file_size
        packed += info.compress_size
        if total > max_bytes and first_over is None:
            first_over = name
        if info.file_size > _RATIO_EXEMPT_BYTES:
            ratio = info.file_size / info.compress_size if info.compress_size else float("inf")
            if ratio > max_ratio:
                raise ValueError(
                    f"The archive member {name!r} expands {ratio:,.0f} times ({format_bytes(info.compress_size)} "
                    f"to {format_bytes(info.file_size)}), more than the limit of {max_ratio:g}; this looks "
                    "like a zip bomb, so the archive was refused."
                )
    if len(plan) > max_files:
        raise ValueError(
            f"The archive holds {len(plan):,} files and folders, more than the limit of {max_files:,}. "
            "Split the dataset into smaller archives or use fewer images."
        )
    if total > _WHOLE_RATIO_FLOOR and total > max_ratio * max(packed, 1):
        raise ValueError(
            f"The archive expands {total / max(packed, 1):,.0f} times as a whole ({format_bytes(packed)} to "
            f"{format_bytes(total)}), more than the limit of {max_ratio:g}; this looks like a zip bomb, so the "
            "archive was refused. Zip the images themselves (they do not compress much)."
        )
    if first_over is not None:
        raise ValueError(
            f"The archive would expand to {format_bytes(total)}, more than the limit of "
            f"{format_bytes(max_bytes)} (reached at {first_over!r}). Use fewer or smaller images."
        )
    if not any(not is_dir for _, _, is_dir in plan):
        raise ValueError("The archive contains no files. Zip the dataset folder with its images.")
    return plan


def _safe_stem(stem: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._ -]+", "_", stem).strip(" ._-")
    return cleaned[:100] or "dataset"


def _final_path(dest_dir: Path, stem: str) -> Path:
    candidate = dest_dir / stem
    counter = 2
    while os.path.lexists(candidate):
        candidate = dest_dir / f"{stem}-{counter}"
        counter += 1
    return candidate


def _write_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: list[int],
                  max_bytes: int) -> None:
    """Stream one member to ``target`` (which must not exist), counting actual bytes."""
    written = 0
    with zf.open(info) as src, open(target, "xb") as dst:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            budget[0] += len(chunk)
            if written > info.file_size:
                raise ValueError(
                    f"The archive member {info.filename!r} holds more data than it declares; the "
                    "archive is damaged or malicious and was refused."
                )
            if budget[0] > max_bytes:
                raise ValueError(
                    f"The archive expands to more than {format_bytes(max_bytes)} (the limit) while "
                    f"extracting {info.filename!r}. Use fewer or smaller images."
                )
            dst.write(chunk)
    if written != info.file_size:
        raise ValueError(
            f"The archive member {info.filename!r} is shorter than it declares; the archive is "
            "damaged. Re-create or re-download it."
        )


def _extract_all(zf: zipfile.ZipFile, plan, partial: Path, max_bytes: int) -> None:
    base = partial.resolve()
    budget = [0]
    for info, parts, is_dir in plan:
        name = info.filename
        target = base.joinpath(*parts)
        if not target.resolve().is_relative_to(base) or target.resolve() == base:
            raise ValueError(f"The archive member {name!r} would be written outside its folder; refused.")
        try:
            if is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_member(zf, info, target, budget, max_bytes)
        except ValueError:
            raise
        except FileExistsError as exc:
            raise ValueError(
                f"The archive contains {name!r} twice (or a file and a folder with the same name). "
                "Re-create the archive."
            ) from exc
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise ValueError(
                f"The archive is damaged: {name!r} could not be read ({exc}). Re-create or "
                "re-download it."
            ) from exc
        except NotImplementedError as exc:
            raise ValueError(
                f"The archive member {name!r} uses a compression method this tool cannot read "
                f"({exc}). Re-create the archive with standard (deflate) compression."
            ) from exc
        except RuntimeError as exc:  # zipfile: "File ... is encrypted, password required"
            raise ValueError(f"The archive member {name!r} could not be extracted ({exc}).") from exc
        except OSError as exc:
            if exc.errno in _DISK_FAULTS:  # a full or read-only disk: said in plain words by errors.user_message
                raise
            raise ValueError(f"Could not extract {name!r} from the archive: {exc.strerror or exc}.") from exc


def _dataset_root(folder: Path) -> Path:
    """``folder``, or its only visible sub-folder when it holds nothing else."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return folder


def extract_zip(zip_path: str | os.PathLike, dest_dir: str | os.PathLike, *, max_files: int = DEFAULT_MAX_FILES,
                max_bytes: int = DEFAULT_MAX_BYTES, max_ratio: float = DEFAULT_MAX_RATIO) -> Path:
    """Extract a user's zip archive safely into ``dest_dir/<stem>`` and return the dataset root.

    ``__MACOSX/`` folders and ``.DS_Store`` files are skipped. The dataset root is the extracted
    folder, or its only top-level sub-folder when everything sits under one folder (see the
    module docstring). ``dest_dir`` is created when missing.

    Raises
    ------
    ValueError
        With a message naming the offending member, for: a file that is missing or not a zip
        archive; absolute member paths (``/x``, ``C:\\x``, ``\\\\server\\x``); ``..`` components;
        symbolic links; encrypted members; more than ``max_files`` files and folders; more than
        ``max_bytes`` uncompressed (checked from the central directory before extracting, and
        again on the actual bytes); a member larger than 1 MiB that expands more than
        ``max_ratio`` times; damaged data (CRC errors, truncated members); unsupported compression.
        Nothing is left behind in ``dest_dir`` on error.
    """
    zip_path = Path(zip_path)
    dest_dir = Path(dest_dir)
    if not zip_path.is_file():
        raise ValueError(f"Archive not found: {shown(zip_path)}. Upload the .zip file again.")
    for value, label in ((max_files, "max_files"), (max_bytes, "max_bytes"), (max_ratio, "max_ratio")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{label} must be a positive number, got {value!r}.")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise ValueError(
            f"{zip_path.name} is not a valid zip archive, or it is incomplete (for example an "
            f"interrupted upload) ({exc}). Upload a .zip file created with your system's "
            "'compress' or 'send to zip' command."
        ) from exc
    except OSError as exc:
        raise ValueError(f"Cannot read the archive {zip_path.name}: {exc.strerror or exc}.") from exc

    with zf:
        plan = _plan(zf.infolist(), max_files, max_bytes, max_ratio)
        created = [p for p in (dest_dir, *dest_dir.parents) if not p.exists()]  # innermost first
        dest_dir.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=dest_dir))
        try:
            _extract_all(zf, plan, partial, max_bytes)
            inner = _dataset_root(partial)
            final = _final_path(dest_dir, _safe_stem(zip_path.stem))
            os.rename(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            for folder in created:  # only the folders this call created, if still empty
                try:
                    folder.rmdir()
                except OSError:
                    break
            raise
    return final / inner.relative_to(partial) if inner != partial else final
