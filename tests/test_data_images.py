"""Tests for calibprompt.data.load_image and friends (image loading section).

All test images are generated here, in memory or under pytest's tmp_path.
"""

from __future__ import annotations

import io
import struct
import tempfile
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from calibprompt.data import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_IMAGE_SUFFIXES,
    ImageLoadError,
    is_image_file,
    load_image,
)

pydicom = pytest.importorskip("pydicom")
import pydicom.data  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
    generate_uid,
)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def as_array(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def gray(image: Image.Image) -> np.ndarray:
    """Channel 0 of an RGB image whose three channels must be equal."""
    arr = as_array(image).astype(int)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()
    return arr[..., 0]


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def ramp(height: int = 16, width: int = 256, low: float = 0, high: float = 4095, dtype=np.uint16):
    """Horizontal ramp low..high, identical in every row."""
    row = np.linspace(low, high, width)
    return np.tile(row, (height, 1)).astype(dtype)


def assert_full_range_and_ordered(values: np.ndarray) -> None:
    """Dark stays dark, bright stays bright, the 8-bit range is used, not all white."""
    assert values.min() == 0
    assert values.max() == 255
    assert 90 < values.mean() < 165
    row = values[0]
    assert (np.diff(row) >= 0).all()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but that holds no real pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    transfer_syntax=ExplicitVRLittleEndian,
    frames: bool = False,
    codestream: bytes | None = None,
    **elements,
) -> bytes:
    """Encode ``pixels`` as a minimal Secondary Capture DICOM file (bytes).

    For a compressed ``transfer_syntax`` the pixel data is ``codestream``
    (a dummy one by default), encapsulated.
    """
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.PatientName = "Test^Phantom"
    colour = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT")
    spatial = pixels.shape[1:] if frames else pixels.shape
    if frames:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = spatial[:2]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if transfer_syntax.is_compressed:
        ds.PixelData = encapsulate([codestream or b"\xff\xd8\xff\xc3" + b"\x00" * 60])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def rgb_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))


# --------------------------------------------------------------------------
# module API
# --------------------------------------------------------------------------


def test_suffix_helpers():
    assert ".png" in SUPPORTED_IMAGE_SUFFIXES and ".dcm" in SUPPORTED_IMAGE_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in SUPPORTED_IMAGE_SUFFIXES)
    assert is_image_file("scan.PNG")
    assert is_image_file("dir/series/IM0001.DiCoM")
    assert not is_image_file("notes.txt")
    assert not is_image_file("archive.zip")
    assert not is_image_file("no_suffix")
    assert DEFAULT_MAX_PIXELS == 50_000_000


def test_image_load_error_is_value_error():
    assert issubclass(ImageLoadError, ValueError)


# --------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------


def test_every_source_type_gives_the_same_rgb_image(tmp_path, rgb_image):
    data = encode(rgb_image, "PNG")
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    expected = np.asarray(rgb_image)

    spooled = tempfile.SpooledTemporaryFile()
    spooled.write(data)
    spooled.seek(0)
    with open(path, "rb") as handle:
        sources = {
            "str": str(path),
            "Path": path,
            "bytes": data,
            "bytearray": bytearray(data),
            "memoryview": memoryview(data),
            "open file": handle,
            "BytesIO": io.BytesIO(data),
            "SpooledTemporaryFile": spooled,
            "numpy": expected.copy(),
            "PIL": rgb_image,
            "lazy PIL": Image.open(io.BytesIO(data)),
        }
        for name, source in sources.items():
            result = load_image(source)
            assert isinstance(result, Image.Image), name
            assert result.mode == "RGB", name
            assert result.size == (32, 24), name
            np.testing.assert_array_equal(np.asarray(result), expected, err_msg=name)
            assert getattr(result, "fp", None) is None, name
    spooled.close()


def test_pil_input_is_not_modified():
    source = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode=None)
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    before = np.asarray(source).copy()
    result = load_image(source)
    assert source.mode == "L"
    np.testing.assert_array_equal(np.asarray(source), before)
    assert result is not source
    load_image(rgba)
    assert rgba.mode == "RGBA" and rgba.getpixel((0, 0)) == (10, 20, 30, 0)


def test_pil_input_keeps_its_current_frame():
    frames = [Image.new("L", (4, 4), v) for v in (10, 200)]
    data = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    multi = Image.open(io.BytesIO(data))
    multi.seek(1)
    result = load_image(multi)
    assert gray(result).max() == 10  # first frame
    assert multi.tell() == 1


