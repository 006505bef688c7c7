"""An async client for ComfyUI's HTTP API. Every failure becomes one of the errors in errors.py.

Built on aiohttp rather than httpx: the bridge makes its requests on the event loop that relays
progress to the browsers, and a request cost that loop about 0.8 ms of CPU through httpx against
0.1 ms through aiohttp (which the emulator already uses as its server).
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .errors import AnswerLost, BackendUnreachable, ComfyError, NotFound, ProtocolError, WorkflowRejected
from .events import HistoryEntry, OutputFile, parse_history

CONNECT_SECONDS = 3.0  # name lookup, a free connection and the TCP connect
DEFAULT_TIMEOUT = 10.0  # seconds without a byte from ComfyUI
VIEW_TIMEOUT = 60.0  # large outputs (videos) take a while


@dataclass(frozen=True, slots=True)
class Answer:
    """ComfyUI's answer to one request, read whole."""

    method: str
    path: str
    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as error:
            raise ProtocolError(
                f"ComfyUI answered {self.method} {self.path} with something that is not JSON."
            ) from error


@dataclass(frozen=True, slots=True)
class QueuedPrompt:
    prompt_id: str
    number: int


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    running: tuple[str, ...]
    pending: tuple[str, ...]
    client_ids: Mapping[str, str] = field(default_factory=dict)  # prompt id → who queued it
    extra_data: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # as POSTed, by prompt id

    def position(self, prompt_id: str) -> int | None:
        """0 while running, 1.. while waiting, None when not in the queue."""
        if prompt_id in self.running:
            return 0
        if prompt_id in self.pending:
            return self.pending.index(prompt_id) + 1
        return None

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.running or prompt_id in self.pending


@dataclass(frozen=True, slots=True)
class UploadedImage:
    name: str
    subfolder: str
    type: str

    @property
    def load_image_value(self) -> str:
        """What LoadImage's `image` input takes to find this file."""
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


