"""Writes the seeds of image_decode_fuzz: tiny images in every format and
variant the decoder accepts (WebP and EXIF-oriented JPEG/WebP/PNG included),
made with Pillow. Run from the repository root
with the project's environment:

    .venv/bin/python fuzz/make_image_seeds.py

The output is deterministic for a given Pillow version (13.0 made the committed
files); rerunning it only matters when seeds are added. The finding-* files next
to them are not made here: they are the inputs image_decode_fuzz found (one per
stb_image fix in cpp/src/imageio/CMakeLists.txt), kept as regression seeds that
every run, the test command's included, replays first.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

OUT = Path(__file__).parent / "corpus" / "image_decode_fuzz"


def gradient(mode: str, size: tuple[int, int]) -> Image.Image:
    w, h = size
    rgba = Image.new("RGBA", size)
    rgba.putdata([((x * 255) // max(w - 1, 1), (y * 255) // max(h - 1, 1), 128, 200) for y in range(h) for x in range(w)])
    return rgba.convert(mode) if mode != "RGBA" else rgba


def save(name: str, image: Image.Image, fmt: str, **options) -> None:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    (OUT / name).write_bytes(buf.getvalue())


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    save("rgb.png", gradient("RGB", (5, 3)), "PNG")
    save("rgba.png", gradient("RGBA", (4, 4)), "PNG")
    save("gray.png", gradient("L", (3, 5)), "PNG")
    save("palette.png", gradient("RGB", (4, 3)).quantize(4), "PNG")
    save("gray16.png", gradient("L", (3, 2)).convert("I;16"), "PNG")
    save("baseline.jpg", gradient("RGB", (8, 8)), "JPEG", quality=90)
    save("subsampled.jpg", gradient("RGB", (17, 9)), "JPEG", quality=75, subsampling=2)
    save("progressive.jpg", gradient("RGB", (16, 16)), "JPEG", quality=80, progressive=True)
    save("gray.jpg", gradient("L", (8, 8)), "JPEG", quality=90)
    save("rgb.bmp", gradient("RGB", (3, 2)), "BMP")
    save("palette.bmp", gradient("RGB", (5, 2)).quantize(4), "BMP")
    save("static.gif", gradient("RGB", (4, 3)).quantize(8), "GIF")
    frames = [gradient("RGB", (4, 4)).quantize(4), gradient("RGB", (4, 4)).rotate(90).quantize(4)]
    save("animated.gif", frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)
    save("rgb.tga", gradient("RGB", (3, 3)), "TGA")
    save("rle.tga", gradient("RGB", (6, 2)), "TGA", compression="tga_rle")
    save("rgb.ppm", gradient("RGB", (3, 2)), "PPM")
    save("gray.pgm", gradient("L", (3, 2)), "PPM")
    # WebP (libwebp) and EXIF orientation (libexif) paths.
    save("lossy.webp", gradient("RGB", (16, 8)), "WEBP", quality=60)
    save("lossless.webp", gradient("RGB", (5, 3)), "WEBP", lossless=True)
    save("alpha.webp", gradient("RGBA", (6, 4)), "WEBP", lossless=True)
    save("lossy-alpha.webp", gradient("RGBA", (8, 8)), "WEBP", quality=50)
    save("animated.webp", frames[0].convert("RGB"), "WEBP", save_all=True,
         append_images=[frames[1].convert("RGB")], lossless=True)
    for orientation in (3, 6):
        exif = Image.Exif()
        exif[0x0112] = orientation
        save(f"exif-{orientation}.jpg", gradient("RGB", (8, 4)), "JPEG", quality=80, exif=exif.tobytes())
        save(f"exif-{orientation}.webp", gradient("RGB", (4, 2)), "WEBP", lossless=True, exif=exif.tobytes())
        save(f"exif-{orientation}.png", gradient("RGB", (4, 2)), "PNG", exif=exif.tobytes())


if __name__ == "__main__":
    main()
