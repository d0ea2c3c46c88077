"""Labelled image datasets: layout detection, task matching, skipped files and few-shot splits."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from calibprompt.data import (
    Dataset,
    LabeledImages,
    Sample,
    few_shot_split,
    from_relative_paths,
    load_dataset,
    sample_few_shot,
)
from calibprompt.prompting.tasks import load_task

_PNG_CACHE: dict[int, bytes] = {}


def png_bytes(shade: int = 0) -> bytes:
    if shade not in _PNG_CACHE:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (shade, 255 - shade, 128)).save(buffer, format="PNG")
        _PNG_CACHE[shade] = buffer.getvalue()
    return _PNG_CACHE[shade]


def write_png(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(shade))
    return path


def make_classes(folder: Path, counts: dict[str, int], prefix: str = "img") -> None:
    for cls, n in counts.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_png(folder / cls / f"{prefix}{i:03d}.png", i % 200)


def rel(images: LabeledImages) -> list[str]:
    return images.relative_paths()


# -----------------------------------------------------------------------------
# Layouts
# -----------------------------------------------------------------------------


def test_image_folder(tmp_path):
    root = tmp_path / "derm"
    make_classes(root, {"nevus": 3, "melanoma_in_situ": 2})
    ds = load_dataset(root)
    assert isinstance(ds, Dataset)
    assert ds.layout == "image-folder" and ds.name == "derm" and ds.root == root
    assert ds.class_ids == ["melanoma_in_situ", "nevus"]  # sorted folder names
    assert ds.classnames == ["melanoma in situ", "nevus"]
    assert ds.test is None and ds.test_split is None
    assert len(ds.train) == 5
    assert ds.train.labels == [0, 0, 1, 1, 1]
    assert rel(ds.train)[:2] == ["melanoma_in_situ/img000.png", "melanoma_in_situ/img001.png"]
    assert ds.train.counts() == {"melanoma_in_situ": 2, "nevus": 3}
    assert {k: len(v) for k, v in ds.train.by_class().items()} == {0: 2, 1: 3}
    assert all(isinstance(s, Sample) for s in ds.train.samples)
    assert ds.train.paths[0] == root / "melanoma_in_situ" / "img000.png"
    assert ds.summary() == "5 train / 0 test images in 2 classes (no test split); 0 files skipped"
    sub = ds.train.subset([4, 0])
    assert sub.labels == [1, 0] and sub.class_ids == ds.class_ids and len(sub) == 2


def test_split_folder(tmp_path):
    root = tmp_path / "ds"
    make_classes(root / "train", {"b": 2, "a": 3})
    make_classes(root / "test", {"a": 1, "b": 1})
    ds = load_dataset(root)
    assert ds.layout == "split-folder"
    assert ds.class_ids == ["a", "b"]
    assert (len(ds.train), len(ds.test)) == (5, 2)
    assert ds.train_split == "train" and ds.test_split == "test"
    assert rel(ds.test) == ["test/a/img000.png", "test/b/img000.png"]
    assert ds.test.root == root and ds.train.root == root
    assert ds.summary().startswith("5 train / 2 test images in 2 classes")


def test_val_used_as_test_split(tmp_path):
    root = tmp_path / "ds"
    make_classes(root / "Train", {"a": 2, "b": 2})
    make_classes(root / "val", {"a": 1, "b": 1})
    ds = load_dataset(root)
    assert ds.layout == "split-folder"
    assert ds.test_split == "val" and len(ds.test) == 2
    assert "test split: val" in ds.summary()


def test_class_only_in_one_split_is_a_class(tmp_path):
    root = tmp_path / "ds"
    make_classes(root / "train", {"a": 2, "b": 2})
    make_classes(root / "test", {"a": 1, "b": 1, "c": 1})
    ds = load_dataset(root)
    assert ds.class_ids == ["a", "b", "c"]
    assert ds.train.counts() == {"a": 2, "b": 2, "c": 0}
    with pytest.raises(ValueError, match="Class 'c' has only 0 images"):
        sample_few_shot(ds.train, 1, 0)


def test_reference_layout_with_classnames(tmp_path):
    root = tmp_path / "RSNA18"
    make_classes(root / "images" / "train", {"lung_opacity": 2, "no_lung_opacity_not_normal": 2, "normal": 2})
    make_classes(root / "images" / "test", {"lung_opacity": 1, "no_lung_opacity_not_normal": 1, "normal": 1})
    (root / "classnames.txt").write_text(
        "lung_opacity lung opacity\nno_lung_opacity_not_normal no lung opacity, not normal\nnormal normal\n"
    )
    ds = load_dataset(root)
    assert ds.layout == "reference"
    assert ds.class_ids == ["lung_opacity", "no_lung_opacity_not_normal", "normal"]
    assert ds.classnames == ["lung opacity", "no lung opacity, not normal", "normal"]
    assert (len(ds.train), len(ds.test)) == (6, 3)
    assert rel(ds.test)[0] == "images/test/lung_opacity/img000.png"
    assert ds.skipped == []


def test_reference_layout_matches_task(tmp_path):
    root = tmp_path / "kather"
    classes = load_task("kather").class_ids
    make_classes(root / "images" / "train", {c: 1 for c in classes})
    make_classes(root / "images" / "test", {c: 1 for c in classes})
    (root / "classnames.txt").write_text("ADI adipose tissue\n")
    ds = load_dataset(root, task="kather")
    assert ds.class_ids == classes and ds.train.labels == list(range(9))


def write_csv_dataset(root: Path, header: bool, split: bool) -> Path:
    rows = []
    for cls, n_train, n_test in (("benign", 3, 1), ("malignant", 2, 2)):
        for i in range(n_train + n_test):
            path = write_png(root / "imgs" / f"{cls}_{i}.png", i)
            row = [path.relative_to(root).as_posix(), cls]
            if split:
                row.append("train" if i < n_train else "test")
            rows.append(",".join(row))
    lines = ([("path,label,split" if split else "path,label")] if header else []) + rows
    csv_path = root / "labels.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


@pytest.mark.parametrize("header", [True, False])
def test_csv_without_split(tmp_path, header):
    csv_path = write_csv_dataset(tmp_path, header=header, split=False)
    ds = load_dataset(csv_path)
    assert ds.layout == "csv" and ds.root == tmp_path and ds.name == "labels"
    assert ds.class_ids == ["benign", "malignant"]
    assert len(ds.train) == 8 and ds.test is None
    assert ds.train.counts() == {"benign": 4, "malignant": 4}
    assert rel(ds.train)[0] == "imgs/benign_0.png"


@pytest.mark.parametrize("header", [True, False])
def test_csv_with_split_column(tmp_path, header):
    csv_path = write_csv_dataset(tmp_path, header=header, split=True)
    ds = load_dataset(csv_path)
    assert (len(ds.train), len(ds.test)) == (5, 3)
    assert ds.test.counts() == {"benign": 1, "malignant": 2}
    assert ds.test_split == "test"


def test_csv_header_with_other_column_order_and_task_names(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    write_png(tmp_path / "sub" / "c.png")
    (tmp_path / "m.csv").write_text(
        "split,label,path\ntrain,Malignant,a.png\ntrain,benign,b.png\ntest,BENIGN,sub/c.png\n"
        f"test,malignant,{(tmp_path / 'a.png').as_posix()}\n"
    )
    ds = load_dataset(tmp_path / "m.csv", task="digestpath")
    assert ds.class_ids == ["benign", "malignant"]
    assert ds.train.labels == [1, 0] and ds.test.labels == [0, 1]
    assert ds.test.paths[1] == tmp_path / "a.png"


def test_csv_missing_and_non_image_rows_are_skipped(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "m.csv").write_text("path,label\na.png,x\nb.png,y\ngone.png,x\nnotes.txt,y\n")
    ds = load_dataset(tmp_path / "m.csv")
    assert len(ds.train) == 2
    reasons = dict(ds.skipped)
    assert reasons["gone.png"].startswith("file not found")
    assert reasons["notes.txt"].startswith("not an image")
    assert "2 files skipped (1 missing, 1 non-image)" in ds.summary()


def test_csv_numeric_labels_sort_numerically(tmp_path):
    lines = []
    for label in (2, 10, 1):
        write_png(tmp_path / f"{label}.png")
        lines.append(f"{label}.png,{label}")
    (tmp_path / "m.csv").write_text("\n".join(lines))
    assert load_dataset(tmp_path / "m.csv").class_ids == ["1", "2", "10"]


def test_folder_with_manifest(tmp_path):
    root = tmp_path / "upload"
    write_csv_dataset(root, header=True, split=True).rename(root / "manifest.csv")
    ds = load_dataset(root)
    assert ds.layout == "csv" and ds.name == "upload"
    assert (len(ds.train), len(ds.test)) == (5, 3)


def test_confine_to_root_skips_csv_rows_outside(tmp_path):
    root = tmp_path / "upload"
    write_png(root / "a.png")
    write_png(root / "b.png")
    outside = write_png(tmp_path / "secret.png")
    (root / "manifest.csv").write_text(f"path,label\na.png,x\nb.png,y\n../secret.png,x\n{outside},y\n")
    assert len(load_dataset(root).train) == 4
    ds = load_dataset(root, confine_to_root=True)
    assert len(ds.train) == 2
    assert sum("outside the dataset folder" in reason for _, reason in ds.skipped) == 2


def test_single_wrapper_folder_is_descended(tmp_path):
    make_classes(tmp_path / "upload" / "Kather", {"a": 1, "b": 1})
    ds = load_dataset(tmp_path / "upload")
    assert ds.root == tmp_path / "upload" / "Kather" and ds.class_ids == ["a", "b"]


# -----------------------------------------------------------------------------
# Skipped and ignored files
# -----------------------------------------------------------------------------


def test_non_image_files_are_skipped_and_reported(tmp_path):
    root = tmp_path / "ds"
    make_classes(root, {"a": 2, "b": 2})
    (root / "a" / "notes.txt").write_text("hello")
    (root / "b" / "scan.pdf").write_bytes(b"%PDF-1.4")
    (root / "b" / "nested").mkdir()
    write_png(root / "b" / "nested" / "deep.png")
    ds = load_dataset(root)
    assert len(ds.train) == 4
    skipped = dict(ds.skipped)
    assert skipped["a/notes.txt"].startswith("not an image") and skipped["b/scan.pdf"].startswith("not an image")
    assert "b/nested/" in skipped  # only direct children of a class folder are used
    assert "b/nested/deep.png" not in rel(ds.train)
    assert "3 files skipped" in ds.summary()


def test_summary_for_non_image_only(tmp_path):
    root = tmp_path / "ds"
    make_classes(root / "train", {"a": 2, "b": 2})
    make_classes(root / "test", {"a": 1, "b": 1})
    (root / "train" / "a" / "x.txt").write_text("")
    (root / "test" / "b" / "y.csv").write_text("")
    assert load_dataset(root).summary() == "4 train / 2 test images in 2 classes; 2 files skipped (non-image)"


def test_hidden_files_are_ignored(tmp_path):
    root = tmp_path / "ds"
    make_classes(root, {"a": 2, "b": 2})
    (root / "a" / ".DS_Store").write_bytes(b"\0")
    write_png(root / "a" / ".hidden.png")
    write_png(root / ".cache" / "x" / "y.png")
    write_png(root / "__MACOSX" / "a" / "._img000.png")
    ds = load_dataset(root)
    assert ds.class_ids == ["a", "b"] and len(ds.train) == 4 and ds.skipped == []


def test_empty_class_folder_is_dropped_without_task(tmp_path):
    root = tmp_path / "ds"
    make_classes(root, {"a": 1, "b": 1})
    (root / "empty").mkdir()
    ds = load_dataset(root)
    assert ds.class_ids == ["a", "b"] and ("empty/", "class folder without images") in ds.skipped


# -----------------------------------------------------------------------------
# Tasks
# -----------------------------------------------------------------------------


def test_task_matching_case_and_prompt_names(tmp_path):
    task = load_task("kather")
    root = tmp_path / "k"
    # ids in other case, prompt names and display names, created in reverse order
    folder_names = ["adi", "background", "Debris", "lym", "MUCUS", "smooth_muscle", "norm", "STR",
                    "colorectal adenocarcinoma epithelium"]
    for i, name in reversed(list(enumerate(folder_names))):
        make_classes(root, {name: i + 1})
    ds = load_dataset(root, task=task)
    assert ds.class_ids == task.class_ids and ds.classnames == task.classnames
    assert ds.train.counts() == {cid: i + 1 for i, cid in enumerate(task.class_ids)}
    assert ds.train.labels == sorted(ds.train.labels)
    assert load_dataset(root, task="kather").class_ids == task.class_ids  # by name too


def test_task_unknown_folder(tmp_path):
    root = tmp_path / "k"
    make_classes(root, {c: 1 for c in load_task("kather").class_ids} | {"FAT": 1})
    with pytest.raises(ValueError, match=r"'FAT'.*kather.*ADI \(adipose tissue\)"):
        load_dataset(root, task="kather")


def test_task_class_without_images(tmp_path):
    root = tmp_path / "k"
    make_classes(root / "train", {c: 1 for c in load_task("kather").class_ids if c != "DEB"})
    make_classes(root / "test", {c: 1 for c in load_task("kather").class_ids if c != "DEB"})
    (root / "test" / "DEB").mkdir()  # folder exists but is empty
    with pytest.raises(ValueError, match=r"class 'DEB' \(debris\) has no images"):
        load_dataset(root, task="kather")


def test_two_folders_matching_one_task_class(tmp_path):
    root = tmp_path / "c"
    make_classes(root, {"covid": 1, "COVID-19": 1, "normal": 1})
    with pytest.raises(ValueError, match="both match"):
        load_dataset(root, task="covid")


# -----------------------------------------------------------------------------
# Errors
# -----------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_dataset(tmp_path / "nope")


def test_not_a_folder_or_csv(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="neither a folder nor a .csv"):
        load_dataset(tmp_path / "x.txt")
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match="extract it first"):
        load_dataset(tmp_path / "x.zip")


def test_no_class_folders(tmp_path):
    write_png(tmp_path / "a.png")
    with pytest.raises(ValueError, match="No class folders found.*Accepted layouts"):
        load_dataset(tmp_path)


def test_single_class(tmp_path):
    make_classes(tmp_path, {"a": 3})
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_dataset(tmp_path)


def test_empty_dataset(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("")
    with pytest.raises(ValueError, match="contains no images"):
        load_dataset(tmp_path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_dataset(tmp_path / "empty.csv")


# -----------------------------------------------------------------------------
# Few-shot
# -----------------------------------------------------------------------------


def test_too_few_shots_message(tmp_path):
    make_classes(tmp_path / "ds", {"ADI": 9, "DEB": 5})
    ds = load_dataset(tmp_path / "ds")
    with pytest.raises(ValueError) as info:
        sample_few_shot(ds.train, 8, 1)
    assert str(info.value) == (
        "Class 'DEB' has only 5 images, fewer than the 8 shots requested; ask for fewer shots or add images."
    )
    with pytest.raises(ValueError, match="positive"):
        sample_few_shot(ds.train, 0, 1)


def test_few_shot_determinism(tmp_path):
    root = tmp_path / "a" / "ds"
    make_classes(root, {"x": 20, "y": 20, "z": 20})
    ds = load_dataset(root)
    first = sample_few_shot(ds.train, 4, seed=1)
    assert rel(first) == rel(sample_few_shot(ds.train, 4, seed=1))
    assert first.counts() == {"x": 4, "y": 4, "z": 4}
    assert first.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert all(rel(first)[i] < rel(first)[i + 1] for i in range(3))  # sorted by path per class
    assert rel(first) != rel(sample_few_shot(ds.train, 4, seed=2))

    # Same files created in another order, in a folder at another absolute path.
    other = tmp_path / "elsewhere" / "deeper" / "copy"
    for cls in ("z", "y", "x"):
        for i in reversed(range(20)):
            write_png(other / cls / f"img{i:03d}.png")
    assert rel(sample_few_shot(load_dataset(other).train, 4, seed=1)) == rel(first)

    # A copy of the folder, and a shuffled sample list, give the same choice.
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert rel(sample_few_shot(load_dataset(copy).train, 4, seed=1)) == rel(first)
    shuffled = ds.train.subset(list(reversed(range(len(ds.train)))))
    assert rel(sample_few_shot(shuffled, 4, seed=1)) == rel(first)


def test_few_shot_split_with_test_split(tmp_path):
    make_classes(tmp_path / "train", {"a": 5, "b": 5})
    make_classes(tmp_path / "test", {"a": 2, "b": 2})
    ds = load_dataset(tmp_path)
    train, test = few_shot_split(ds, 2, 0)
    assert len(train) == 4 and test is ds.test


def test_few_shot_split_complement(tmp_path):
    make_classes(tmp_path, {"a": 6, "b": 7})
    ds = load_dataset(tmp_path)
    train, test = few_shot_split(ds, 3, seed=5)
    assert len(train) == 6 and len(test) == 7
    assert not set(rel(train)) & set(rel(test))
    assert set(rel(train)) | set(rel(test)) == set(rel(ds.train))
    assert test.counts() == {"a": 3, "b": 4}
    with pytest.raises(ValueError, match="no test images"):
        few_shot_split(load_dataset(tmp_path).train.subset(train_indices(ds, train)), 3, 5)


def train_indices(ds, chosen):
    wanted = set(rel(chosen))
    return [i for i, p in enumerate(rel(ds.train)) if p in wanted]


def test_few_shot_split_without_train(tmp_path):
    make_classes(tmp_path / "test", {"a": 2, "b": 2})
    ds = load_dataset(tmp_path)
    assert ds.train is None and len(ds.test) == 4
    with pytest.raises(ValueError, match="no training images"):
        few_shot_split(ds, 1, 0)


def test_from_relative_paths_round_trip(tmp_path):
    make_classes(tmp_path / "train", {"a": 5, "b": 5})
    make_classes(tmp_path / "test", {"a": 1, "b": 1})
    ds = load_dataset(tmp_path)
    shots, _ = few_shot_split(ds, 3, seed=7)
    record = {"paths": shots.relative_paths(), "labels": shots.labels}
    again = from_relative_paths(load_dataset(tmp_path), record["paths"], record["labels"])
    assert again.paths == shots.paths and again.labels == shots.labels
    assert again.class_ids == ds.class_ids and again.classnames == ds.classnames
    assert from_relative_paths(ds.train, record["paths"], record["labels"]).paths == shots.paths

    os.remove(shots.paths[0])
    with pytest.raises(ValueError, match=r"1 of the 6 recorded images are missing.*" + record["paths"][0]):
        from_relative_paths(ds, record["paths"], record["labels"])
    with pytest.raises(ValueError, match="paths but"):
        from_relative_paths(ds, record["paths"], record["labels"][:-1])
    with pytest.raises(ValueError, match="not a class index"):
        from_relative_paths(ds, record["paths"][1:2], [5])
