"""The one file hasher, ``calibprompt.fileio.file_sha256``, and the hashers built on it."""
from __future__ import annotations

import hashlib

import pytest

from calibprompt import fileio
from calibprompt.fileio import file_sha256

# sha256 of the empty string and of b"abc" (FIPS 180-2, appendix B.1)
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.fixture(params=["file_digest", "fallback"])
def hasher(request, monkeypatch):
    """``file_sha256`` through ``hashlib.file_digest`` (3.11+) and through its Python 3.10 loop."""
    if request.param == "fallback":
        monkeypatch.delattr(hashlib, "file_digest", raising=False)
    elif not hasattr(hashlib, "file_digest"):
        pytest.skip("hashlib.file_digest needs Python 3.11")
    return file_sha256


def test_file_sha256_known_values(tmp_path, hasher):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "abc").write_bytes(b"abc")
    assert hasher(tmp_path / "empty") == EMPTY
    assert hasher(str(tmp_path / "abc")) == ABC


def test_file_sha256_reads_files_larger_than_a_block(tmp_path, hasher):
    data = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: several 1 MiB blocks and a tail
    (tmp_path / "big").write_bytes(data)
    assert hasher(tmp_path / "big") == hashlib.sha256(data).hexdigest()


def test_file_sha256_errors_are_the_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "absent")
    with pytest.raises(OSError):
        file_sha256(tmp_path)


def test_every_file_hasher_uses_file_sha256(tmp_path, monkeypatch):
    from calibprompt.service import pool
    from calibprompt.training import features

    (tmp_path / "a.png").write_bytes(b"abc")
    calls = []

    def spy(path):
        calls.append(str(path))
        return ABC

    monkeypatch.setattr(fileio, "file_sha256", spy)
    monkeypatch.setattr(features, "file_sha256", spy)
    monkeypatch.setattr(pool, "file_sha256", spy)
    assert features.file_hash(tmp_path / "a.png") == ABC
    pool._DIGESTS.clear()
    assert pool.file_digest(tmp_path / "a.png") == hashlib.sha256(ABC.encode()).hexdigest()[:32]
    assert calls == [str(tmp_path / "a.png")] * 2


@pytest.mark.parametrize("n, text", [(0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 KB"), (1536, "1.5 KB"),
                                     (5 * 1024**2, "5.0 MB"), (2 * 1024**3, "2.0 GB"), (3 * 1024**4, "3072.0 GB")])
def test_sizes_are_written_in_binary_units(n, text):
    from calibprompt.fileio import format_bytes

    assert format_bytes(n) == text
