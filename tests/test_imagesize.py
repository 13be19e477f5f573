"""Image sizes from file headers: real Pillow files, truncations, corrupt and random bytes."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from runflow_async._imagesize import HEADER_BYTES, image_size_from_bytes, image_size_from_path

SOI = b"\xff\xd8"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PREFIXES = [b"", PNG_SIGNATURE, SOI, b"RIFF\0\0\0\0WEBPVP8 ", b"RIFF\0\0\0\0WEBPVP8L"]
PREFIXES += [b"RIFF\0\0\0\0WEBPVP8X", b"GIF89a", b"GIF87a"]


def encode(size: tuple[int, int], fmt: str, mode: str = "RGB", **options: Any) -> bytes:
    """A real image file made by Pillow, with a gradient so encoders do real work."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    if "A" in mode:
        image.putalpha(128)  # translucent, so WebP needs an ALPH chunk and VP8X
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def sof(marker: int, width: int, height: int) -> bytes:
    return segment(marker, bytes([8]) + struct.pack(">HH", height, width) + b"\x01\x01\x11\x00")


SIZES = [(1, 1), (17, 5), (640, 480), (1024, 768), (3, 2000)]

# (label, format, Pillow options, chunk or marker the file must contain)
VARIANTS: list[tuple[str, str, dict[str, Any], bytes]] = [
    ("png", "PNG", {}, b"IHDR"),
    ("png-rgba", "PNG", {"mode": "RGBA"}, b"IHDR"),
    ("jpeg-baseline", "JPEG", {"quality": 80}, b"\xff\xc0"),
    ("jpeg-progressive", "JPEG", {"progressive": True}, b"\xff\xc2"),
    ("jpeg-grey", "JPEG", {"mode": "L"}, b"\xff\xc0"),
    ("jpeg-cmyk", "JPEG", {"mode": "CMYK"}, b"\xff\xc0"),
    ("webp-lossy", "WEBP", {"quality": 50}, b"VP8 "),
    ("webp-lossless", "WEBP", {"lossless": True}, b"VP8L"),
    ("webp-extended", "WEBP", {"mode": "RGBA", "quality": 50}, b"VP8X"),
    ("gif", "GIF", {}, b"GIF87a"),
]


