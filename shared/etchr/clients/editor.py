"""The verifier's view of the editor: one edit with a deadline; any failure means "fall back".

Without a progress callback an edit is one ``POST /edit``. With one, it is ``POST /jobs``, then the job's
``/events`` stream (each ``EditProgress`` to the callback), then ``GET /jobs/{id}`` for the image; if the
caller is cancelled meanwhile (its own client went away), the job is cancelled too, unless another
follower of the same job still waits for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import uuid
from collections.abc import Callable

import httpx
from httpx_sse import SSEError, aconnect_sse

from etchr.imaging import image_mime
from etchr.protocol.edit import EditProgress, EditResponse, EditTask, JobAccepted, JobStatusResponse
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
CANCEL_TIMEOUT_S = 5.0  # the best-effort DELETE of an abandoned job

ProgressCallback = Callable[[EditProgress], None]


def _progress_event(data: str) -> EditProgress:
    try:
        return EditProgress.model_validate_json(data)
    except ValueError as exc:
        raise EditorUnavailable(f"editor sent an unusable progress event: {exc}", "editor_error") from None


class EditorClient:
    def __init__(self, base_url: str, *, timeout_s: float, api_key: str | None = None) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.has_api_key = bool(api_key)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, headers=headers)
        self.timeout_s = timeout_s
        self._cancels: set[asyncio.Task[None]] = set()  # DELETEs in flight, referenced until they end

    async def edit(
        self,
        image_b64: str,
        question: str,
        task: EditTask,
        *,
        request_id: str,
        on_progress: ProgressCallback | None = None,
        seed: int | None = None,
    ) -> bytes:
        """The edited image (PNG bytes) for ``question``; raises EditorUnavailable with a readable reason.

        ``on_progress`` hears the job's progress (queue position, then step i of N, then done/failed)
        while the edit runs, within the same overall deadline (``timeout_s``). ``seed`` fixes the edit
        (the editor draws one without it).
        """
        body: dict[str, object] = {"image": image_b64, "question": question, "task": task, "n": 1}
        if seed is not None:
            body["seed"] = seed
        headers = {"x-request-id": request_id}
        if on_progress is None:
            response = await self._request("POST", "/edit", json=body, headers=headers)
            self._raise_for_status(response, ok=200)
            return self._edited_image(response.content)
        response = await self._request("POST", "/jobs", json=body, headers=headers)
        self._raise_for_status(response, ok=202)
        try:
            job_id = JobAccepted.model_validate_json(response.content).id
        except ValueError as exc:
            raise EditorUnavailable(f"editor sent an unusable response: {exc}", "editor_error") from None
        waiter = uuid.uuid4().hex
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._follow(job_id, waiter, headers, on_progress)
                response = await self._request("GET", f"/jobs/{job_id}", headers=headers)
        except TimeoutError:
            self._cancel_soon(job_id, waiter)
            raise EditorUnavailable(
                f"editor job {job_id} did not finish within {self.timeout_s:g} s", "editor_timeout"
            ) from None
        except asyncio.CancelledError:
            self._cancel_soon(job_id, waiter)
            raise
        self._raise_for_status(response, ok=200)
        try:
            status = JobStatusResponse.model_validate_json(response.content)
        except ValueError as exc:
            raise EditorUnavailable(f"editor sent an unusable response: {exc}", "editor_error") from None
        if status.status != "done" or status.result is None:
            raise EditorUnavailable(f"editor job {job_id} {status.status}: {status.error}", "editor_error")
        return self._image_of(status.result)

    async def _follow(
        self, job_id: str, waiter: str, headers: dict[str, str], on_progress: ProgressCallback
    ) -> None:
        """Read the job's event stream to its last event (done or failed), passing each one on."""
        try:
            async with aconnect_sse(
                self._http, "GET", f"/jobs/{job_id}/events", params={"waiter": waiter}, headers=headers
            ) as source:
                if source.response.status_code != 200:
                    await source.response.aread()
                    self._raise_for_status(source.response, ok=200)
                async for event in source.aiter_sse():
                    progress = _progress_event(event.data)
                    on_progress(progress)  # the caller's own errors pass through unchanged
                    if progress.status in ("done", "failed"):
                        return
        except httpx.TimeoutException:
            raise EditorUnavailable(
                f"editor at {self.base_url} went silent for {self._http.timeout.read:g} s", "editor_timeout"
            ) from None
        except httpx.HTTPError as exc:
            raise EditorUnavailable(
                f"editor at {self.base_url} unreachable: {type(exc).__name__}: {exc}", "editor_down"
            ) from None
        except SSEError as exc:
            raise EditorUnavailable(f"editor sent an unusable event stream: {exc}", "editor_error") from None
        raise EditorUnavailable(f"editor ended job {job_id}'s event stream early", "editor_down")

    def _cancel_soon(self, job_id: str, waiter: str) -> None:
        """DELETE the job in a task of its own, so the caller's cancellation cannot interrupt it."""
        task = asyncio.get_running_loop().create_task(self._cancel(job_id, waiter))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel(self, job_id: str, waiter: str) -> None:
        """Best effort: cancel ``job_id`` unless a follower other than ``waiter`` still waits for it."""
        with contextlib.suppress(httpx.HTTPError):  # else the job runs on and its result expires unread
            await self._http.delete(f"/jobs/{job_id}", params={"waiter": waiter}, timeout=CANCEL_TIMEOUT_S)

    async def _request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        try:
            return await self._http.request(method, url, **kwargs)  # type: ignore[arg-type]
        except httpx.TimeoutException:
            raise EditorUnavailable(
                f"editor at {self.base_url} did not answer within {self._http.timeout.read:g} s",
                "editor_timeout",
            ) from None
        except httpx.HTTPError as exc:
            raise EditorUnavailable(
                f"editor at {self.base_url} unreachable: {type(exc).__name__}: {exc}", "editor_down"
            ) from None

    def _raise_for_status(self, response: httpx.Response, *, ok: int) -> None:
        """Map an editor error to EditorUnavailable, the same kinds on every path."""
        if response.status_code != ok:
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

    def _edited_image(self, content: bytes) -> bytes:
        try:
            result = EditResponse.model_validate_json(content)
        except ValueError as exc:
            raise EditorUnavailable(f"editor sent an unusable response: {exc}", "editor_error") from None
        return self._image_of(result)

    def _image_of(self, result: EditResponse) -> bytes:
        try:
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
        if self._cancels:  # let abandoned jobs' DELETEs go out before the connections close
            await asyncio.gather(*self._cancels, return_exceptions=True)
        await self._http.aclose()
