"""Messages shown to the analyst as escaped text in a coloured box.

Messages carry user-supplied strings (session names, plan labels, layer and file names, error
text), so they are never rendered as Markdown or HTML: everything goes through html.escape.
"""
from __future__ import annotations

import html

import panel as pn

COLORS = {"info": ("#e7f1fb", "#9ec5ea", "#0c3d66"), "warning": ("#fff6dc", "#f0d58a", "#5c4400"),
          "danger": ("#fbe9e9", "#eab0b0", "#6b1111"), "success": ("#e8f5ec", "#a8d5b5", "#0f4d22")}


def notice_html(text: str, kind: str = "info", css_class: str = "bs-notice") -> str:
    """A coloured box holding ``text`` as plain text (escaped; line breaks kept)."""
    if not text:
        return ""
    bg, border, fg = COLORS.get(kind, COLORS["info"])
    body = html.escape(str(text)).replace("\n", "<br>")
    return (f'<div class="{css_class}" role="status" style="background:{bg};border:1px solid {border};color:{fg};'
            f'border-radius:5px;padding:8px 12px;margin:2px 0;white-space:pre-wrap">{body}</div>')


class Notice(pn.pane.HTML):
    """An HTML pane that only ever shows escaped text: ``show(text, kind)``; empty text hides it."""

    def __init__(self, **params):
        params.setdefault("visible", False)
        params.setdefault("sizing_mode", "stretch_width")
        super().__init__("", **params)

    def show(self, text: str, kind: str = "info") -> None:
        self.object = notice_html(text, kind)
        self.visible = bool(text)
