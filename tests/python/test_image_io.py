"""Image inputs end to end: every format and source against what transformers'
image processors see (Pillow + ``convert_to_rgb`` after ``exif_transpose``),
zero-copy arrays and their release, URL fetching and its limits, and each bad
input refused with a typed error that leaves the pool healthy."""

from __future__ import annotations

import base64
import gc
import http.server
import io
import struct
import sys
import threading
import weakref
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

import mpool
from mpool import _core


class Recorder:
    """Keeps a copy of every image it is given (and where its pixels lived)."""

    dimension = 1
    images: list[np.ndarray] = []
    addresses: list[int] = []

    def embed_images(self, images):
        Recorder.images.extend(np.array(img) for img in images)
        Recorder.addresses.extend(img.__array_interface__["data"][0] for img in images)
        return np.zeros((len(images), 1), np.float32)


def _make_pool(**options):
    pool = mpool.Pool(maintenance_interval=0.02, request_timeout=20.0, **options)
    pool.register("rec", mpool.PyModel("image_embedding", lambda d: Recorder(), memory_mb=1, max_replicas=1))
    return pool


@pytest.fixture
def pool():
    p = _make_pool()
    yield p
    p.close()


def decoded(pool, image):
    Recorder.images.clear()
    pool.embed_images("rec", [image])
    return Recorder.images[0]


def reference(data: bytes) -> np.ndarray:
    """What a transformers 5 image processor gets from these bytes (PIL backend, do_convert_rgb)."""
    from transformers.image_transforms import convert_to_rgb

    return convert_to_rgb(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), return_numpy=True)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


RNG = np.random.default_rng(11)
NOISE_RGB = Image.fromarray(RNG.integers(0, 256, (23, 37, 3), dtype=np.uint8), "RGB")
NOISE_RGBA = Image.fromarray(RNG.integers(0, 256, (23, 37, 4), dtype=np.uint8), "RGBA")
# Smooth content for lossy codecs (noise would only measure the codec).
_y, _x = np.mgrid[0:48, 0:64]
SMOOTH = Image.fromarray(np.stack([_x * 4, _y * 5, (_x + _y) * 2], -1).astype(np.uint8), "RGB")


def png16(width: int, height: int, color_type: int, samples: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = samples.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _animated_gif() -> bytes:
    frames = [NOISE_RGB.quantize(32), NOISE_RGB.rotate(90).quantize(32)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)


EXACT_FORMATS = {
    "rgba_png": lambda: encode(NOISE_RGBA, "PNG"),
    "la_png": lambda: encode(NOISE_RGBA.convert("LA"), "PNG"),
    "gray_png": lambda: encode(NOISE_RGB.convert("L"), "PNG"),
    "palette_png": lambda: encode(NOISE_RGB.quantize(16), "PNG"),
    "palette_png_with_transparency": lambda: encode(NOISE_RGB.quantize(16), "PNG", transparency=3),
    "rgb_png_with_transparency": lambda: encode(Image.new("RGB", (5, 3), (1, 2, 3)).quantize(2).convert("RGB"), "PNG",
                                                transparency=(1, 2, 3)),
    "gray_png_with_transparency": lambda: encode(NOISE_RGB.convert("L"), "PNG", transparency=77),
    "rgb16_png": lambda: png16(9, 7, 2, RNG.integers(0, 65536, (7, 9, 3))),
    "rgba16_png": lambda: png16(9, 7, 6, RNG.integers(0, 65536, (7, 9, 4))),
    "gray16_png": lambda: encode(Image.fromarray(RNG.integers(0, 1024, (7, 9)).astype(np.uint16)), "PNG"),
    "webp_lossy": lambda: encode(SMOOTH, "WEBP", quality=80),
    "webp_lossless": lambda: encode(NOISE_RGB, "WEBP", lossless=True),
    "webp_lossless_alpha": lambda: encode(NOISE_RGBA, "WEBP", lossless=True),
    "webp_lossy_alpha": lambda: encode(NOISE_RGBA, "WEBP", quality=70),
    "gif_first_frame_of_animation": _animated_gif,
    "gif_with_transparency": lambda: encode(NOISE_RGB.quantize(32), "GIF", transparency=4),
    "bmp": lambda: encode(NOISE_RGB, "BMP"),
    "palette_bmp": lambda: encode(NOISE_RGB.quantize(8), "BMP"),
}


@pytest.mark.parametrize("name", sorted(EXACT_FORMATS))
def test_format_decodes_pixel_for_pixel_as_the_image_processor_sees_it(pool, name):
    data = EXACT_FORMATS[name]()
    np.testing.assert_array_equal(decoded(pool, data), reference(data))


# JPEG: stb_image's IDCT and YCbCr -> RGB conversion round differently from
# libjpeg-turbo's (which Pillow uses): up to 2 levels on color JPEGs with
# subsampled chroma, 1 on grayscale. Measured on these images; docs/images.md.
JPEGS = {
    "baseline_jpeg": (lambda: encode(SMOOTH, "JPEG", quality=90), 2),
    "progressive_jpeg": (lambda: encode(SMOOTH, "JPEG", quality=90, progressive=True), 2),
    "gray_jpeg": (lambda: encode(SMOOTH.convert("L"), "JPEG", quality=90), 1),
    "unsubsampled_jpeg": (lambda: encode(SMOOTH, "JPEG", quality=95, subsampling=0), 2),
}


@pytest.mark.parametrize("name", sorted(JPEGS))
def test_jpeg_decodes_within_two_levels_of_pillow(pool, name):
    make, tolerance = JPEGS[name]
    data = make()
    got, want = decoded(pool, data).astype(int), reference(data).astype(int)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= tolerance
    assert np.abs(got - want).mean() < 0.25


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
def test_exif_orientation_is_applied_as_exif_transpose_does(pool, fmt, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}, "PNG": {}}[fmt]
    data = encode(SMOOTH, fmt, exif=exif.tobytes(), **options)
    got, want = decoded(pool, data).astype(int), reference(data).astype(int)
    assert got.shape == want.shape == ((48, 64, 3) if orientation < 5 else (64, 48, 3))
    assert np.abs(got - want).max() <= (2 if fmt == "JPEG" else 0)