def test_unsupported_source_type_lists_accepted_types():
    with pytest.raises(ValueError, match=r"type int.*file path.*bytes.*numpy array.*PIL image"):
        load_image(42)
    with pytest.raises(ValueError, match="type list"):
        load_image([1, 2, 3])


def test_text_mode_file_object_is_refused(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("hello")
    with open(path, "r") as handle:
        with pytest.raises(ValueError, match="binary mode"):
            load_image(handle)


def test_exhausted_stream_says_to_seek(rgb_image):
    stream = io.BytesIO(encode(rgb_image, "PNG"))
    stream.read()
    with pytest.raises(ValueError, match=r"seek\(0\)"):
        load_image(stream)


# --------------------------------------------------------------------------
# PIL modes
# --------------------------------------------------------------------------


def test_16bit_png_with_12bit_values_is_windowed_not_clipped(tmp_path):
    path = tmp_path / "xray16.png"
    Image.fromarray(ramp()).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
    values = gray(load_image(path))
    assert_full_range_and_ordered(values)
    assert (values == 255).mean() < 0.05  # certainly not all white


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I", "F"])
def test_high_bit_depth_pil_modes(mode):
    values = ramp(low=100, high=3000).astype(np.float64)
    if mode == "F":
        image = Image.fromarray(values.astype(np.float32))
    elif mode == "I":
        image = Image.fromarray((values * 1000).astype(np.int32))
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        size = (values.shape[1], values.shape[0])
        image = Image.frombytes(mode, size, values.astype(dtype).tobytes())
    assert image.mode == mode
    assert_full_range_and_ordered(gray(load_image(image)))


def test_percentile_window_ignores_a_few_outliers():
    values = ramp(low=1000, high=2000)
    values[0, 0] = 65535  # one hot pixel must not darken the whole image
    result = gray(load_image(values))
    assert result[1:].max() == 255
    assert result[1, 128] > 100


def test_constant_high_bit_depth_image_is_black():
    assert gray(load_image(np.full((8, 8), 3000, np.uint16))).max() == 0
    assert gray(load_image(Image.new("I", (8, 8), 70000))).max() == 0
    assert gray(load_image(np.full((8, 8), 7.5, np.float32))).max() == 0


def test_rgba_transparency_becomes_white():
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., 0] = 200  # red
    pixels[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    pixels[3, 3, 3] = 128  # half transparent red over white
    result = as_array(load_image(Image.fromarray(pixels)))
    assert tuple(result[0, 0]) == (200, 0, 0)
    assert tuple(result[2, 0]) == (255, 255, 255)
    assert tuple(result[3, 3]) == pytest.approx((228, 127, 127), abs=1)


def test_la_image_composited_on_white():
    image = Image.new("LA", (2, 2), (0, 0))
    assert tuple(as_array(load_image(image))[0, 0]) == (255, 255, 255)


def test_palette_with_and_without_transparency():
    base = Image.new("RGB", (4, 4), (255, 0, 0))
    base.paste((0, 0, 255), (0, 0, 2, 4))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    result = as_array(load_image(palette))
    assert tuple(result[0, 0]) == (0, 0, 255) and tuple(result[0, 3]) == (255, 0, 0)

    blue_index = palette.getpixel((0, 0))
    transparent = Image.open(io.BytesIO(encode(palette, "PNG", transparency=blue_index)))
    assert transparent.mode == "P" and "transparency" in transparent.info
    result = as_array(load_image(transparent))
    assert tuple(result[0, 0]) == (255, 255, 255)
    assert tuple(result[0, 3]) == (255, 0, 0)


def test_cmyk_ycbcr_and_one_bit_convert():
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))  # red
    assert tuple(as_array(load_image(cmyk))[0, 0]) == (255, 0, 0)
    ycbcr = Image.new("RGB", (3, 3), (0, 128, 0)).convert("YCbCr")
    assert tuple(as_array(load_image(ycbcr))[0, 0]) == pytest.approx((0, 128, 0), abs=2)
    bits = Image.new("1", (4, 4), 0)
    bits.putpixel((1, 1), 1)
    values = gray(load_image(bits))
    assert values[1, 1] == 255 and values[0, 0] == 0