def make(size: tuple[int, int], fmt: str, options: dict[str, Any]) -> bytes:
    opts = dict(options)
    mode = opts.pop("mode", "RGB")
    return encode(size, fmt, mode, **opts)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("label", "fmt", "options", "tag"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_real_images_report_their_size(
    label: str, fmt: str, options: dict[str, Any], tag: bytes, size: tuple[int, int]
) -> None:
    data = make(size, fmt, options)
    assert tag in data[:64] or (label.startswith("jpeg") and tag in data), label
    assert image_size_from_bytes(data) == size
    assert image_size_from_bytes(data[:HEADER_BYTES]) == size


def test_largest_sizes_of_each_format_are_read() -> None:
    assert image_size_from_bytes(encode((16383, 2), "WEBP", lossless=True)) == (16383, 2)
    assert image_size_from_bytes(encode((16383, 2), "WEBP", quality=10)) == (16383, 2)
    assert image_size_from_bytes(encode((65500, 1), "JPEG")) == (65500, 1)
    assert image_size_from_bytes(encode((65535, 1), "GIF")) == (65535, 1)
    assert image_size_from_bytes(encode((70000, 1), "PNG")) == (70000, 1)


def test_exif_orientation_is_not_applied_and_exif_is_skipped() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the file still stores 640x480
    exif[0x010E] = "x" * 20_000  # ImageDescription: a big APP1 segment before SOF
    data = encode((640, 480), "JPEG", exif=exif.tobytes())
    assert data.index(b"\xff\xe1") < 30  # APP1 (EXIF) right after JFIF's APP0
    assert data.index(b"\xff\xc0") > 20_000
    assert image_size_from_bytes(data) == (640, 480)


def test_jpeg_whose_frame_header_is_past_header_bytes_is_unknown_in_the_prefix() -> None:
    data = encode((320, 200), "JPEG")
    padded = data[:2] + segment(0xE2, b"ICC_PROFILE\0" + bytes(65_500)) + data[2:]
    assert Image.open(io.BytesIO(padded)).size == (320, 200)  # still a valid JPEG
    assert image_size_from_bytes(padded) == (320, 200)
    assert image_size_from_bytes(padded[:HEADER_BYTES]) is None


@pytest.mark.parametrize(("label", "fmt", "options", "tag"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_every_truncation_gives_none_or_the_true_size(
    label: str, fmt: str, options: dict[str, Any], tag: bytes
) -> None:
    data = make((17, 5), fmt, options)
    results = [image_size_from_bytes(data[:n]) for n in range(len(data) + 1)]
    assert results[-1] == (17, 5)
    assert set(results) <= {None, (17, 5)}, label
    first = results.index((17, 5))
    assert all(r == (17, 5) for r in results[first:])  # parsers only read forward


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (SOI, None),
        (SOI + sof(0xC9, 300, 200), (300, 200)),  # arithmetic-coded, SOF9
        (SOI + sof(0xCF, 3, 4), (3, 4)),  # SOF15
        (SOI + segment(0xC4, b"\0" * 4) + segment(0xC8, b"") + sof(0xC1, 5, 6), (5, 6)),
        (SOI + segment(0xCC, b"\0\0") + sof(0xC3, 7, 8), (7, 8)),  # DAC is not a frame
        (SOI + b"\xff\xff\xff" + sof(0xC0, 9, 10), (9, 10)),  # fill bytes
        (SOI + b"\xff\x01\xff\xd0\xff\xd7" + sof(0xC0, 11, 12), (11, 12)),  # TEM, RSTn
        (SOI + segment(0xFE, b"comment") + b"\xff" + sof(0xC0, 13, 14), (13, 14)),
        (SOI + b"\x00" + sof(0xC0, 9, 10), None),  # garbage between segments
        (SOI + b"\xff\xff", None),  # fill bytes up to the end
        (SOI + b"\xff\xd9" + sof(0xC0, 9, 10), None),  # EOI
        (SOI + segment(0xDA, b"\0" * 8) + sof(0xC0, 9, 10), None),  # scan before frame
        (SOI + b"\xff\x00" + sof(0xC0, 9, 10), None),  # stuffed zero is not a marker
        (SOI + b"\xff\xe0\x00\x01" + sof(0xC0, 9, 10), None),  # length below 2
        (SOI + b"\xff\xe0\x00", None),  # truncated length
        (SOI + b"\xff\xc0\x00\x11\x08\x00", None),  # truncated frame header
        (SOI + sof(0xC0, 300, 0), None),  # height defined later by DNL
        (SOI + sof(0xC0, 0, 300), None),
        (SOI + b"\xff\xe0\x00\x10abc", None),  # segment runs past the end
    ],
)
def test_jpeg_marker_scanning(data: bytes, expected: tuple[int, int] | None) -> None:
    assert image_size_from_bytes(data) == expected


def riff(chunk: bytes, payload: bytes) -> bytes:
    return b"RIFF\0\0\0\0WEBP" + chunk + struct.pack("<I", len(payload)) + payload


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 4, 5), (4, 5)),
        (PNG_SIGNATURE + struct.pack(">I", 13) + b"CgBI" + struct.pack(">II", 4, 5), None),
        (PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 0, 5), None),
        (b"GIF87a" + struct.pack("<HH", 6, 7), (6, 7)),
        (b"GIF89a" + struct.pack("<HH", 0, 7), None),
        (riff(b"VP8 ", b"\x10\x02\x00\x9d\x01\x2a" + struct.pack("<HH", 0xC000 | 8, 9)), (8, 9)),
        (riff(b"VP8 ", b"\x10\x02\x00\x9d\x01\x2b" + struct.pack("<HH", 8, 9)), None),
        (riff(b"VP8 ", b"\x10\x02\x00\x9d\x01\x2a" + struct.pack("<HH", 0, 9)), None),
        (riff(b"VP8L", b"\x2f" + ((9 << 14) | 7).to_bytes(4, "little")), (8, 10)),
        (riff(b"VP8L", b"\x2e" + ((9 << 14) | 7).to_bytes(4, "little")), None),
        (
            riff(b"VP8X", bytes(4) + (99).to_bytes(3, "little") + (0).to_bytes(3, "little")),
            (100, 1),
        ),
        (riff(b"ALPH", bytes(10)), None),
        (b"RIFF\0\0\0\0WAVEfmt ", None),
        (b"BM" + bytes(40), None),  # BMP is not supported
        (b"", None),
    ],
)
def test_other_headers(data: bytes, expected: tuple[int, int] | None) -> None:
    assert image_size_from_bytes(data) == expected


def test_random_bytes_never_raise() -> None:
    rng = random.Random(20240601)
    for _ in range(3000):
        tail = rng.randbytes(rng.randrange(0, 48))
        result = image_size_from_bytes(rng.choice(PREFIXES) + tail)
        assert result is None or (result[0] > 0 and result[1] > 0)


@given(prefix=st.sampled_from(PREFIXES), tail=st.binary(max_size=96))
def test_arbitrary_bytes_never_raise(prefix: bytes, tail: bytes) -> None:
    result = image_size_from_bytes(prefix + tail)
    assert result is None or (result[0] > 0 and result[1] > 0)


def test_path_helper_reads_only_the_header(tmp_path: Path) -> None:
    noisy = Image.effect_noise((400, 300), 64).convert("RGB")
    path = tmp_path / "noise.png"
    noisy.save(path)
    assert path.stat().st_size > HEADER_BYTES
    assert image_size_from_path(path) == (400, 300)
    assert image_size_from_path(str(path)) == (400, 300)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert image_size_from_path(text) is None
    with pytest.raises(FileNotFoundError):
        image_size_from_path(tmp_path / "missing.png")
