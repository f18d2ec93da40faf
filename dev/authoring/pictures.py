"""Pictures of the example workflows: the reference images they load (simple deterministic drawings, written
into ComfyUI's input folder by the tests and the main job; no downloads) and the thumbnails of workflows/.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

from dev.authoring.graph import FRONTEND_ONLY, TITLE_HEIGHT

# file names in ComfyUI's input folder (the workflows name them)
REF_SUBJECT = "ipakit_ref_subject.png"
REF_STYLE = "ipakit_ref_style.png"
REF_LAYOUT = "ipakit_ref_layout.png"
REF_FACE = "ipakit_ref_face.png"
INIT_IMAGE = "ipakit_init.png"
INPAINT_IMAGE = "ipakit_inpaint.png"
DEPTH_MAP = "ipakit_depth.png"

# reference images: simple deterministic drawings, SIZE x SIZE

SIZE = 256


def _painted(colour_at: Callable[[int, int], object], mode: str = "RGB"):
    """An image whose pixel (x, y) is `colour_at(x, y)` (a tuple for RGB, an int for L)."""
    from PIL import Image

    img = Image.new(mode, (SIZE, SIZE))
    px = img.load()
    for y in range(SIZE):
        for x in range(SIZE):
            px[x, y] = colour_at(x, y)
    return img


def _canvas(top, bottom):
    """A vertical gradient from `top` to `bottom`."""
    rows = [tuple(int(a + (b - a) * (y / (SIZE - 1))) for a, b in zip(top, bottom)) for y in range(SIZE)]
    return _painted(lambda x, y: rows[y])


def _subject():
    from PIL import ImageDraw

    img = _canvas(top=(245, 240, 225), bottom=(200, 185, 160))
    d = ImageDraw.Draw(img)
    d.ellipse([58, 70, 198, 210], fill=(200, 30, 40))  # an apple
    d.ellipse([88, 95, 118, 125], fill=(240, 120, 120))
    d.rectangle([124, 40, 132, 78], fill=(90, 60, 30))
    d.ellipse([132, 38, 176, 62], fill=(60, 150, 50))
    return img


def _style():
    def colour(x, y):
        a = math.sin(x / 11.0 + 2.0 * math.sin(y / 23.0))
        b = math.sin((x + y) / 17.0)
        return (int(128 + 110 * a), int(90 + 60 * b), int(150 - 100 * a * b))

    return _painted(colour)


def _layout():
    from PIL import ImageDraw

    img = _canvas(top=(150, 190, 240), bottom=(230, 230, 240))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 170, 255, 255], fill=(70, 120, 60))  # ground
    d.polygon([(40, 170), (90, 60), (140, 170)], fill=(40, 80, 40))  # a tree on the left third
    d.ellipse([180, 30, 230, 80], fill=(250, 210, 80))  # sun on the right
    return img


def _face():
    from PIL import ImageDraw

    img = _canvas(top=(235, 235, 240), bottom=(200, 205, 215))
    d = ImageDraw.Draw(img)
    d.ellipse([78, 48, 178, 188], fill=(230, 190, 160))
    d.ellipse([103, 98, 119, 110], fill=(60, 50, 40))
    d.ellipse([137, 98, 153, 110], fill=(60, 50, 40))
    d.line([(128, 112), (124, 140), (132, 142)], fill=(170, 120, 100), width=3)
    d.arc([106, 140, 150, 168], 20, 160, fill=(160, 60, 60), width=4)
    d.pieslice([70, 30, 186, 110], 180, 360, fill=(80, 50, 30))  # hair
    return img


def _init():
    from PIL import ImageDraw

    img = _canvas(top=(120, 170, 230), bottom=(250, 220, 180))
    d = ImageDraw.Draw(img)
    d.polygon([(0, 200), (70, 110), (140, 190), (200, 120), (255, 180), (255, 255), (0, 255)], fill=(90, 100, 120))
    d.rectangle([0, 215, 255, 255], fill=(60, 90, 140))
    return img


def _inpaint():
    from PIL import ImageDraw

    img = _init().convert("RGBA")
    ImageDraw.Draw(img).ellipse([80, 80, 176, 176], fill=(0, 0, 0, 0))  # the hole to fill
    return img


def _depth():
    def depth(x, y):
        near = max(0.0, 1.0 - math.hypot(x - 128, y - 140) / 70.0)  # a round object in front
        return int(255 * max(near, 0.15 + 0.35 * y / 255))  # floor getting closer

    return _painted(depth, mode="L").convert("RGB")


REFERENCES: dict[str, Callable] = {
    REF_SUBJECT: _subject, REF_STYLE: _style, REF_LAYOUT: _layout, REF_FACE: _face,
    INIT_IMAGE: _init, INPAINT_IMAGE: _inpaint, DEPTH_MAP: _depth,
}


def write_references(input_dir: str | Path, names=None) -> list[Path]:
    """Write the reference images (all, or `names`) into `input_dir` unless they are already there."""
    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or REFERENCES:
        path = input_dir / name
        if not path.exists():
            tmp = path.with_name(f".{name}.tmp")
            REFERENCES[name]().save(tmp, "PNG")
            tmp.replace(path)
        written.append(path)
    return written


def references_used(workflow: dict) -> set[str]:
    """File names a UI- or API-format workflow loads with LoadImage."""
    if "nodes" in workflow:
        return {n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "LoadImage"}
    return {n["inputs"]["image"] for n in workflow.values() if n["class_type"] == "LoadImage"}


# thumbnails


def thumbnail(ui: dict, title: str, pictures: dict) -> bytes:
    """A JPEG mini-map of the graph under its title: pack nodes blue, core nodes grey, notes yellow, links as
    lines, and the pictures of Load Image nodes (`pictures`: file name -> PIL image) inside their boxes."""
    from PIL import Image, ImageDraw, ImageFont

    width, band = 384, 26  # band: the title's height
    nodes = {n["id"]: n for n in ui["nodes"]}
    x0 = min(n["pos"][0] for n in nodes.values()) - 20
    y0 = min(n["pos"][1] for n in nodes.values()) - TITLE_HEIGHT - 20
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values()) + 20
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes.values()) + 20
    scale = width / (x1 - x0)
    img = Image.new("RGB", (width, band + int((y1 - y0) * scale)), (32, 34, 38))
    draw = ImageDraw.Draw(img)
    draw.text((8, 5), title, fill=(235, 235, 240), font=ImageFont.load_default(size=15))

    def box(n):
        x, y = n["pos"]
        return [int((x - x0) * scale), band + int((y - TITLE_HEIGHT - y0) * scale),
                int((x + n["size"][0] - x0) * scale), band + int((y + n["size"][1] - y0) * scale)]

    for link in ui["links"]:
        a, b = box(nodes[link[1]]), box(nodes[link[3]])
        draw.line([(a[2], a[1] + 6 + 5 * link[2]), (b[0], b[1] + 6 + 5 * link[4])], fill=(150, 150, 160), width=1)
    for n in nodes.values():
        fill = (190, 160, 70) if n["type"] in FRONTEND_ONLY else (60, 110, 190) if n["type"].startswith("IPAKit") else (90, 92, 98)
        left, top, right, bottom = box(n)
        draw.rectangle([left, top, right, bottom], fill=fill, outline=(220, 220, 225))
        picture = pictures.get(n["widgets_values"][0]) if n["type"] == "LoadImage" else None
        if picture is not None:
            side = max(1, min(right - left, bottom - top) - 6)
            img.paste(picture.convert("RGB").resize((side, side)), (left + 3, bottom - side - 3))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()