def test_uint8_grayscale_is_not_stretched():
    pixels = np.full((4, 4), 100, np.uint8)
    pixels[0, 0] = 110
    values = gray(load_image(Image.fromarray(pixels)))
    assert values.min() == 100 and values.max() == 110


def test_exif_orientation_6_rotates(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))  # wide: dark left, bright right
    image.paste((255, 255, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    image.save(path, "JPEG", exif=exif, quality=95)
    result = as_array(load_image(path))
    assert result.shape[:2] == (40, 20)  # now tall
    assert result[:15].mean() < 30  # the dark side is now on top
    assert result[25:].mean() > 225


def test_multipage_tiff_and_animated_gif_give_first_frame(tmp_path):
    frames = [Image.new("L", (6, 6), v) for v in (30, 220, 120)]
    tiff = tmp_path / "stack.tiff"
    frames[0].save(tiff, save_all=True, append_images=frames[1:])
    with Image.open(tiff) as image:
        assert image.n_frames == 3
    assert set(gray(load_image(tiff)).ravel()) == {30}

    colours = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    gif = encode(colours[0], "GIF", save_all=True, append_images=colours[1:], duration=50)
    assert tuple(as_array(load_image(gif))[0, 0]) == (255, 0, 0)


def test_frame_choice_in_tiff_gif_and_pil_images(tmp_path):
    frames = [Image.new("L", (6, 6), v) for v in (30, 220, 120)]
    tiff = tmp_path / "stack.tiff"
    frames[0].save(tiff, save_all=True, append_images=frames[1:])
    assert [int(gray(load_image(tiff, frame=i))[0, 0]) for i in range(3)] == [30, 220, 120]
    with pytest.raises(ValueError, match=r"stack\.tiff has 3 frames, numbered 0 to 2 .*no frame 3\. Choose a frame from 0 to 2"):
        load_image(tiff, frame=3)

    colours = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    gif = encode(colours[0], "GIF", save_all=True, append_images=colours[1:], duration=50)
    assert tuple(as_array(load_image(gif, frame=1))[0, 0]) == (0, 255, 0)

    multi = Image.open(tiff)
    multi.seek(2)
    assert gray(load_image(multi, frame=1))[0, 0] == 220
    assert multi.tell() == 2  # the caller's frame is kept


def test_frame_of_single_frame_sources():
    image = Image.new("L", (3, 3), 90)
    assert gray(load_image(image, frame=0))[0, 0] == 90
    with pytest.raises(ValueError, match=r"^The image has a single frame, so there is no frame 1\. Choose frame 0"):
        load_image(image, frame=1)
    with pytest.raises(ValueError, match=r"^The array has a single frame"):
        load_image(np.zeros((3, 3), np.uint8), frame=2)
    with pytest.raises(ValueError, match=r"^The frame of the uploaded data must be a whole number counted from 0"):
        load_image(encode(image, "PNG"), frame="first")


# --------------------------------------------------------------------------
# numpy arrays
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, low, high",
    [
        (np.uint16, 0, 4095),
        (np.int16, -1024, 3071),  # CT-like Hounsfield units
        (np.int32, -100000, 900000),
        (np.float32, -3.5, 12.25),
        (np.float64, 0, 1000),
    ],
)
def test_high_bit_depth_arrays_are_windowed(dtype, low, high):
    assert_full_range_and_ordered(gray(load_image(ramp(low=low, high=high, dtype=dtype))))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_arrays_in_unit_range_map_directly(dtype):
    pixels = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=dtype)
    assert gray(load_image(pixels)).tolist() == [[0, 64, 128, 255]]
    dim = np.full((2, 2), 0.2, dtype=dtype)  # not stretched to white/black
    assert gray(load_image(dim)).tolist() == [[51, 51], [51, 51]]


def test_uint8_and_bool_arrays():
    pixels = np.array([[0, 17, 255]], np.uint8)
    assert gray(load_image(pixels)).tolist() == [[0, 17, 255]]
    assert gray(load_image(np.array([[True, False]]))).tolist() == [[255, 0]]


def test_array_shapes():
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(as_array(load_image(colour)), colour)
    single = rng.integers(0, 256, (5, 7, 1), dtype=np.uint8)
    assert gray(load_image(single)).tolist() == single[..., 0].tolist()

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 40
    rgba[0, :, 3] = 255
    result = as_array(load_image(rgba))
    assert tuple(result[0, 0]) == (40, 40, 40) and tuple(result[1, 0]) == (255, 255, 255)

    rgba_float = np.zeros((2, 2, 4), np.float32)  # transparent everywhere
    assert as_array(load_image(rgba_float)).min() == 255

    wide = colour[:, ::2]  # non-contiguous view
    np.testing.assert_array_equal(as_array(load_image(wide)), wide)


