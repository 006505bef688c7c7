"""The bridge: drives one ComfyUI backend from the site's job queue, and relays what it does.

One websocket per backend with a fixed client id. Queued prompts are handed to ComfyUI so that
one job always waits in ComfyUI's own queue behind the running one (the GPU never idles between
jobs); every event updates the Prompt state machine and is rendered once into an HTML fragment
sent to the owner's channel-layer group. The database is the source of truth: after any
reconnect, and when a running job falls silent, jobs are reconciled with /queue and /history.

Database and file work runs in worker threads (sync_to_async); the event loop only waits.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from channels.layers import get_channel_layer
from django.db import DatabaseError, connections
from django.template.loader import render_to_string
from django.utils import timezone

from generator import backends, jobs
from generator.live import (
    BRIDGE_GROUP,
    LiveState,
    Relay,
    preview_event,
    progress_event,
    render_progress,
    save_live_state,
    user_group,
)
from generator.models import Backend, Prompt
from generator.scheduling import site_queue
from generator.workflows import Workflow, WorkflowError, all_workflows, get_workflow

from .client import ComfyClient
from .connection import ComfyConnection, Connected, Disconnected
from .errors import BackendUnreachable, ComfyError, NotFound, ProtocolError, WorkflowRejected
from .events import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    HistoryEntry,
    Preview,
    Progress,
)

logger = logging.getLogger(__name__)

S = Prompt.Status
P = ParamSpec("P")
R = TypeVar("R")


def db(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`func` run on the bridge's database thread (see Bridge.run).

    The bridge keeps its connection for as long as it runs; one that failed (the database
    restarted) is dropped, so the next call opens a new one instead of failing forever.
    """

    @functools.wraps(func)
    def reconnecting(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except DatabaseError:
            if not all(c.connection is None or c.is_usable() for c in connections.all(initialized_only=True)):
                connections.close_all()
            raise

    return sync_to_async(reconnecting)


def client_id_for(url: str) -> str:
    """The fixed client id of the bridge driving `url`: whichever process drives it, ComfyUI
    sends the events of the jobs queued there to the same id."""
    return f"comfysite-{uuid.uuid5(uuid.NAMESPACE_URL, url.rstrip('/')).hex[:12]}"


@dataclass
class ActiveJob:
    """A job this bridge has handed to ComfyUI, with what its events have told us so far."""

    job: jobs.Job
    node_count: int
    node_titles: dict[str, str]
    done_nodes: set[str] = field(default_factory=set)
    live: LiveState = field(default_factory=LiveState)
    last_event: float = field(default_factory=time.monotonic)
    last_progress_sent: float = 0.0
    last_preview_sent: float = 0.0
    last_live_saved: float = 0.0
    started: bool = False
    verdict_seen: bool = False  # ComfyUI said it ended; its final card follows the imports
    outputs_missing: bool = False  # an output could not be fetched: not succeeded yet
    current_node: str = ""

    @property
    def pk(self) -> int:
        return self.job.pk

    def overall_progress(self) -> float:
        step_share = self.live.step / self.live.steps if self.live.steps else 0.0
        return min(1.0, (len(self.done_nodes) + step_share) / max(1, self.node_count))


@dataclass
class BridgeSettings:
    depth: int = 2  # our jobs inside ComfyUI at once: one running, one waiting
    poll_seconds: float = 2.0  # safety net; new jobs normally wake the dispatcher at once
    silence_seconds: float = 120.0  # a running job with no event this long is reconciled
    preview_interval: float = 0.25  # at most four live previews a second per job
    progress_interval: float = 0.05
    live_save_interval: float = 0.5  # a tab that connects mid-job is shown a state this fresh
    positions_interval: float = 1.0  # queue places are told at most once a second
    health_seconds: float = 5.0  # /system_stats this often; the row's checked_at is our heartbeat
    dead_seconds: float = 60.0  # unreachable this long: its jobs go back to the queue for others


class Bridge:
    def __init__(
        self,
        url: str,
        *,
        label: str = "",
        weight: int = 1,
        is_demo: bool = False,
        client_id: str | None = None,
        settings: BridgeSettings | None = None,
        lease_owner: str = "",
        places_lock: asyncio.Lock | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.label = label
        self.weight = weight
        self.is_demo = is_demo
        self.lease_owner = lease_owner  # the bridge process holding this backend, if leased
        self.client_id = client_id or client_id_for(self.url)
        self.settings = settings or BridgeSettings()
        self.client = ComfyClient(self.url)
        self.connection = ComfyConnection(self.url, self.client_id)
        self.active: dict[str, ActiveJob] = {}  # by ComfyUI prompt id
        self.connected = asyncio.Event()
        self.wake = asyncio.Event()
        self.running_prompt_id: str | None = None
        # Held while a job is between "claimed" and "POSTed", and while reconciling: a job in
        # that gap is in neither ComfyUI's queue nor its history, yet is not lost.
        self.submitting = asyncio.Lock()
        self.layer = get_channel_layer()
        self._tasks: list[asyncio.Task] = []
        self._state_work: asyncio.Queue[Callable[[], Awaitable[Any]]] = asyncio.Queue()
        self._outbox: collections.deque[Relay] = collections.deque()
        self._outbox_filled = asyncio.Event()
        self._sending = asyncio.Lock()  # one sender at a time keeps a user's fragments in order
        self.positions_moved = asyncio.Event()
        # Shared by the bridges of a process: the queue and the places last told are the site's,
        # and two bridges working them out at once both told each move.
        self.places_lock = places_lock or asyncio.Lock()
        self._healthy: list[Backend] = []
        self._healthy_read_at = -1e9

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled.

        The bridge's database work runs on a thread (and connection) of its own, so it never
        waits behind the web views' work on the thread Django's async views share.
        """
        database_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-db")
        try:
            async with ThreadSensitiveContext(executor=database_thread):
                try:
                    await self._run()
                finally:
                    with contextlib.suppress(Exception):
                        await db(connections.close_all)()
        finally:
            database_thread.shutdown(wait=False)

    async def _run(self) -> None:
        await db(self._save_backend)(online=False, status_message="connecting")
        self._tasks = [
            asyncio.create_task(self._consume_events(), name=f"bridge-events {self.url}"),
            asyncio.create_task(self._run_state_work(), name=f"bridge-state {self.url}"),
            asyncio.create_task(self._run_outbox(), name=f"bridge-outbox {self.url}"),
            asyncio.create_task(self._dispatch(), name=f"bridge-dispatch {self.url}"),
            asyncio.create_task(self._watch_silence(), name=f"bridge-watchdog {self.url}"),
            asyncio.create_task(self._listen_control(), name=f"bridge-control {self.url}"),
            asyncio.create_task(self._publish_positions(), name=f"bridge-positions {self.url}"),
            asyncio.create_task(self._check_health(), name=f"bridge-health {self.url}"),
        ]
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.connection.close()
            await self.client.aclose()
            with contextlib.suppress(Exception):
                await db(self._save_backend)(online=False, status_message="bridge stopped")

    # -- ComfyUI events --------------------------------------------------------------------

    async def _consume_events(self) -> None:
        async for event in self.connection.events():
            try:
                self.handle_event(event)
            except Exception:  # one bad event must not stop the bridge
                logger.exception("Bridge %s: failed to handle %r", self.url, type(event).__name__)
            # What the event relayed goes out now, not at the outbox task's next turn: with the
            # in-memory layer it reaches the tabs' consumers without another pass of the loop,
            # each of which can wait for the GIL behind a web thread.
            if await self._send_relayed():
                # ComfyUI's messages come in bursts the socket hands over without pausing; yield
                # so the tabs' consumers deliver what was just relayed before the rest of the
                # burst is worked through. Only then: a yield for each of a burst's messages
                # made the last of them wait a pass of the loop per message before it.
                await asyncio.sleep(0)

    def handle_event(self, event: Any) -> None:
        """Relay what can be relayed at once; queue what touches the database, in order.

        Progress, node changes and previews go to the browser straight from memory, so they
        never wait behind a database write; status changes and imports run one by one on
        the state worker, in the order ComfyUI reported them.
        """
        if isinstance(event, Connected):
            self._later(self._on_connected)
            return
        if isinstance(event, Disconnected):
            self.connected.clear()
            self._later(
                lambda: db(self._save_backend)(
                    online=False, status_message=f"connection lost: {event.reason}"
                )
            )
            return
        active = self._active_for(event)
        if active is None:
            return
        active.last_event = time.monotonic()
        if isinstance(event, ExecutionStart):
            self.running_prompt_id = active.job.comfy_prompt_id
            active.started = True
            self._later(lambda: self._on_start(active))
        elif isinstance(event, ExecutionCached):
            active.done_nodes.update(event.nodes)
        elif isinstance(event, Executing):
            self._on_executing(active, event)
        elif isinstance(event, Progress):
            active.live.step, active.live.steps = event.value, event.max
            self._relay_progress(active, force=event.value >= event.max)
        elif isinstance(event, Preview):
            self._on_preview(active, event)
        elif isinstance(event, Executed):
            self._later(lambda: self._import_outputs(active, event.node, event.files))
        elif isinstance(event, ExecutionSuccess):
            active.verdict_seen = True
            self._later(lambda: self._finish(active, S.SUCCEEDED))
        elif isinstance(event, ExecutionError):
            workflow = self._workflow(active)
            error = event.describe(workflow.node_title(event.node_id) if workflow else None)
            self._later(lambda: self._finish(active, S.FAILED, error=error))
        elif isinstance(event, ExecutionInterrupted):
            self._later(lambda: self._on_interrupted(active))

    def _later(self, work: Callable[[], Awaitable[Any]]) -> None:
        self._state_work.put_nowait(work)

    async def _run_state_work(self) -> None:
        while True:
            work = await self._state_work.get()
            try:
                await work()
            except Exception:
                logger.exception("Bridge %s: state update failed", self.url)

    def _active_for(self, event: Any) -> ActiveJob | None:
        prompt_id = getattr(event, "prompt_id", None)
        if prompt_id is None and isinstance(event, Preview):
            prompt_id = self.running_prompt_id  # type-1 previews do not say whose they are
        return self.active.get(prompt_id) if prompt_id else None

    async def _on_connected(self) -> None:
        await self._refresh_backend_info()
        await self._load_jobs_from_database()
        await self.reconcile(list(self.active.values()))
        await self._drop_stale_copies()
        # Only now may new jobs go out: reconciling must not mistake a job being submitted
        # for one ComfyUI lost.
        self.connected.set()
        self.wake.set()

    async def _on_start(self, active: ActiveJob) -> None:
        self._relay(await db(jobs.advance)(active.pk, S.RUNNING, active.live))

    def _on_executing(self, active: ActiveJob, event: Executing) -> None:
        if event.is_end:
            if self.running_prompt_id == active.job.comfy_prompt_id:
                self.running_prompt_id = None
            self._later(lambda: self._on_end(active))
            return
        if active.current_node:
            active.done_nodes.add(active.current_node)
        active.current_node = event.node or ""
        active.live.node_title = active.node_titles.get(active.current_node, f"node {active.current_node}")
        active.live.step = active.live.steps = 0
        self._relay_progress(active, force=True)

    async def _on_end(self, active: ActiveJob) -> None:
        if active.job.comfy_prompt_id in self.active:  # it ended without a verdict we saw
            await self.reconcile([active])

    def _on_preview(self, active: ActiveJob, event: Preview) -> None:
        now = time.monotonic()
        if now - active.last_preview_sent < self.settings.preview_interval:
            return
        active.last_preview_sent = now
        image_b64 = base64.b64encode(event.image).decode()
        html = render_to_string(
            "generator/partials/job_preview.html",
            {"prompt_id": active.pk, "mime_type": event.mime_type, "image_b64": image_b64},
        )
        self._relay(Relay(active.job.owner_id, html, (preview_event(active.pk, event.mime_type, image_b64),)))

    async def _on_interrupted(self, active: ActiveJob) -> None:
        job = await db(jobs.get_job)(active.pk)
        if job.cancel_requested:
            await self._finish(active, S.CANCELLED, error="Cancelled while it ran.")
        else:
            await self._finish(active, S.FAILED, error="Stopped on the ComfyUI server before it finished.")

    async def _import_outputs(self, active: ActiveJob, node_id: str, files: Any) -> None:
        kept = [f for f in files if f.type == "output"]  # temp/preview outputs are not kept
        stored = await db(jobs.stored_output_indexes)(active.pk, node_id) if kept else set()
        for index, output in enumerate(kept):
            if index in stored:
                continue
            try:
                data = await self.client.view(output)
            except NotFound:
                active.outputs_missing = True  # so the success that follows changes nothing
                error = f"ComfyUI finished this job but no longer has its output {output.filename}."
                await self._finish(active, S.FAILED, error=error)
                return
            except ComfyError as error:
                # Not succeeded without its images: settled again from /history once the
                # backend answers, or run elsewhere if it never does.
                logger.warning("Bridge %s: job %s: output not fetched: %s", self.url, active.pk, error)
                active.outputs_missing = True
                return
            await db(jobs.store_output)(active.job, node_id, index, output.filename, data)
        if kept and not active.verdict_seen:  # else the final card, next, shows them
            await self._send_card(active)

    async def _finish(self, active: ActiveJob, status: str, *, error: str = "") -> None:
        if status == S.SUCCEEDED and active.outputs_missing:
            active.outputs_missing = active.verdict_seen = False
            active.last_event = 0.0  # the watchdog settles it from /history at its next round
            return
        changes = {"error": error} if error else {}
        self.active.pop(active.job.comfy_prompt_id, None)
        if self.running_prompt_id == active.job.comfy_prompt_id:
            self.running_prompt_id = None
        self.wake.set()  # the next job goes out while this one's card is rendered
        self._relay(await db(jobs.advance)(active.pk, status, active.live, **changes))

    # -- handing jobs to ComfyUI -----------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.settings.poll_seconds)
            self.wake.clear()
            if not self.connected.is_set():
                continue
            try:
                await self._fill_backend_queue()
            except Exception:
                logger.exception("Bridge %s: dispatch failed", self.url)

    async def _fill_backend_queue(self) -> None:
        submitted_any = False
        while self.connected.is_set() and len(self.active) < self.settings.depth:
            async with self.submitting:
                claimed = await db(self._claim_next_job)()
                if claimed is None:
                    break
                submitted = await self._submit(claimed)
            if not submitted:
                break
            submitted_any = True
            if not claimed.others_waiting:  # the queue is empty: a new job will wake us
                break
        if submitted_any:
            self.positions_moved.set()

    def _claim_next_job(self) -> jobs.Submission | None:
        queue = site_queue()
        if not queue.order:  # the usual answer once the queue is empty: one query
            return None
        peers, load = self._healthy_backends(), queue.per_backend
        if not backends.has_least_work(self.url, depth=self.settings.depth, peers=peers, load=load):
            return None  # another backend with room has less to do: it takes the next job
        return jobs.claim_next_job(self.url, on_demo_backend=self.is_demo, queue=queue)

    def _healthy_backends(self) -> list[Backend]:
        """Read at most once a second: bridges report their health every few seconds anyway."""
        now = time.monotonic()
        if now - self._healthy_read_at >= 1.0:
            self._healthy = backends.healthy_backends(fresh_seconds=3 * self.settings.health_seconds)
            self._healthy_read_at = now
        return self._healthy

    async def _submit(self, submission: jobs.Submission) -> bool:
        job, graph = submission.job, submission.graph
        active = self._track(job)
        try:
            if submission.image is not None:
                uploaded = await self.client.upload_image(
                    submission.image, f"comfysite-job{job.pk}.png", subfolder="comfysite", overwrite=True
                )
                graph = submission.with_uploaded_image(uploaded.load_image_value)
            await self.client.queue_prompt(graph, prompt_id=job.comfy_prompt_id, client_id=self.client_id)
        except WorkflowRejected as rejection:
            workflow = self._workflow(active)
            problems = rejection.describe(graph) if workflow else [str(rejection)]
            await self._finish(active, S.FAILED, error="ComfyUI refused this job:\n" + "\n".join(problems))
            return True
        except (BackendUnreachable, ProtocolError) as error:
            self.active.pop(job.comfy_prompt_id, None)
            await db(jobs.unsubmit)(job.pk)
            await db(self._save_backend)(online=False, status_message=str(error))
            return False
        await self._send_card(active)
        return True

    def _track(self, job: jobs.Job) -> ActiveJob:
        workflow = self._workflow_named(job.workflow)
        titles = {node_id: workflow.node_title(node_id) for node_id in workflow.graph} if workflow else {}
        active = ActiveJob(job=job, node_count=len(titles) or 1, node_titles=titles)
        self.active[job.comfy_prompt_id] = active
        return active

    # -- reconciliation --------------------------------------------------------------------

    async def _load_jobs_from_database(self) -> None:
        for job in await db(jobs.jobs_on_backend)(self.url):
            if job.comfy_prompt_id not in self.active:
                self._track(job)

    async def reconcile(self, actives: list[ActiveJob]) -> None:
        """Settle each job with what ComfyUI says of it: waiting, done, failed, or lost."""
        if not actives:
            return
        async with self.submitting:
            await self._reconcile(actives)

    async def _reconcile(self, actives: list[ActiveJob]) -> None:
        try:
            queue = await self.client.queue()
        except ComfyError as error:
            logger.warning("Bridge %s: cannot reconcile now: %s", self.url, error)
            return
        for active in actives:
            prompt_id = active.job.comfy_prompt_id
            active.last_event = time.monotonic()
            if prompt_id in queue.running:
                self.running_prompt_id = prompt_id
                if not active.started:
                    active.started = True
                    await db(jobs.transition)(active.pk, S.RUNNING)
                continue
            if prompt_id in queue.pending:
                continue
            entry = await self.client.history(prompt_id)
            if entry is None:
                await self._lost(active)
            else:
                await self._settle_from_history(active, entry)

    async def _settle_from_history(self, active: ActiveJob, entry: HistoryEntry) -> None:
        active.verdict_seen = True
        if entry.status_str == "success" and entry.completed:
            for node_id, files in entry.outputs.items():
                await self._import_outputs(active, node_id, files)
            await self._finish(active, S.SUCCEEDED)
        elif isinstance(entry.failure, ExecutionInterrupted):
            await self._on_interrupted(active)
        elif isinstance(entry.failure, ExecutionError):
            workflow = self._workflow(active)
            title = workflow.node_title(entry.failure.node_id) if workflow else None
            await self._finish(active, S.FAILED, error=entry.failure.describe(title))
        else:
            await self._finish(active, S.FAILED, error="ComfyUI reported an error but gave no details.")

    async def _lost(self, active: ActiveJob) -> None:
        """Neither queued nor in history: the backend restarted. One more try, then failed."""
        self.active.pop(active.job.comfy_prompt_id, None)
        status = await db(jobs.requeue_or_fail)(
            active.pk, "The ComfyUI backend restarted and lost this job twice; please try again."
        )
        logger.warning("Bridge %s: job %s was lost by ComfyUI; now %s", self.url, active.pk, status)
        await self._send_card(active)
        self.wake.set()

    async def _drop_stale_copies(self) -> None:
        """Delete from ComfyUI's queue what we queued there but no longer expect from it: jobs
        moved to another backend while this one was unreachable must not run twice."""
        try:
            queue = await self.client.queue()
            expected = set(self.active)
            stale = [p for p, c in queue.client_ids.items() if c == self.client_id and p not in expected]
            if not stale:
                return
            logger.warning("Bridge %s: removing %d stale job copies from ComfyUI", self.url, len(stale))
            await self.client.delete_from_queue(stale)
            for prompt_id in set(stale) & set(queue.running):
                await self.client.interrupt(prompt_id)
        except ComfyError as error:
            logger.warning("Bridge %s: cannot check for stale job copies: %s", self.url, error)

    async def _check_health(self) -> None:
        """Heartbeat and health: /system_stats while connected; when the backend has been
        unreachable for `dead_seconds` (counted from the database, so a bridge taking over
        goes on counting), its jobs go back to the queue for the other backends."""
        while True:
            await asyncio.sleep(self.settings.health_seconds)
            if self.connected.is_set():
                try:
                    stats = await self.client.system_stats()
                except ComfyError as error:
                    await db(self._save_backend)(online=False, status_message=f"health check: {error}")
                else:
                    await db(self._save_backend)(online=True, status_message="", system_stats=stats)
                continue
            offline_for = await db(self._offline_seconds)()
            if offline_for is not None and offline_for >= self.settings.dead_seconds:
                self._later(self._give_up_jobs)

    async def _give_up_jobs(self) -> None:
        if self.connected.is_set():
            return  # it came back meanwhile: reconciling handles its jobs
        reason = "Its ComfyUI backend stopped answering, twice; please try again."
        moved = await db(jobs.release_jobs_on)(self.url, reason)
        if not moved:
            return
        logger.warning("Bridge %s: unreachable; %d jobs go back to the queue", self.url, len(moved))
        self.active.clear()
        self.running_prompt_id = None
        for relay in await db(lambda: [jobs.card_html(pk) for pk in moved])():
            self._relay(relay)
        await self.layer.group_send(BRIDGE_GROUP, {"type": "wake"})

    def _offline_seconds(self) -> float | None:
        since = Backend.objects.filter(url=self.url).values_list("offline_since", flat=True).first()
        return (timezone.now() - since).total_seconds() if since else None

    async def _watch_silence(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.settings.silence_seconds / 2))
            if not self.connected.is_set():
                continue
            now = time.monotonic()
            silent = [a for a in self.active.values() if now - a.last_event > self.settings.silence_seconds]
            if silent:
                self._later(functools.partial(self.reconcile, silent))

    # -- control messages from the web processes -------------------------------------------

    async def _listen_control(self) -> None:
        channel = await self.layer.new_channel()
        await self.layer.group_add(BRIDGE_GROUP, channel)
        try:
            while True:
                message = await self.layer.receive(channel)
                if message.get("type") == "wake":
                    self.wake.set()
                elif message.get("type") == "cancel.job":
                    self._later(functools.partial(self.cancel, int(message["prompt"])))
        finally:
            await self.layer.group_discard(BRIDGE_GROUP, channel)

    async def cancel(self, pk: int) -> None:
        """Waiting in ComfyUI: delete it from the queue. Running: interrupt it, by its id only."""
        active = next((a for a in self.active.values() if a.pk == pk), None)
        if active is None:
            return
        active.live.cancelling = True
        prompt_id = active.job.comfy_prompt_id
        try:
            if prompt_id == self.running_prompt_id:
                await self.client.interrupt(prompt_id)
            else:
                await self.client.delete_from_queue([prompt_id])
                queue = await self.client.queue()
                if prompt_id in queue.running:
                    await self.client.interrupt(prompt_id)
                elif prompt_id not in queue.pending:
                    await self._finish(active, S.CANCELLED, error="Cancelled before it started.")
                    return
        except ComfyError as error:
            logger.warning("Bridge %s: cancel of job %s failed: %s", self.url, pk, error)
        self._relay_progress(active, force=True)

    # -- helpers ---------------------------------------------------------------------------

    def _workflow(self, active: ActiveJob) -> Workflow | None:
        return self._workflow_named(active.job.workflow)

    @staticmethod
    def _workflow_named(name: str) -> Workflow | None:
        try:
            return get_workflow(name)
        except WorkflowError:
            return None

    async def _send_card(self, active: ActiveJob) -> None:
        self._relay(await db(jobs.card_html)(active.pk, active.live))

    def _relay(self, relay: Relay) -> None:
        """Queue a fragment for the owner's tabs; fragments go out in the order queued."""
        self._outbox.append(relay)
        self._outbox_filled.set()

    async def _send_relayed(self) -> bool:
        """Send what is queued; whether there was anything."""
        if not self._outbox:
            return False
        async with self._sending:
            while self._outbox:
                relay = self._outbox.popleft()
                try:
                    await self.layer.group_send(user_group(relay.owner_id), relay.message())
                except Exception:
                    logger.exception("Bridge %s: relay to user %s failed", self.url, relay.owner_id)
        return True

    async def _run_outbox(self) -> None:
        """Sends what the other tasks relay (cards, queue places); the event consumer sends its own."""
        while True:
            await self._outbox_filled.wait()
            self._outbox_filled.clear()
            await self._send_relayed()

    def _relay_progress(self, active: ActiveJob, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - active.last_progress_sent < self.settings.progress_interval:
            return
        active.last_progress_sent = now
        active.live.progress = active.overall_progress()
        if now - active.last_live_saved >= self.settings.live_save_interval:
            # For tabs that connect later; the final state is saved with the job's last card.
            # The cache may be Redis: stored off the event loop, in event order.
            active.last_live_saved = now
            self._later(functools.partial(db(save_live_state), active.pk, dataclasses.replace(active.live)))
        # Rendered from what the bridge knows: no database read on the hottest path.
        status = S.RUNNING if active.started else S.SUBMITTED
        html = render_progress(Prompt(pk=active.pk, status=status), live=active.live)
        self._relay(Relay(active.job.owner_id, html, (progress_event(active.pk, status, active.live),)))

    async def _publish_positions(self) -> None:
        """Tell waiting jobs their new place when the queue moves; coalesced, since with many
        jobs waiting each move changes every place, and those fragments must not crowd out
        the running jobs' progress."""
        while True:
            await self.positions_moved.wait()
            self.positions_moved.clear()
            try:
                async with self.places_lock:
                    changed = await db(jobs.moved_queue_places)()
            except Exception:
                logger.exception("Bridge %s: queue places not sent", self.url)
            else:
                for relay in changed:
                    self._relay(relay)
            await asyncio.sleep(self.settings.positions_interval)

    async def _refresh_backend_info(self) -> None:
        info = stats = None
        try:
            info = await self.client.object_info()
            stats = await self.client.system_stats()
        except ComfyError as error:
            logger.warning("Bridge %s: /object_info or /system_stats failed: %s", self.url, error)
        await db(self._save_backend)(online=True, status_message="", object_info=info, system_stats=stats)

    def _save_backend(
        self,
        *,
        online: bool,
        status_message: str,
        object_info: dict | None = None,
        system_stats: dict | None = None,
    ) -> None:
        now = timezone.now()
        fields: dict[str, Any] = {
            "online": online,
            "status_message": status_message[:300],
            "is_demo": self.is_demo,
            "label": self.label,
            "weight": self.weight,
            "checked_at": now,
        }
        if online:
            fields["offline_since"] = None
        if object_info is not None:
            used = set().union(*(w.node_classes for w in all_workflows().values()))
            fields["object_info"] = {name: spec for name, spec in object_info.items() if name in used}
            fields["node_classes"] = sorted(object_info)
        if system_stats is not None:
            fields["system_stats"] = system_stats
        row = Backend.objects.filter(url=self.url)
        if self.lease_owner:  # a process that lost its lease must not overwrite the new owner's news
            row = row.filter(lease_owner=self.lease_owner)
            row.update(**fields)
        else:
            Backend.objects.update_or_create(url=self.url, defaults=fields)
        if not online:
            row.filter(offline_since__isnull=True).update(offline_since=now)