class ComfyClient:
    """`async with ComfyClient("http://127.0.0.1:8188") as comfy: await comfy.queue()`."""

    def __init__(
        self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT, view_timeout: float = VIEW_TIMEOUT
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.view_timeout = view_timeout
        self._session: aiohttp.ClientSession | None = None  # made on the event loop, at first use

    async def __aenter__(self) -> ComfyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # ComfyUI is ours to talk to: no proxy from the environment, no cookies kept.
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                # Idle connections are dropped before a proxy in front of ComfyUI would close them
                # (a POST on a connection closing just then fails; nothing retries it).
                connector=aiohttp.TCPConnector(keepalive_timeout=4),
            )
        return self._session

    async def _request(
        self, method: str, path: str, *, missing: str = "", read_seconds: float | None = None, **kwargs: Any
    ) -> Answer:
        """The answer, or the typed error for a failure; `missing` words a 404."""
        # No byte for this long is a ComfyUI that does not answer; a long answer that keeps coming
        # (a big output) is not cut short.
        read = self.timeout if read_seconds is None else read_seconds
        limits = aiohttp.ClientTimeout(total=None, connect=CONNECT_SECONDS, sock_read=read)
        try:
            async with self._http().request(
                method, self.base_url + path, timeout=limits, **kwargs
            ) as response:
                answer = Answer(method, path, response.status, await response.read())
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            # No connection, so the request never went out.
            raise BackendUnreachable(f"ComfyUI at {self.base_url} is unreachable: {error}.") from error
        except TimeoutError as error:
            raise AnswerLost(
                f"ComfyUI at {self.base_url} did not answer in time ({method} {path})."
            ) from error
        except aiohttp.ClientError as error:
            raise AnswerLost(f"ComfyUI at {self.base_url} is unreachable: {error}.") from error
        if answer.status >= 500:  # ComfyUI's own failure, or a proxy's that gave up waiting
            raise AnswerLost(f"ComfyUI at {self.base_url} failed on {method} {path} (HTTP {answer.status}).")
        if answer.status == 404:
            raise NotFound(missing or f"ComfyUI has no {path}.")
        return answer

    async def _get_json(self, path: str, **params: Any) -> Any:
        answer = await self._request("GET", path, params=params or None)
        if answer.status != 200:
            raise ProtocolError(f"ComfyUI answered GET {path} with HTTP {answer.status}.")
        return answer.json()

    async def _post(self, path: str, payload: Mapping[str, Any]) -> None:
        answer = await self._request("POST", path, json=payload)
        if answer.status != 200:
            raise ProtocolError(f"ComfyUI answered POST {path} with HTTP {answer.status}.")

    async def queue_prompt(
        self,
        workflow: Mapping[str, Any],
        *,
        prompt_id: str,
        client_id: str,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
    ) -> QueuedPrompt:
        """Queue `workflow` under our own `prompt_id`; WorkflowRejected if ComfyUI refuses it."""
        payload: dict[str, Any] = {"prompt": workflow, "client_id": client_id, "prompt_id": prompt_id}
        if front:
            payload["front"] = True
        if extra_data:
            payload["extra_data"] = dict(extra_data)
        answer = await self._request("POST", "/prompt", json=payload)
        if answer.status == 400:
            body = answer.json()
            if not isinstance(body, dict):
                raise ProtocolError("ComfyUI refused the workflow with an answer that is not a JSON object.")
            raise WorkflowRejected(body.get("error") or {}, body.get("node_errors") or {})
        if answer.status != 200:
            raise ProtocolError(f"ComfyUI answered POST /prompt with HTTP {answer.status}.")
        body = answer.json()
        try:
            return QueuedPrompt(prompt_id=str(body["prompt_id"]), number=int(body["number"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ProtocolError(f"ComfyUI's answer to POST /prompt lacks {error}.") from error

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        """The finished prompt's entry; None while it is queued, running, or unknown."""
        return parse_history(prompt_id, await self._get_json(f"/history/{prompt_id}"))

    async def queue(self) -> QueueSnapshot:
        body = await self._get_json("/queue")
        try:
            items = [*body["queue_running"], *body["queue_pending"]]
            return QueueSnapshot(
                running=tuple(str(item[1]) for item in body["queue_running"]),
                pending=tuple(str(item[1]) for item in body["queue_pending"]),
                client_ids={
                    str(item[1]): str(item[3].get("client_id") or "")
                    for item in items
                    if len(item) > 3 and isinstance(item[3], dict)
                },
                extra_data={
                    str(item[1]): item[3] for item in items if len(item) > 3 and isinstance(item[3], dict)
                },
            )
        except (KeyError, TypeError, IndexError) as error:
            raise ProtocolError(f"ComfyUI's /queue answer is malformed: {error}") from error

    async def queue_remaining(self) -> int:
        body = await self._get_json("/prompt")
        try:
            return int(body["exec_info"]["queue_remaining"])
        except (KeyError, TypeError, ValueError) as error:
            raise ProtocolError(f"ComfyUI's /prompt answer is malformed: {error}") from error

    async def view(self, file: OutputFile) -> bytes:
        """The bytes of an output file, exactly as ComfyUI stored them."""
        params = {"filename": file.filename, "subfolder": file.subfolder, "type": file.type}
        missing = f"ComfyUI has no file {file.filename!r} in its {file.type} folder."
        answer = await self._request(
            "GET", "/view", params=params, read_seconds=self.view_timeout, missing=missing
        )
        if answer.status != 200:  # 400: a name that points outside ComfyUI's folders
            raise NotFound(missing)
        return answer.body

    async def upload_image(
        self,
        data: bytes,
        filename: str,
        *,
        subfolder: str = "",
        overwrite: bool = False,
        image_type: str = "input",
    ) -> UploadedImage:
        """Store an image in ComfyUI's input (or temp/output) folder, for LoadImage to read.

        ComfyUI keeps the name when the same bytes are already there and renames ("x (1).png")
        when other bytes are; use the answer's `load_image_value`, never `filename`.
        """
        form = aiohttp.FormData(quote_fields=False)  # the name as it is: ComfyUI does not unquote it
        form.add_field("type", image_type)
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "true" if overwrite else "false")
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        form.add_field("image", data, filename=filename, content_type=content_type)
        answer = await self._request("POST", "/upload/image", data=form)
        if answer.status != 200:
            # ComfyUI answers 400 with an empty body, e.g. for a subfolder outside its input folder.
            raise ComfyError(f"ComfyUI refused the upload of {filename!r} (HTTP {answer.status}).")
        body = answer.json()
        try:
            return UploadedImage(
                name=body["name"], subfolder=body.get("subfolder", ""), type=body.get("type", "input")
            )
        except (KeyError, TypeError) as error:
            raise ProtocolError(f"ComfyUI's upload answer lacks {error}.") from error

    async def interrupt(self, prompt_id: str) -> None:
        """Stop `prompt_id` if it is the one running; a no-op otherwise.

        Always by id: a bare /interrupt stops whatever runs, someone else's job included.
        """
        if not prompt_id:
            raise ValueError("interrupt needs the prompt_id of the job to stop")
        await self._post("/interrupt", {"prompt_id": prompt_id})

    async def delete_from_queue(self, prompt_ids: Iterable[str]) -> None:
        """Drop waiting prompts; ComfyUI ignores running and unknown ids."""
        await self._post("/queue", {"delete": list(prompt_ids)})

    async def delete_history(self, prompt_ids: Iterable[str]) -> None:
        await self._post("/history", {"delete": list(prompt_ids)})

    async def object_info(self, node: str | None = None) -> dict[str, Any]:
        """Every node class's inputs and outputs, or one class's (NotFound if unknown)."""
        body = await self._get_json(f"/object_info/{node}" if node else "/object_info")
        if not isinstance(body, dict):
            raise ProtocolError("ComfyUI's /object_info answer is not a JSON object.")
        if node and not body:
            raise NotFound(f"ComfyUI has no node class {node!r}.")
        return body

    async def system_stats(self) -> dict[str, Any]:
        body = await self._get_json("/system_stats")
        if not isinstance(body, dict) or "system" not in body:
            raise ProtocolError("ComfyUI's /system_stats answer lacks 'system'.")
        return body