@pytest.mark.parametrize("shape", [(4,), (4, 4, 2), (4, 4, 5), (2, 4, 4, 3), (0, 4)])
def test_bad_array_shapes(shape):
    with pytest.raises(ValueError, match=r"accepted shapes|no pixels"):
        load_image(np.zeros(shape, np.uint8))


def test_bad_array_shape_message_names_accepted_shapes():
    with pytest.raises(ValueError, match=r"\(H, W\), \(H, W, 1\), \(H, W, 3\) or \(H, W, 4\)"):
        load_image(np.zeros((3, 4, 4, 3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_arrays_are_refused(bad):
    pixels = np.zeros((4, 4), np.float32)
    pixels[1, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_image(pixels)


def test_unsupported_array_dtype():
    with pytest.raises(ValueError, match="dtype complex128.*accepted dtypes"):
        load_image(np.zeros((4, 4), np.complex128))


# --------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------


def test_dicom_rescale_and_window_are_applied(tmp_path):
    # stored 0..4000, rescaled to HU = stored - 1000 (-1000..3000);
    # window centre 40 / width 400 covers HU -160..240 (stored 840..1240)
    stored = ramp(low=0, high=4000)
    path = tmp_path / "ct.dcm"
    path.write_bytes(
        make_dicom(
            stored,
            bits_stored=12,
            RescaleSlope=1,
            RescaleIntercept=-1000,
            WindowCenter=40,
            WindowWidth=400,
        )
    )
    values = gray(load_image(path))
    hu = stored.astype(float) - 1000
    assert (values[hu < -170] == 0).all()
    assert (values[hu > 250] == 255).all()
    inside = values[(hu > -140) & (hu < 220)]
    assert 0 < inside.min() and inside.max() < 255
    assert (np.diff(values[0]) >= 0).all()


def test_dicom_without_window_uses_percentile_window():
    data = make_dicom(ramp(low=0, high=4095), bits_stored=12)
    assert_full_range_and_ordered(gray(load_image(data)))


def test_dicom_monochrome1_is_inverted():
    pixels = ramp(low=0, high=4095)
    normal = gray(load_image(make_dicom(pixels, bits_stored=12)))
    inverted = gray(load_image(make_dicom(pixels, bits_stored=12, photometric="MONOCHROME1")))
    np.testing.assert_array_equal(inverted, 255 - normal)
    assert inverted[0, 0] == 255 and inverted[0, -1] == 0


def test_dicom_multiframe_gives_first_frame():
    frames = np.stack([np.full((6, 8), v, np.uint16) for v in (0, 1000, 2000)])
    frames[0, :, 4:] = 500  # first frame: dark left, bright right
    values = gray(load_image(make_dicom(frames, frames=True, bits_stored=12)))
    assert values.shape == (6, 8)
    assert (values[:, :4] == 0).all() and (values[:, 4:] == 255).all()


def test_dicom_frame_choice(tmp_path):
    frames = np.zeros((3, 6, 8), np.uint16)
    for index in range(3):
        frames[index, :, 2 * (index + 1):] = 1000  # frame i is dark up to column 2 * (i + 1)
    path = tmp_path / "cine.dcm"
    path.write_bytes(make_dicom(frames, frames=True, bits_stored=12))
    for index in range(3):
        values = gray(load_image(path, frame=index))
        edge = 2 * (index + 1)
        assert (values[:, :edge] == 0).all() and (values[:, edge:] == 255).all()
    assert gray(load_image(path, frame=np.int32(2)))[0, 5] == 0
    for bad in (3, -1, 10**9):
        with pytest.raises(ValueError) as info:
            load_image(path, frame=bad)
        assert str(info.value) == (
            f"The file cine.dcm has 3 frames, numbered 0 to 2 (0 is the first); there is no "
            f"frame {bad}. Choose a frame from 0 to 2."
        )


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"NumberOfFrames": b"1A"}, r"'Number of Frames' \(0028,0008\) holds '1A', which is not a whole number"),
        ({"NumberOfFrames": b"-2"}, r"'Number of Frames' \(0028,0008\) holds '-2', which is not a count of frames"),
        ({"Rows": None}, r"is incomplete: it lacks the DICOM element 'Rows' \(0028,0010\)"),
        ({"BitsAllocated": None}, r"lacks the DICOM element 'Bits Allocated' \(0028,0100\)"),
        ({"PhotometricInterpretation": None}, r"lacks the DICOM element 'Photometric Interpretation'"),
    ],
)
def test_dicom_with_bad_or_missing_elements_is_refused_in_words(change, expected, tmp_path):
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp(low=0, high=4095), bits_stored=12)))
    ds.NumberOfFrames = 11
    for keyword, value in change.items():
        if value is None:
            delattr(ds, keyword)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    if "NumberOfFrames" in change:  # a value pydicom would not write, as a damaged file holds it
        element = b"\x28\x00\x08\x00IS\x02\x00"
        assert data.count(element + b"11") == 1
        data = data.replace(element + b"11", element + change["NumberOfFrames"])
    path = tmp_path / "damaged.dcm"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid IS value
        with pytest.raises(ValueError, match=expected) as info:
            load_image(path)
    message = str(info.value)
    assert message.startswith("The file damaged.dcm is ")
    assert "Export it again from your PACS or viewer" in message
    assert "invalid literal" not in message and "Missing required" not in message


