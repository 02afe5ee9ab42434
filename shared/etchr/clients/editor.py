"""The verifier's view of the editor: one ``POST /edit`` with a deadline; any failure means "fall back"."""

from __future__ import annotations

import base64
import binascii

import httpx

from etchr.imaging import image_mime
from etchr.protocol.edit import EditResponse, EditTask
from etchr.protocol.errors import error_detail


class EditorUnavailable(Exception):
    """The edit could not be had (down, slow, overloaded, failing); the verifier answers without it."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        # editor_down | editor_busy | editor_timeout | editor_auth | editor_error: a metrics label
        self.kind = kind


# A job id no editor issues: GET /jobs/<it> is auth-checked like an edit, then a 404 costing one Redis read.
PROBE_JOB_ID = "etchr-verifier-credentials-probe"
AUTH_REFUSED = (401, 403)
UNAVAILABLE = (502, 503)  # the editor (or a proxy in front of it) says it cannot serve now


class EditorClient:
    def __init__(self, base_url: str, *, timeout_s: float, api_key: str | None = None) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.has_api_key = bool(api_key)
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
            message = error_detail(response.status_code, response.content).message
            if response.status_code in AUTH_REFUSED:
                raise EditorUnavailable(
                    f"editor refused the verifier's credentials ({response.status_code}: {message}); "
                    f"{self._credentials_hint()}",
                    "editor_auth",
                )
            if response.status_code in UNAVAILABLE:  # it said so itself (e.g. its Redis is full or down)
                status = response.status_code
                raise EditorUnavailable(f"editor unavailable ({status}): {message}", "editor_down")
            if response.status_code == 429:
                raise EditorUnavailable(f"editor busy (429): {message}", "editor_busy")
            kind = "editor_timeout" if response.status_code == 504 else "editor_error"
            raise EditorUnavailable(f"editor answered {response.status_code}: {message}", kind)
        try:
            result = EditResponse.model_validate_json(response.content)
            edited = base64.b64decode(result.images[0], validate=True)
            image_mime(edited)  # PNG, JPEG or WebP, or the edit is unusable
            return edited
        except (ValueError, IndexError, binascii.Error) as exc:
            raise EditorUnavailable(f"editor sent an unusable response: {exc}", "editor_error") from None

    async def credentials_problem(self, timeout_s: float) -> str | None:
        """Why the editor refuses this client's token, or None (accepted, auth off, or no answer to judge by).

        An editor that is down or slow is not a credentials problem: the verifier answers without edits then,
        by design, so only an explicit 401/403 counts.
        """
        try:
            response = await self._http.get(f"/jobs/{PROBE_JOB_ID}", timeout=timeout_s)
        except httpx.HTTPError:
            return None
        if response.status_code not in AUTH_REFUSED:
            return None
        return (
            f"the editor at {self.base_url} refused the verifier's credentials ({response.status_code}): "
            f"{self._credentials_hint()}"
        )

    def _credentials_hint(self) -> str:
        if self.has_api_key:
            return "ETCHR_EDITOR_API_KEY is not one of the editor's ETCHR_API_KEYS"
        return "set ETCHR_EDITOR_API_KEY to one of the editor's ETCHR_API_KEYS"

    async def aclose(self) -> None:
        await self._http.aclose()
