"""The single HTML page that `nexttoken demo` writes: one section per pipeline with plots, tables, audio and text.

Files are linked by paths relative to the report, so the folder can be moved or zipped and still opens offline.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from nexttoken.files import atomic_write_text


@dataclass
class Section:
    title: str
    items: list[tuple[str, object]] = field(default_factory=list)

    def text(self, paragraph: str) -> "Section":
        self.items.append(("text", paragraph))
        return self

    def image(self, path: str | Path, caption: str = "") -> "Section":
        self.items.append(("image", (Path(path), caption)))
        return self

    def audio(self, path: str | Path, caption: str = "") -> "Section":
        self.items.append(("audio", (Path(path), caption)))
        return self

    def table(self, rows: list[dict], caption: str = "") -> "Section":
        self.items.append(("table", (rows, caption)))
        return self

    def code(self, text: str) -> "Section":
        self.items.append(("code", text))
        return self


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; } img { max-width: 520px; }
figcaption { font-size: 0.9em; color: #555; max-width: 520px; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; } pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
"""


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def render(title: str, sections: list[Section], out: str | Path, intro: str = "") -> Path:
    out = Path(out)
    base = out.parent

    def rel(p: Path) -> str:
        return html.escape(os.path.relpath(p, base))

    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>"]
    parts.append(f"<h1>{html.escape(title)}</h1>")
    if intro:
        parts.append(f"<p>{html.escape(intro)}</p>")
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        for kind, item in s.items:
            if kind == "text":
                parts.append(f"<p>{html.escape(item)}</p>")
            elif kind == "code":
                parts.append(f"<pre>{html.escape(item)}</pre>")
            elif kind == "image":
                path, cap = item
                parts.append(f"<figure><img src='{rel(path)}'><figcaption>{html.escape(cap)}</figcaption></figure>")
            elif kind == "audio":
                path, cap = item
                parts.append(
                    f"<figure><audio controls preload='none' src='{rel(path)}'></audio>"
                    f"<figcaption>{html.escape(cap)}</figcaption></figure>"
                )
            elif kind == "table":
                rows, cap = item
                if rows:
                    cols = list(dict.fromkeys(k for r in rows for k in r))
                    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
                    body = "".join(
                        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows
                    )
                    caption = f"<caption>{html.escape(cap)}</caption>" if cap else ""
                    parts.append(f"<table>{caption}<tr>{head}</tr>{body}</table>")
    atomic_write_text(out, "\n".join(parts) + "\n")
    return out