def test_dicom_mismatched_pixel_length_is_refused_in_words():
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp(low=0, high=4095), bits_stored=12)))
    ds.PixelData = ds.PixelData + b"\x00" * 4096  # more bytes than 16 x 256 x 2
    ds.Rows = 64  # now it describes 32,768 bytes where 12,288 are present
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ValueError) as info:
        load_image(buffer.getvalue())
    assert str(info.value).startswith(
        "The uploaded data has damaged or incomplete image data: it holds 12,288 bytes of pixels "
        "where its header describes 32,768"
    )
    assert "less than expected" not in str(info.value)


def test_dicom_rgb_and_ybr(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, :3] = (200, 30, 10)
    rgb[:, 3:] = (10, 30, 200)
    result = as_array(load_image(make_dicom(rgb, photometric="RGB")))
    np.testing.assert_array_equal(result, rgb)

    ybr = pydicom.pixels.convert_color_space(rgb, "RGB", "YBR_FULL")
    result = as_array(load_image(make_dicom(ybr, photometric="YBR_FULL")))
    np.testing.assert_allclose(result.astype(int), rgb.astype(int), atol=2)


@pytest.mark.parametrize(
    "transfer_syntax, photometric, pil_format, options",
    [
        (JPEGBaseline8Bit, "YBR_FULL_422", "JPEG", {"quality": 95}),  # decoded as YBR
        (JPEG2000Lossless, "YBR_RCT", "JPEG2000", {"irreversible": False}),  # decoded as RGB
    ],
)
def test_compressed_colour_dicom_is_converted_once(
    transfer_syntax, photometric, pil_format, options
):
    if not pydicom.pixels.get_decoder(transfer_syntax).is_available:
        pytest.skip(f"no {transfer_syntax.name} decoder installed")
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (200, 30, 10)
    rgb[:, 8:] = (10, 30, 200)
    data = make_dicom(
        rgb,
        photometric=photometric,
        transfer_syntax=transfer_syntax,
        codestream=encode(Image.fromarray(rgb), pil_format, **options),
    )
    result = as_array(load_image(data)).astype(int)
    assert tuple(result[4, 2]) == pytest.approx((200, 30, 10), abs=6)
    assert tuple(result[4, 12]) == pytest.approx((10, 30, 200), abs=6)


def test_dicom_voi_lut_sequence_is_applied():
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp(low=0, high=4095), bits_stored=12)))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item["LUTDescriptor"].VR = "US"
    item.LUTData = [4095 - v for v in range(4096)]  # an inverting VOI LUT
    item["LUTData"].VR = "US"
    ds.VOILUTSequence = Sequence([item])
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    values = gray(load_image(buffer.getvalue()))
    assert values[0, 0] == 255 and values[0, -1] == 0


