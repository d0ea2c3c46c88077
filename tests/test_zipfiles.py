"""Uploaded zip archives: safe extraction and refusal of malicious or damaged archives."""
from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from calibprompt.data import extract_zip, load_dataset

_PNG = io.BytesIO()
Image.new("RGB", (8, 8), (10, 200, 30)).save(_PNG, format="PNG")
PNG = _PNG.getvalue()


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name) if name.startswith(("/", "\\")) else name, data)
    return path


def dataset_members(prefix: str = "") -> dict[str, bytes]:
    members = {}
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("ADI", "DEB"):
            for i in range(n):
                members[f"{prefix}{split}/{cls}/{i}.png"] = PNG
    return members


def snapshot(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.fixture()
def area(tmp_path):
    """(work folder, destination folder); the work folder's content is checked after refusals."""
    work = tmp_path / "work"
    dest = work / "dest"
    dest.mkdir(parents=True)
    (dest / "existing.txt").write_text("keep me")
    return work, dest


def assert_refused(work: Path, dest: Path, archive: Path, match: str, **limits) -> None:
    before = snapshot(work)
    with pytest.raises(ValueError, match=match):
        extract_zip(archive, dest, **limits)
    assert snapshot(work) == before, "nothing may be written (or left) on refusal"
    assert not any(p.name.startswith(".partial-") for p in dest.iterdir())
    assert (dest / "existing.txt").read_text() == "keep me"


# -----------------------------------------------------------------------------
# Good archives
# -----------------------------------------------------------------------------


def test_archive_with_single_top_folder(tmp_path):
    members = dataset_members("Kather/") | {
        "__MACOSX/Kather/train/ADI/._0.png": b"junk",
        "Kather/.DS_Store": b"junk",
        "Kather/train/.DS_Store": b"junk",
    }
    archive = make_zip(tmp_path / "Kather small.zip", members)
    dest = tmp_path / "uploads"
    root = extract_zip(archive, dest)
    assert root == dest / "Kather small" / "Kather"
    assert not (dest / "Kather small" / "__MACOSX").exists()
    assert not list(root.rglob(".DS_Store"))
    assert [p.name for p in dest.iterdir()] == ["Kather small"]
    ds = load_dataset(root)
    assert ds.layout == "split-folder" and ds.class_ids == ["ADI", "DEB"]
    assert (len(ds.train), len(ds.test)) == (6, 2)
    assert ds.train.paths[0].read_bytes() == PNG

    # The same archive again goes next to the first one.
    assert extract_zip(archive, dest) == dest / "Kather small-2" / "Kather"


def test_archive_without_top_folder(tmp_path):
    archive = make_zip(tmp_path / "data.zip", {"a/1.png": PNG, "a/2.png": PNG, "b/1.png": PNG, "notes.txt": b"x"})
    dest = tmp_path / "new" / "dest"  # created when missing
    root = extract_zip(archive, dest)
    assert root == dest / "data"
    ds = load_dataset(root)
    assert ds.layout == "image-folder" and ds.train.counts() == {"a": 2, "b": 1}


def test_archive_with_directory_entries_and_manifest(tmp_path):
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("up/", b"")
        zf.writestr("up/imgs/", b"")
        zf.writestr("up/imgs/x.png", PNG)
        zf.writestr("up/imgs/y.png", PNG)
        zf.writestr("up/manifest.csv", "path,label\nimgs/x.png,cat\nimgs/y.png,dog\n")
    root = extract_zip(archive, tmp_path / "dest")
    ds = load_dataset(root, confine_to_root=True)
    assert ds.layout == "csv" and ds.class_ids == ["cat", "dog"]


# -----------------------------------------------------------------------------
# Refusals
# -----------------------------------------------------------------------------


def test_parent_directory_member(area):
    work, dest = area
    archive = make_zip(work / "evil.zip", {"ok/a.png": PNG, "../evil.png": PNG})
    assert_refused(work, dest, archive, r"outside its folder.*'\.\./evil\.png'")
    archive = make_zip(work / "evil2.zip", {"a/../../evil.png": PNG})
    assert_refused(work, dest, archive, r"'\.\.'")
    archive = make_zip(work / "evil3.zip", {"a\\..\\..\\evil.png": PNG})
    assert_refused(work, dest, archive, r"'\.\.'")


@pytest.mark.parametrize("name", ["/abs.png", "C:\\abs.png", "\\\\server\\share\\abs.png", "c:/abs.png"])
def test_absolute_member(area, name):
    work, dest = area
    archive = make_zip(work / "abs.zip", {"ok/a.png": PNG, name: PNG})
    assert_refused(work, dest, archive, "absolute path")


def test_symlink_member(area):
    work, dest = area
    archive = work / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ds/a/1.png", PNG)
        info = zipfile.ZipInfo("ds/a/link.png")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    assert_refused(work, dest, archive, r"symbolic link.*'ds/a/link\.png'")


def test_too_many_files(area):
    work, dest = area
    archive = make_zip(work / "many.zip", {f"a/{i}.png": PNG for i in range(11)})
    assert_refused(work, dest, archive, "holds 11 files and folders, more than the limit of 10", max_files=10)
    # __MACOSX and .DS_Store members do not count.
    junk = {f"__MACOSX/a/._{i}.png": b"j" for i in range(20)}
    archive = make_zip(work / "junk.zip", {f"a/{i}.png": PNG for i in range(10)} | junk)
    assert extract_zip(archive, work / "ok", max_files=10) == work / "ok" / "junk" / "a"


def test_too_large(area):
    work, dest = area
    archive = make_zip(work / "big.zip", {f"a/{i}.png": bytes(1024) for i in range(5)})
    expected = r"expand to 5\.0 KB, more than the limit of 2\.0 KB \(reached at 'a/2\.png'\)"
    assert_refused(work, dest, archive, expected, max_bytes=2048)


def test_high_compression_ratio(area):
    work, dest = area
    archive = make_zip(work / "bomb.zip", {"a/zeros.png": bytes(5_000_000), "b/1.png": PNG})
    assert_refused(work, dest, archive, r"'a/zeros\.png'.*zip bomb", max_ratio=100)


def test_many_small_members_cannot_add_up_to_a_bomb(area):
    # each member sits at the per-member exemption (1 MiB); 20 of them expand ~1000 times as a whole
    work, dest = area
    archive = make_zip(work / "many.zip", {f"a/{i}.png": bytes(1024**2) for i in range(20)} | {"b/1.png": PNG})
    assert_refused(work, dest, archive, r"expands [\d,]+ times as a whole .* zip bomb")


def test_not_a_zip(area):
    work, dest = area
    fake = work / "fake.zip"
    fake.write_bytes(PNG)
    assert_refused(work, dest, fake, "not a valid zip archive")
    with pytest.raises(ValueError, match="not found"):
        extract_zip(work / "missing.zip", dest)


def test_truncated_zip(area):
    work, dest = area
    good = make_zip(work / "good.zip", dataset_members("ds/"))
    truncated = work / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_refused(work, dest, truncated, "zip archive")


def test_corrupted_member_data(area):
    work, dest = area
    payload = bytes(range(256)) * 40
    good = make_zip(work / "crc.zip", {"ds/a/1.png": PNG, "ds/b/2.png": payload}, compression=zipfile.ZIP_STORED)
    data = bytearray(good.read_bytes())
    at = data.index(payload) + 100
    data[at] ^= 0xFF
    good.write_bytes(bytes(data))
    assert_refused(work, dest, good, r"damaged.*'ds/b/2\.png'")
    # Failing while extracting into a destination that did not exist leaves no trace either.
    with pytest.raises(ValueError, match="damaged"):
        extract_zip(good, work / "new" / "dest")
    assert not (work / "new").exists()


def test_encrypted_member(area):
    work, dest = area
    archive = make_zip(work / "enc.zip", {"ds/a/1.png": PNG, "ds/b/1.png": PNG}, compression=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    # Set the "encrypted" flag bit in every local and central directory header.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            data[start + offset] |= 0x1
            start += 4
    archive.write_bytes(bytes(data))
    assert_refused(work, dest, archive, r"'ds/a/1\.png' is encrypted")


def test_empty_archive(area):
    work, dest = area
    archive = make_zip(work / "empty.zip", {"__MACOSX/._x": b"j"})
    assert_refused(work, dest, archive, "no files")
