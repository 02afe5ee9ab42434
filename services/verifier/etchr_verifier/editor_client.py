"""The verifier's view of the editor: one ``POST /edit`` with a deadline; any failure means "fall back"."""

from __future__ import annotations

import base64
import binascii

import httpx

from etchr.protocol.edit import EditResponse, EditTask


class EditorUnavailable(Exception):
    """The edit could not be had (down, slow, overloaded, failing); the verifier answers without it."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.kind = kind  # editor_down | editor_timeout | editor_error: a metrics label


class EditorClient:
    def __init__(self, base_url: str, *, timeout_s: float, api_key: str | None = None) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, headers=headers)

    async def edit(self, image_b64: str, question: str, task: EditTask, *, request_id: str) -> bytes:
        """The edited image (PNG bytes) for ``question``; raises EditorUnavailable with a readable reason."""
        body = {"image": image_b64, "question": question, "task": task, "n": 1}
        try:
            response = await self._http.post("/edit", json=body, headers={"x-request-id": request_id})
        except httpx.TimeoutException:
            raise EditorUnavailable(
                f"editor at {self.base_url} did not answer within {self._http.timeout.read:g} s",
                "editor_timeout",
            ) from None
        except httpx.HTTPError as exc:
            raise EditorUnavailable(
                f"editor at {self.base_url} unreachable: {type(exc).__name__}: {exc}", "editor_down"
            ) from None
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            kind = "editor_timeout" if response.status_code == 504 else "editor_error"
            raise EditorUnavailable(f"editor answered {response.status_code}: {message}", kind)
        try:
            result = EditResponse.model_validate_json(response.content)
            return base64.b64decode(result.images[0], validate=True)
        except (ValueError, IndexError, binascii.Error) as exc:
            raise EditorUnavailable(f"editor sent an unusable response: {exc}", "editor_error") from None

    async def aclose(self) -> None:
        await self._http.aclose()