def test_dicom_palette_colour():
    indices = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    ds = pydicom.dcmread(io.BytesIO(make_dicom(indices, photometric="PALETTE COLOR")))
    ramp16 = np.arange(256, dtype=np.uint16) * 257
    tables = {"Red": ramp16, "Green": np.zeros(256, np.uint16), "Blue": ramp16[::-1].copy()}
    for colour, table in tables.items():
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.tobytes())
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    result = as_array(load_image(buffer.getvalue()))
    assert tuple(result[0, 0]) == (0, 0, 255)
    assert tuple(result[0, -1]) == (255, 0, 0)


def test_dicom_from_every_byte_source(tmp_path):
    data = make_dicom(ramp(low=0, high=4095), bits_stored=12)
    path = tmp_path / "no_suffix_but_dicm_marker"
    path.write_bytes(data)
    expected = gray(load_image(data))
    for source in (path, io.BytesIO(data), memoryview(data)):
        np.testing.assert_array_equal(gray(load_image(source)), expected)


def test_dicom_without_pixel_data():
    ds_bytes = make_dicom(np.zeros((2, 2), np.uint16))
    ds = pydicom.dcmread(io.BytesIO(ds_bytes))
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ValueError, match="no pixel data"):
        load_image(buffer.getvalue())


def test_dicom_with_missing_decoder_says_what_to_do(monkeypatch):
    """A broken install (the pylibjpeg plugins missing) is explained, not a traceback."""
    data = make_dicom(np.zeros((4, 4), np.uint16), transfer_syntax=JPEGLosslessSV1)

    class NoPlugins:
        is_available = False
        missing_dependencies = [
            "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1",
            "gdcm - requires gdcm>=3.0.10",
        ]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda syntax: NoPlugins())
    with pytest.raises(ValueError, match=r"lossless JPEG compression.*not installed.*PNG") as info:
        load_image(data)
    assert "pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1 or python-gdcm>=3.0.10" in str(info.value)


def test_dicom_jpeg_lossless_decodes_with_the_installed_plugins():
    """The pylibjpeg plugins are dependencies: JPEG Lossless (what PACS exports) just works."""
    assert pydicom.pixels.get_decoder(JPEGLosslessSV1).is_available
    path = pydicom.data.get_testdata_file("SC_rgb_jpeg_gdcm.dcm")  # JPEG Lossless SV1, colour bars
    result = as_array(load_image(path))
    assert result.shape == (100, 100, 3)
    assert tuple(result[0, 0]) == (255, 0, 0)


def test_undecodable_compressed_dicom_is_refused_in_words():
    data = make_dicom(np.zeros((16, 16), np.uint8), transfer_syntax=JPEGBaseline8Bit)  # dummy codestream
    with pytest.raises(ValueError) as info:
        load_image(data)
    message = str(info.value)
    assert message.startswith(
        "The uploaded data has damaged or non-standard image data: its JPEG compressed pixels "
        "(JPEG Baseline (Process 1)) could not be decoded by any installed decoder (tried: "
    )
    assert "Export it again" in message and "exceptions were raised" not in message
    assert info.value.__cause__ is not None


def test_dcm_suffix_without_dicom_marker(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"just some text, not a scan\n" * 10)
    with pytest.raises(ValueError, match="not a standard DICOM file"):
        load_image(path)


def test_truncated_dicom():
    data = make_dicom(ramp(low=0, high=4095), bits_stored=12)
    with pytest.raises(ValueError, match="damaged or incomplete image data") as info:
        load_image(data[: len(data) - 3000])
    assert info.value.__cause__ is not None
    assert "holds 5,192 bytes of pixels where its header describes 8,192" in str(info.value)
    assert "less than expected" not in str(info.value)  # pydicom's words stay in __cause__
    with pytest.raises(ValueError, match="no pixel data.*cut off"):
        load_image(data[:400])


# --------------------------------------------------------------------------
# user errors
# --------------------------------------------------------------------------


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "scan.png"
    with pytest.raises(ValueError, match="not found") as info:
        load_image(missing)
    assert str(missing) in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(ValueError, match="is a folder, not an image file"):
        load_image(tmp_path)


def test_empty_file_and_empty_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty \(0 bytes\).*PNG, JPEG, TIFF or DICOM"):
        load_image(path)
    with pytest.raises(ValueError, match=r"empty \(0 bytes\)"):
        load_image(b"")
    with pytest.raises(ValueError, match=r"empty \(0 bytes\)"):
        load_image(io.BytesIO())