def test_every_value_and_alpha_pair_is_composited_over_white_exactly_as_pillow_does(pool):
    value, alpha = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    rgba = np.stack([value, 255 - value, value // 2, alpha], -1).astype(np.uint8)
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    np.testing.assert_array_equal(decoded(pool, data), reference(data))
    # A 4-channel array and a PIL RGBA image come out the same.
    np.testing.assert_array_equal(decoded(pool, rgba), reference(data))
    np.testing.assert_array_equal(decoded(pool, Image.fromarray(rgba, "RGBA")), reference(data))


def test_pil_images_of_every_mode_convert_as_convert_to_rgb_does(pool):
    from transformers.image_transforms import convert_to_rgb

    palette_with_transparency = NOISE_RGB.quantize(16)
    palette_with_transparency.info["transparency"] = 2
    for image in [NOISE_RGB, NOISE_RGBA, NOISE_RGBA.convert("LA"), NOISE_RGB.convert("L"), NOISE_RGB.convert("CMYK"),
                  palette_with_transparency, NOISE_RGB.convert("1")]:
        np.testing.assert_array_equal(decoded(pool, image), convert_to_rgb(image, return_numpy=True), err_msg=image.mode)


def test_an_animated_webp_is_refused_naming_the_image(pool):
    frames = [NOISE_RGB, NOISE_RGB.rotate(90)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    with pytest.raises(mpool.InvalidInput, match=r"image #0: bytes: animated WebP images are not supported"):
        pool.embed_images("rec", data)
    assert_healthy(pool)


# --- sources -------------------------------------------------------------------


def test_every_source_kind_gives_the_same_pixels(pool, tmp_path):
    data = encode(NOISE_RGBA, "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    b64 = base64.b64encode(data).decode()
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))  # MIME line breaks
    want = reference(data)
    sources = [str(path), path, data, bytearray(data), memoryview(data), b64, wrapped,
               "data:image/png;base64," + b64, "DATA:image/png;BASE64," + wrapped, Image.open(io.BytesIO(data)),
               want.copy()]
    Recorder.images.clear()
    pool.embed_images("rec", sources)
    assert len(Recorder.images) == len(sources)
    for i, got in enumerate(Recorder.images):
        np.testing.assert_array_equal(got, want, err_msg=f"source #{i}")


def test_invalid_base64_names_the_byte_offset_of_the_first_bad_character(pool):
    b64 = base64.b64encode(encode(NOISE_RGB, "PNG")).decode()
    bad = b64[:10] + "#" + b64[11:]
    with pytest.raises(mpool.InvalidInput, match=r"image #1: .*not valid base64: byte 10 is '#' \(0x23\)"):
        pool.embed_images("rec", [NOISE_RGB, bad])
    uri = "data:image/png;base64," + bad
    with pytest.raises(mpool.InvalidInput, match=r"image #0: data URI: not valid base64: byte 32 is '#'"):
        pool.embed_images("rec", uri)
    assert_healthy(pool)


def test_a_contiguous_rgb_array_reaches_the_model_without_a_copy_and_is_released_after(tmp_path):
    pool = _make_pool()
    array = np.full((6, 5, 3), 7, np.uint8)
    baseline = sys.getrefcount(array)
    Recorder.addresses.clear()
    pool.embed_images("rec", [array, array[:, ::-1]])  # the second (strided) one is copied
    assert Recorder.addresses[0] == array.ctypes.data
    assert Recorder.addresses[1] != array.ctypes.data
    for _ in range(200):
        pool.embed_images("rec", array)
        # Each request releases what the previous ones shared: no growth.
        assert sys.getrefcount(array) <= baseline + 3
    ref = weakref.ref(array)
    del array
    pool.close()  # joins the replicas, then releases what their requests shared
    gc.collect()
    assert ref() is None


def test_a_read_only_or_four_channel_array_is_copied_not_shared(pool):
    frozen = np.full((3, 3, 3), 5, np.uint8)
    frozen.flags.writeable = False
    rgba = np.full((3, 3, 4), 5, np.uint8)
    Recorder.addresses.clear()
    pool.embed_images("rec", [frozen, rgba])
    assert Recorder.addresses[0] != frozen.ctypes.data
    assert Recorder.addresses[1] != rgba.ctypes.data


# --- bad inputs: a typed error each, and the pool still serves ----------------------


def assert_healthy(pool):
    np.testing.assert_array_equal(decoded(pool, np.full((2, 2, 3), 9, np.uint8)), np.full((2, 2, 3), 9))


def _huge_png_header() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bad_inputs(tmp_path):
    jpeg = encode(SMOOTH, "JPEG")
    png = encode(NOISE_RGB, "PNG")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    return {
        "truncated_jpeg": (jpeg[: len(jpeg) // 3], r"image #0: bytes: cannot decode image"),
        "corrupt_png": (png[:40] + bytes(len(png) - 40), r"image #0: bytes: cannot decode image"),
        "invalid_base64": ("iVBORw0KGgo*AAAA", r"image #0: 'iVBORw0KGgo\*AAAA' \(not an existing file, an http\(s\) URL "
                                               r"or a data URI\): not valid base64: byte 11 is '\*'"),
        "missing_path": ("/no/such/dir/x.png", r"image #0: '/no/such/dir/x.png' \(not an existing file.*byte 14 is '\.'"),
        "directory": (str(tmp_path), r"not a regular file \(a directory\)"),
        "zero_byte_file": (str(empty), r"image #0: .*empty.png: image data is empty"),
        "zero_size_array": (np.zeros((0, 4, 3), np.uint8), r"image #0: the image is empty"),
        "huge_declared_size": (_huge_png_header(), r"image #0: bytes: image is 100000x100000, 10000000000 pixels; "
                                                   r"at most 268435456 pixels are decoded"),
        "file_url": ("file:///etc/passwd", r"image #0 \('file:///etc/passwd'\): the URL scheme 'file' is not supported"),
        "ftp_url": ("FTP://example.com/x.png", r"the URL scheme 'ftp' is not supported; image URLs must be http"),
        "bad_data_uri": ("data:image/png,%zz", r"image #0: data URI: the '%' at byte 15 is not followed by two hex"),
    }


@pytest.mark.parametrize(
    "case", ["truncated_jpeg", "corrupt_png", "invalid_base64", "missing_path", "directory", "zero_byte_file",
             "zero_size_array", "huge_declared_size", "file_url", "ftp_url", "bad_data_uri"],
)
def test_a_bad_image_is_invalid_input_naming_it_and_the_pool_stays_healthy(pool, tmp_path, case):
    image, match = _bad_inputs(tmp_path)[case]
    with pytest.raises(mpool.InvalidInput, match=match):
        pool.embed_images("rec", [image])
    assert_healthy(pool)


# --- URLs ----------------------------------------------------------------------------

PNG = encode(NOISE_RGB, "PNG")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802 (http.server's name)
        server = self.server
        server.hits.append(self.path)  # type: ignore[attr-defined]
        if self.path == "/img.png":
            self._send(200, PNG)
        elif self.path == "/text":
            self._send(200, b"<html>not an image</html>", "text/html")
        elif self.path == "/loop":
            self._redirect("/loop")
        elif self.path.startswith("/to/"):
            self._redirect(f"http://127.0.0.1:{self.path[4:]}/img.png")
        elif self.path == "/declared-big":
            self.send_response(200)
            self.send_header("Content-Length", str(10_000))
            self.end_headers()
            self._write(b"x" * 10_000)
        elif self.path == "/streamed-big":  # no Content-Length: the body ends when the connection does
            self.send_response(200)
            self.end_headers()
            for _ in range(10):
                if not self._write(b"x" * 1000):
                    break
        elif self.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.flush()
            server.release.wait(30)  # type: ignore[attr-defined]
            self._write(PNG)
        else:
            self._send(404, b"no such image")

    def _send(self, status, body, kind="image/png"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._write(body)

    def _redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _write(self, data) -> bool:
        try:
            self.wfile.write(data)
            return True
        except OSError:  # the client gave up
            return False

    def log_message(self, *args):
        pass


class _Server:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.hits = []  # type: ignore[attr-defined]
        self.httpd.release = threading.Event()  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hits(self):
        return self.httpd.hits  # type: ignore[attr-defined]

    def close(self):
        self.httpd.release.set()  # type: ignore[attr-defined]
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def open_pool():
    p = _make_pool(allow_private_urls=True, max_image_bytes=5000, fetch_timeout=5.0)
    yield p
    p.close()


def test_a_url_is_fetched_and_decoded(open_pool, server):
    np.testing.assert_array_equal(decoded(open_pool, f"{server.url}/img.png"), np.asarray(NOISE_RGB))


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("/missing.png", r"fetch failed \(The requested URL returned error: 404"),
        ("/loop", r"fetch failed \(Maximum \(5\) redirects followed\)"),
        ("/text", r"cannot decode image"),
        ("/declared-big", r"image is larger than 5000 bytes \(max_image_bytes; its Content-Length says so\)"),
        ("/streamed-big", r"image is larger than 5000 bytes \(max_image_bytes\)"),
    ],
    ids=["404", "redirect_loop", "not_an_image", "content_length_over_cap", "body_over_cap"],
)
def test_a_failing_url_is_invalid_input_naming_it_and_the_cause(open_pool, server, path, match):
    with pytest.raises(mpool.InvalidInput, match=rf"image #0: {server.url}{path}: {match}"):
        open_pool.embed_images("rec", f"{server.url}{path}")
    assert_healthy(open_pool)


def test_a_body_that_stalls_is_cut_off_by_fetch_timeout_as_invalid_input(server):
    with _make_pool(allow_private_urls=True, fetch_timeout=0.3) as pool:
        # The headers came (the size is known), the body never did.
        stalled = rf"fetch failed \(Operation timed out after \d+ milliseconds with 0 out of {len(PNG)} bytes received\)"
        with pytest.raises(mpool.InvalidInput, match=rf"image #0: {server.url}/stall: {stalled}"):
            pool.embed_images("rec", f"{server.url}/stall")
        assert_healthy(pool)


def test_a_loopback_url_is_refused_by_default_without_sending_a_request(pool, server):
    with pytest.raises(mpool.InvalidInput, match=rf"image #0: {server.url}/img.png: refused to connect to "
                                                 rf"127\.0\.0\.1:{server.port}, a loopback address \(the pool was made "
                                                 r"with allow_private_urls=False\)"):
        pool.embed_images("rec", f"{server.url}/img.png")
    assert server.hits == []
    assert_healthy(pool)


def test_a_redirect_from_an_allowed_host_to_a_private_address_is_refused(pool, server):
    # The first hop is made "public" by a test-only exemption of its exact endpoint;
    # the check then runs again on the redirect's connection, which it refuses.
    target = _Server()
    try:
        _core._set_test_allowed_endpoint(f"127.0.0.1:{server.port}")
        np.testing.assert_array_equal(decoded(pool, f"{server.url}/img.png"), np.asarray(NOISE_RGB))
        with pytest.raises(mpool.InvalidInput, match=rf"image #0: {server.url}/to/{target.port}: refused to connect to "
                                                     rf"127\.0\.0\.1:{target.port}, a loopback address"):
            pool.embed_images("rec", f"{server.url}/to/{target.port}")
        assert server.hits == ["/img.png", f"/to/{target.port}"]
        assert target.hits == []
    finally:
        _core._set_test_allowed_endpoint("")
        target.close()
    assert_healthy(pool)


def test_pool_image_options_are_checked():
    with pytest.raises(mpool.InvalidInput, match="allow_private_urls"):
        mpool.Pool(allow_private_urls="yes")
    with pytest.raises(mpool.InvalidInput, match="max_image_bytes"):
        mpool.Pool(max_image_bytes=0)
