"""The parts every self-contained HTML page of transferkit shares: thumbnails as data URIs, data for
the page's script, the style sheet and the page around a body.

A page written with these makes no request of any kind: its images are ``data:`` URIs, its style
and script are inline, and it names no font or file outside itself. Text reaches the page either
escaped (:func:`escape`) or as JSON that the script puts in with ``textContent``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from PIL import Image

from transferkit._types import Color, PathLike
from transferkit.data._images import WHITE, load_image, printable

THUMBNAIL_SIZE = 96
"""Pixels per side of a thumbnail on the review page (the report's are smaller)."""


def escape(text: object) -> str:
    """``text`` for HTML: ``<``, ``>``, ``&`` and both quotes escaped (safe in text and attributes)."""
    return html.escape(str(text), quote=True)


def thumbnail_png(path: PathLike, *, size: int = THUMBNAIL_SIZE, resize: str = "pad",
                  background: Color = WHITE) -> bytes:
    """PNG bytes of ``path`` read with :func:`transferkit.data.load_image` (EXIF upright, alpha
    composited, a large photo decoded at a reduced size) at ``size × size`` pixels.

    Raises:
        DataError: the file cannot be read (the message says why).
    """
    pixels = load_image(path, image_size=size, resize=resize, background=background)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(image: bytes) -> str:
    """A ``data:`` URI of PNG, JPEG, GIF or WebP bytes (the type read from the bytes themselves)."""
    kind = "image/png"
    if image[:3] == b"\xff\xd8\xff":
        kind = "image/jpeg"
    elif image[:4] == b"GIF8":
        kind = "image/gif"
    elif image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        kind = "image/webp"
    return f"data:{kind};base64,{base64.b64encode(image).decode('ascii')}"


def script_json(value: Any) -> str:
    """``value`` as JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>``
    or ``&`` appears literally, so no text can close the element."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("page-data").textContent);
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}
"""
"""What every page's script starts with: strict mode, the page's data as ``D``, and ``el(tag, attrs,
...children)``, which builds an element (``class`` and ``text`` set as properties, the rest as attributes)."""


CSS = """
:root { --fg: #1d2330; --muted: #5d6677; --line: #d9dee7; --bg: #f6f7f9; --accent: #1f5fbf;
        --bad: #b3261e; --bad-bg: #fde7e5; --good: #1e7b34; --card: #fff; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); }
header.top { position: sticky; top: 0; z-index: 5; background: var(--card); border-bottom: 1px solid var(--line);
             padding: 10px 24px; display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
header.top h1 { font-size: 18px; margin: 0 12px 0 0; }
header.top nav a { margin-right: 12px; color: var(--accent); text-decoration: none; }
main { padding: 8px 24px 48px; max-width: 1400px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 18px;
          margin: 16px 0; }
section h2 { font-size: 16px; margin: 4px 0 10px; }
.muted { color: var(--muted); }
.figures { display: flex; flex-wrap: wrap; gap: 12px; }
.figure { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.figure b { display: block; font-size: 20px; }
table { border-collapse: collapse; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: right; }
th { background: var(--bg); font-weight: 600; }
td.name, th.name { text-align: left; }
img.thumb { image-rendering: auto; border: 1px solid var(--line); background: #eee; display: block; }
.missing { display: flex; align-items: center; justify-content: center; background: #eee; color: var(--muted);
           font-size: 11px; border: 1px dashed var(--line); text-align: center; }
.path { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px;
        word-break: break-all; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.badge.leak { background: var(--bad-bg); color: var(--bad); border: 1px solid var(--bad); }
.badge.within { background: var(--bg); color: var(--muted); border: 1px solid var(--line); }
button { font: inherit; cursor: pointer; border: 1px solid var(--line); background: var(--card); border-radius: 6px;
         padding: 4px 10px; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button:disabled { cursor: default; opacity: 0.5; }
.pager { display: flex; gap: 8px; align-items: center; margin: 8px 0; }
.bar { display: inline-block; height: 10px; background: var(--accent); vertical-align: middle; }
svg text { font: 11px system-ui, sans-serif; fill: var(--fg); }
"""


def page(title: str, body: str, *, script: str = "", data: Any = None, css: str = "") -> str:
    """A whole HTML document: ``body`` (HTML, already escaped), the shared style sheet plus ``css``,
    ``data`` as JSON in ``<script id="page-data">`` and ``script`` after it (preceded by :data:`SCRIPT`);
    always valid UTF-8 (a file name that is not is written with ``\\xNN`` escapes)."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # nothing may be fetched: no network, no file beside the page
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data: blob:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        f"<title>{escape(title)}</title>", f"<style>{CSS}{css}</style>", "</head>", "<body>", body,
    ]
    if data is not None:
        parts.append(f'<script type="application/json" id="page-data">{script_json(data)}</script>')
    if script:
        parts.append(f"<script>{SCRIPT}{script}</script>")
    parts += ["</body>", "</html>", ""]
    # a file name whose bytes are not UTF-8 (kept by Python as lone surrogates) is shown as \xe9 escapes
    return printable("\n".join(parts))