def test_non_image_files(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("Patient notes, definitely not pixels.\n")
    with pytest.raises(ValueError, match="not an image this tool can read.*Upload a PNG"):
        load_image(text)

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "hello")
    with pytest.raises(ValueError, match="ZIP archive"):
        load_image(archive.getvalue())

    with pytest.raises(ValueError, match="PDF document"):
        load_image(b"%PDF-1.7\n" + b"0" * 300)

    noise = np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ValueError, match="not an image"):
        load_image(noise)


class _CountingReader:
    """A binary file object that counts the bytes read through it into ``counter``."""

    def __init__(self, stream, counter: list):
        self._stream, self._counter = stream, counter

    def read(self, *args):
        data = self._stream.read(*args)
        self._counter.append(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._stream, name)


@pytest.fixture()
def pillow_reads(monkeypatch):
    """The bytes Pillow reads from what ``load_image`` opens, one entry per read."""
    counter: list[int] = []
    original = Image.open

    def counting_open(fp, *args, **kwargs):
        return original(_CountingReader(fp, counter) if hasattr(fp, "read") else fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return counter


@pytest.fixture()
def pillow_decodes(monkeypatch):
    """How many times Pillow decodes pixel data (``ImageFile.load``), counted."""
    counter: list[int] = []
    original = ImageFile.ImageFile.load

    def counting_load(self, *args, **kwargs):
        counter.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return counter


def test_large_non_image_is_refused_from_its_first_bytes(pillow_reads):
    """~19 MB of text is refused after Pillow read a few bytes of it, not the whole file (the time it takes is
    measured by benchmarks/fast_paths.py as a ratio to refusing 1 kB)."""
    data = b"hello world, this is a long text file\n" * 500_000  # ~19 MB
    with pytest.raises(ValueError, match="not an image"):
        load_image(data)
    assert pillow_reads and sum(pillow_reads) <= 64 * 1024 < len(data)


def test_16bit_pgm_is_windowed(tmp_path):
    path = tmp_path / "scan.pgm"
    Image.fromarray(ramp()).save(path)
    assert_full_range_and_ordered(gray(load_image(path)))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt, rgb_image):
    big = Image.fromarray(np.random.default_rng(3).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    data = encode(big, fmt)
    with pytest.raises(ValueError, match="incomplete or damaged") as info:
        load_image(data[: len(data) // 2])
    assert info.value.__cause__ is not None
    assert str(info.value.__cause__) not in str(info.value)  # no Pillow exception text
    assert "try again" in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_crafted_decompression_bomb_is_refused_before_decoding(pillow_decodes):
    expected = r"100000 x 100000 = 10,000,000,000 pixels.*50,000,000"
    with pytest.raises(ValueError, match=expected) as info:
        load_image(png_header_only(100_000, 100_000))
    assert not pillow_decodes  # refused from the header: no pixel decoded (time: benchmarks/fast_paths.py)
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)


def test_pillow_bomb_limit_still_applies_above_a_raised_max_pixels():
    pil_limit = f"{2 * Image.MAX_IMAGE_PIXELS:,}"
    with pytest.raises(ValueError, match=rf"100000 x 100000 .*limit of {pil_limit} pixels"):
        load_image(png_header_only(100_000, 100_000), max_pixels=10**12)


def test_header_above_max_pixels_is_refused_before_decoding(pillow_decodes):
    with pytest.raises(ValueError, match=r"8000 x 8000 = 64,000,000 pixels.*50,000,000"):
        load_image(png_header_only(8000, 8000))
    assert not pillow_decodes
    load_image(encode(Image.new("RGB", (8, 8)), "PNG"))
    assert pillow_decodes  # the counter sees a decode when there is one


def test_max_pixels_argument(rgb_image):
    data = encode(rgb_image, "PNG")
    with pytest.raises(ValueError, match=r"32 x 24 = 768 pixels.*limit of 100 pixels"):
        load_image(data, max_pixels=100)
    with pytest.raises(ValueError, match="too large"):
        load_image(np.zeros((20, 20), np.uint8), max_pixels=100)
    with pytest.raises(ValueError, match="too large"):
        load_image(make_dicom(np.zeros((20, 20), np.uint16)), max_pixels=100)
    assert load_image(data, max_pixels=768).size == (32, 24)


def test_global_pil_settings_untouched(rgb_image):
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError):
        load_image(png_header_only(100_000, 100_000))
    load_image(encode(rgb_image, "PNG"))
    assert Image.MAX_IMAGE_PIXELS == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
