"""utae.util.arrays: .npy/.npz files are read with bounded memory, after their headers were checked."""

from __future__ import annotations

import io
import pickle
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from utae.util.arrays import (
    ArrayFileError,
    ArrayHeader,
    check_header,
    format_shape,
    human_bytes,
    load_npy,
    load_npz,
    npy_header,
)
from numpy.lib import format as npy_format

MB = 1_000_000


# ---------------------------------------------------------------------------------------------
# A zip bomb: an .npz whose one member is a valid .npy of zeros, declared at full size, stored as deflate blocks
# that are written without ever holding (or compressing) the zeros: each block of 1 MiB of zeros is compressed
# once and repeated (a full flush makes every copy independent of what precedes it).
# ---------------------------------------------------------------------------------------------


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib's crc32_combine: the CRC-32 of A + B from crc32(A), crc32(B) and len(B) (not in Python's zlib)."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator of one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def crc32_of_zeros(n: int) -> int:
    """crc32(bytes(n)) by doubling, without the n bytes."""
    result, power, power_len = 0, zlib.crc32(b"\0"), 1
    while n:
        if n & 1:
            result = crc32_combine(result, power, power_len)
        power = crc32_combine(power, power, power_len)
        power_len *= 2
        n >>= 1
    return result


def npy_header_bytes(shape: tuple[int, ...], dtype: str) -> bytes:
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def write_zero_npz(path: Path, name: str, shape: tuple[int, ...], dtype: str, declared_size: int | None = None) -> None:
    """An .npz holding ``name.npy``: zeros of ``shape`` and ``dtype``, deflate-compressed (what np.savez_compressed
    writes), built from repeated compressed blocks. ``declared_size`` overrides the uncompressed size that the zip
    directory declares (a lying directory)."""
    header = npy_header_bytes(shape, dtype)
    n_zero = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    block = 1 << 20

    def flushed(data: bytes, final: bool) -> bytes:
        co = zlib.compressobj(9, zlib.DEFLATED, -15)
        return co.compress(data) + co.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)

    full, rest = divmod(n_zero, block)
    zero_block = flushed(bytes(block), final=False)
    size = len(header) + n_zero if declared_size is None else declared_size
    # the CRC of the bytes the directory declares: with a lying size, only the zip's own check passes
    crc = crc32_combine(zlib.crc32(header), crc32_of_zeros(size - len(header)), size - len(header))
    member = f"{name}.npy".encode()
    with open(path, "wb") as fh:
        head = flushed(header, final=False)
        tail = flushed(bytes(rest), final=True)
        csize = len(head) + full * len(zero_block) + len(tail)
        # local file header (version 2.0, no flags, deflate, no time), then the data
        fh.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, csize, size, len(member), 0))
        fh.write(member)
        fh.write(head)
        for _ in range(full):
            fh.write(zero_block)
        fh.write(tail)
        cd_offset = fh.tell()
        fh.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, csize, size,
                             len(member), 0, 0, 0, 0, 0, 0))
        fh.write(member)
        cd_size = fh.tell() - cd_offset
        fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, cd_size, cd_offset, 0))


