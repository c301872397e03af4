"""`HiddenFolder`, the web app's ASGI middleware that keeps the server's cache folder out of what clients see
(`latentsync.app` installs it in front of Gradio): every page, API answer and error shows the folder as
`/files`, and requests naming `/files` are mapped back before Gradio reads them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

PUBLIC_FOLDER = "/files"  # the name clients see for the folder where the server keeps uploads and results


class HiddenFolder:
    """ASGI middleware that keeps a server folder's location from clients: in answers that are text (pages,
    JSON, event streams) the folder's path is replaced by `public`, and in requests (`file=` routes, JSON
    bodies) `public` is mapped back, so Gradio still works with its own paths. Whatever a client sends, Gradio's
    own checks still decide what is served."""

    def __init__(self, app, folder: str | Path, public: str = PUBLIC_FOLDER):
        self.app = app
        real = os.path.abspath(folder)  # Gradio's own form of its cache paths (absolute, links kept)
        self.public = public
        self.real = real
        # The folder as it appears in answers: plain, JSON-escaped, URL-quoted.
        forms = {real, json.dumps(real)[1:-1], quote(real, safe="/")}
        self.outgoing = [(f"{form}/".encode(), f"{public}/".encode()) for form in sorted(forms, key=len, reverse=True)]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope = dict(scope)
        marker = f"file={self.public}/"
        if marker in scope["path"]:
            scope["path"] = scope["path"].replace(marker, f"file={self.real}/")
            scope["raw_path"] = scope["raw_path"].replace(quote(marker, safe="/=").encode(),
                                                          quote(f"file={self.real}/", safe="/=").encode())
        if _header(scope["headers"], b"content-type").startswith(b"application/json"):
            receive = await self._mapped_body(scope, receive)
        await self.app(scope, receive, self._hiding(send))

    async def _mapped_body(self, scope, receive):
        """The JSON body read whole, with `public` paths mapped back; `receive` replays it."""
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return _replay([message], receive)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            body = json.dumps(self._map_back(json.loads(body))).encode()
        except (ValueError, UnicodeDecodeError):
            pass  # not JSON after all: Gradio answers it as it would
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-length"] + [
            (b"content-length", str(len(body)).encode())]
        return _replay([{"type": "http.request", "body": body, "more_body": False}], receive)

    def _map_back(self, value):
        if isinstance(value, str):
            if value.startswith(f"{self.public}/"):
                return self.real + value[len(self.public):]
            return value.replace(f"file={self.public}/", f"file={quote(self.real, safe='/')}/")
        if isinstance(value, list):
            return [self._map_back(v) for v in value]
        if isinstance(value, dict):
            return {k: self._map_back(v) for k, v in value.items()}
        return value

    def _hide(self, body: bytes) -> bytes:
        for form, public in self.outgoing:
            body = body.replace(form, public)
        return body

    def _hiding(self, send):
        """`send` with the folder hidden in text answers: one with a length is gathered and sent whole with its
        new length; a stream (Gradio's events, a message each) is rewritten message by message."""
        state = {"start": None, "hide": False, "chunks": []}

        async def hiding_send(message):
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                kind = _header(headers, b"content-type")
                state["hide"] = (kind.startswith((b"text/", b"application/json"))
                                 and not _header(headers, b"content-encoding"))
                if state["hide"] and _header(headers, b"content-length"):
                    state["start"] = message  # sent with the body, once its new length is known
                    return
                return await send(message)
            if message["type"] != "http.response.body" or not state["hide"]:
                return await send(message)
            if state["start"] is None:  # a stream
                return await send({**message, "body": self._hide(message.get("body", b""))})
            state["chunks"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = self._hide(b"".join(state["chunks"]))
            start = state["start"]
            headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return hiding_send


def _header(headers, name: bytes) -> bytes:
    return next((v.lower() for k, v in headers if k.lower() == name), b"")


def _replay(messages, then):
    """A `receive` that gives `messages`, then passes on to `then` (which tells of the client going away)."""
    pending = list(messages)

    async def receive():
        return pending.pop(0) if pending else await then()

    return receive