def test_the_bomb_builder_writes_what_numpy_reads(tmp_path: Path) -> None:
    # The same builder at a small size (3 MiB and a bit, so several repeated blocks and a tail): numpy and zipfile
    # accept it, CRC included, so the 3 GB file below is a valid .npz too.
    path = tmp_path / "small.npz"
    write_zero_npz(path, "pred", (3 * 2**20 // 8 + 5,), "<i8")
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    with np.load(path, allow_pickle=False) as z:
        assert z["pred"].shape == (3 * 2**20 // 8 + 5,) and not z["pred"].any()
    got = load_npz(path, {"pred": ("N",)}, max_bytes=4 * 2**20)
    assert got["pred"].dtype == np.int64 and got["pred"].shape == (3 * 2**20 // 8 + 5,) and not got["pred"].any()
    assert crc32_of_zeros(12345) == zlib.crc32(bytes(12345))


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """3.0 GB of int64 zeros of shape (366211, 32, 32), the shape a run's predictions would have, in ~3 MB."""
    path = tmp_path_factory.mktemp("bomb") / "predictions.npz"
    write_zero_npz(path, "pred", (366_211, 32, 32), "<i8")
    return path


def test_a_zip_bomb_is_refused_before_anything_is_allocated(bomb: Path) -> None:
    assert bomb.stat().st_size < 4 * MB  # deflate's best ratio is ~1030:1
    with zipfile.ZipFile(bomb) as zf:
        assert zf.getinfo("pred.npy").file_size > 3_000_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ArrayFileError) as info:
            load_npz(bomb, {"pred": ("N", 32, 32)}, max_bytes=64 * MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The refusal reads the zip directory and at most one .npy header: well under 1 MB, against 3 GB that a
    # plain np.load would allocate (numpy reports its array allocations to tracemalloc).
    assert peak < 1 * MB, peak
    assert str(info.value) == (f"{bomb}: member 'pred' is declared 3.0 GB uncompressed by the zip directory; "
                               "expected at most 64 MB")
    assert "\n" not in str(info.value)


def test_a_lying_zip_directory_is_refused_by_the_npy_header(tmp_path: Path) -> None:
    # The directory claims 1 kB (and its CRC covers that 1 kB), the member's .npy header 3 GB: the header's own
    # declaration refuses it, before the data is read.
    path = tmp_path / "predictions.npz"
    write_zero_npz(path, "pred", (366_211, 32, 32), "<i8", declared_size=1000)
    tracemalloc.start()
    try:
        with pytest.raises(ArrayFileError) as info:
            load_npz(path, {"pred": ("N", 32, 32)}, max_bytes=64 * MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 * MB, peak  # as above: a header, not the array
    assert str(info.value) == (f"{path}: member 'pred' declares 3.0 GB (shape (366211, 32, 32) int64); expected "
                               "shape (N, 32, 32) and at most 64 MB")
    # and with a shape the header agrees with, the size mismatch itself is named
    write_zero_npz(path, "pred", (10, 32, 32), "<i8", declared_size=1000)
    with pytest.raises(ArrayFileError, match=r"member 'pred' is declared 1000 bytes uncompressed by the zip directory "
                                             r"but its \.npy header declares 82048"):
        load_npz(path, {"pred": ("N", 32, 32)}, max_bytes=64 * MB)


# ---------------------------------------------------------------------------------------------
# Other refusals
# ---------------------------------------------------------------------------------------------


def test_wrong_shape_dtype_and_shared_wildcards(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez_compressed(path, pred=np.zeros((5, 32, 16), np.int64), target=np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(ArrayFileError, match=r"p\.npz: member 'pred' declares 20\.5 kB \(shape \(5, 32, 16\) int64\); "
                                             r"expected shape \(N, 32, 32\) and at most 64 MB$"):
        load_npz(path, {"pred": ("N", 32, 32), "target": ("N", 32, 32)}, max_bytes=64 * MB)
    np.savez_compressed(path, pred=np.zeros((5, 32, 32), np.int64), target=np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(ArrayFileError, match=r"member 'target' declares .*shape \(4, 32, 32\) uint8\); "
                                             r"expected shape \(5, 32, 32\)"):
        load_npz(path, {"pred": ("N", 32, 32), "target": ("N", 32, 32)}, max_bytes=64 * MB)
    np.savez(path, pred=np.zeros((5, 32, 32), np.complex64), target=np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(ArrayFileError, match=r"member 'pred' declares .*complex64\); .*dtype bool/int/uint/float"):
        load_npz(path, {"pred": ("N", 32, 32), "target": ("N", 32, 32)}, max_bytes=64 * MB)
    np.save(tmp_path / "a.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(ArrayFileError, match=r"a\.npy declares 48 B \(shape \(3, 4\) float32\); expected shape "
                                             r"\(3, \*\) and at most 40 B"):
        load_npy(tmp_path / "a.npy", shape=(3, None), max_bytes=40)
    with pytest.raises(ArrayFileError, match=r"expected shape \(4,\)"):
        load_npy(tmp_path / "a.npy", shape=(4,), max_bytes=MB)


def test_pickles_and_object_arrays_are_refused(tmp_path: Path) -> None:
    obj = np.array([{"a": 1}, None], dtype=object)
    np.save(tmp_path / "o.npy", obj, allow_pickle=True)
    with pytest.raises(ArrayFileError, match=r"o\.npy declares dtype object \(Python objects, which only a pickle "
                                             r"can hold\): refused; expected a numeric \.npy array$"):
        load_npy(tmp_path / "o.npy", max_bytes=MB)
    (tmp_path / "p.npy").write_bytes(pickle.dumps({"not": "an array"}))
    with pytest.raises(ArrayFileError, match=r"p\.npy is not a \.npy array \(it starts with b'\\x80"):
        load_npy(tmp_path / "p.npy", max_bytes=MB)
    np.savez(tmp_path / "o.npz", pred=obj, allow_pickle=True)
    with pytest.raises(ArrayFileError, match=r"o\.npz: member 'pred' declares dtype object"):
        load_npz(tmp_path / "o.npz", {"pred": None}, max_bytes=MB)
    with zipfile.ZipFile(tmp_path / "q.npz", "w") as zf:
        zf.writestr("pred.npy", pickle.dumps([1, 2, 3]))
    with pytest.raises(ArrayFileError, match=r"q\.npz: member 'pred' is not a \.npy array"):
        load_npz(tmp_path / "q.npz", {"pred": None}, max_bytes=MB)


def test_members_outside_the_allow_list_and_missing_members_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez(path, pred=np.zeros(3), extra=np.zeros(2))
    with pytest.raises(ArrayFileError, match=r"p\.npz holds the member 'extra\.npy', which is not allowed; expected only the members "
                                             r"pred, target \(as <name>\.npy\)"):
        load_npz(path, {"pred": None, "target": None}, max_bytes=MB)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../pred.npy", npy_header_bytes((1,), "<f8") + bytes(8))
    with pytest.raises(ArrayFileError, match=r"member '\.\./pred\.npy', which is not allowed"):
        load_npz(path, {"pred": None}, max_bytes=MB)
    np.savez(path, pred=np.zeros(3))
    with pytest.raises(ArrayFileError, match=r"p\.npz lacks the member\(s\) target; it holds pred\.npy"):
        load_npz(path, {"pred": None, "target": None}, max_bytes=MB)
    assert set(load_npz(path, {"pred": None, "target": None}, max_bytes=MB, optional={"target"})) == {"pred"}


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    arr = np.arange(1000, dtype=np.int32)
    np.save(tmp_path / "a.npy", arr)
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[:-100])
    with pytest.raises(ArrayFileError, match=r"a\.npy is truncated: its header declares 4 kB \(shape \(1000,\) int32\) "
                                             r"of data, the file holds 3\.9 kB"):
        load_npy(tmp_path / "a.npy", max_bytes=MB)
    with pytest.raises(ArrayFileError, match="truncated"):
        npy_header(tmp_path / "a.npy")
    (tmp_path / "a.npy").write_bytes(data + b"junk")
    with pytest.raises(ArrayFileError, match=r"4 bytes of trailing data after the array"):
        load_npy(tmp_path / "a.npy", max_bytes=MB)
    (tmp_path / "e.npy").write_bytes(b"")
    with pytest.raises(ArrayFileError, match=r"e\.npy is empty"):
        load_npy(tmp_path / "e.npy", max_bytes=MB)
    (tmp_path / "h.npy").write_bytes(data[:20])
    with pytest.raises(ArrayFileError, match=r"h\.npy has an unreadable \.npy header"):
        load_npy(tmp_path / "h.npy", max_bytes=MB)
    np.savez_compressed(tmp_path / "p.npz", pred=arr)
    whole = (tmp_path / "p.npz").read_bytes()
    (tmp_path / "p.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArrayFileError, match=r"p\.npz is not a readable \.npz archive \(BadZipFile"):
        load_npz(tmp_path / "p.npz", {"pred": None}, max_bytes=MB)
    (tmp_path / "p.npz").write_bytes(b"hello")
    with pytest.raises(ArrayFileError, match=r"p\.npz is not a readable \.npz archive"):
        load_npz(tmp_path / "p.npz", {"pred": None}, max_bytes=MB)
    with pytest.raises(FileNotFoundError, match=r"absent\.npz is missing"):
        load_npz(tmp_path / "absent.npz", {"pred": None}, max_bytes=MB)


def test_a_corrupt_deflate_stream_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez_compressed(path, pred=np.random.default_rng(0).integers(0, 9, 50_000))
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(60)  # inside the compressed data of the only member
    path.write_bytes(bytes(data))
    with pytest.raises(ArrayFileError, match=r"p\.npz.*(is not a readable \.npz archive|unreadable|truncated)"):
        load_npz(path, {"pred": None}, max_bytes=MB)


# ---------------------------------------------------------------------------------------------
# Good files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_good_npz_round_trip(tmp_path: Path, save) -> None:
    rng = np.random.default_rng(1)
    arrays = {"pred": rng.integers(0, 20, (7, 32, 32)).astype(np.int64),
              "target": rng.integers(0, 20, (7, 32, 32)).astype(np.uint8),
              "conf": np.asfortranarray(rng.standard_normal((20, 20))),
              "big_endian": np.arange(6, dtype=">f4"),
              "flag": np.array(True)}
    save(tmp_path / "p.npz", **arrays)
    spec = {"pred": ("N", 32, 32), "target": ("N", 32, 32), "conf": (20, 20), "big_endian": (None,), "flag": ()}
    got = load_npz(tmp_path / "p.npz", spec, max_bytes=64 * MB, max_total_bytes=MB)
    assert set(got) == set(arrays)
    for name, arr in arrays.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape
        np.testing.assert_array_equal(got[name], arr)
    with pytest.raises(ArrayFileError, match=r"has members that declare 67\.7 kB in all; expected at most 50 kB"):
        load_npz(tmp_path / "p.npz", spec, max_bytes=64 * MB, max_total_bytes=50_000)


def test_good_npy_round_trip_and_header(tmp_path: Path) -> None:
    arr = np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    np.save(tmp_path / "a.npy", arr)
    header = npy_header(tmp_path / "a.npy")
    assert header == ArrayHeader((2, 3, 4), np.dtype(np.int16), True, header.offset)
    assert header.nbytes == 48 and header.offset == (tmp_path / "a.npy").stat().st_size - 48
    got = load_npy(tmp_path / "a.npy", shape=("T", 3, 4), max_bytes=48)
    np.testing.assert_array_equal(got, arr)


def test_helpers() -> None:
    assert [human_bytes(n) for n in (0, 999, 1000, 64 * MB, 3_000_000_000, 1536)] == [
        "0 B", "999 B", "1 kB", "64 MB", "3 GB", "1.5 kB"]
    assert format_shape(("N", 32, None)) == "(N, 32, *)" and format_shape((3,)) == "(3,)"
    header = ArrayHeader((2, 5), np.dtype(np.float64), False, 128)
    bound: dict[str, int] = {}
    check_header(header, "x", shape=("N", "M"), bound=bound)
    assert bound == {"N": 2, "M": 5}
    with pytest.raises(ArrayFileError, match=r"x declares 80 B \(shape \(2, 5\) float64\); expected shape \(N, N\)"):
        check_header(header, "x", shape=("N", "N"), bound={})


def test_named_wildcards_are_bounded_before_any_data_is_read(tmp_path: Path) -> None:
    path = tmp_path / "p.npz"
    np.savez_compressed(path, pred=np.zeros((5, 8, 8), np.int64), patch_id=np.arange(5))
    members = {"pred": ("N", "S", "S"), "patch_id": ("N",)}
    with pytest.raises(ArrayFileError, match=r"member 'pred' declares .*\(shape \(5, 8, 8\) int64\); expected shape "
                                             r"\(N, S, S\) with N at most 4$"):
        load_npz(path, members, max_bytes=MB, limits={"N": 4, "S": 128})
    assert load_npz(path, members, max_bytes=MB, limits={"N": 5, "S": 8})["pred"].shape == (5, 8, 8)
