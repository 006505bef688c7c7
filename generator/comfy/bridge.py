"""The bridge: drives one ComfyUI backend from the site's job queue, and relays what it does.

One websocket per backend. Several installations may share one ComfyUI (staging and production,
a developer's checkout): each has its own identity (Installation), which names our websocket
(with this process's part: ComfyUI keeps one socket per client id), tags every job we queue
(extra_data) and names the images we upload, and a bridge only ever deletes, interrupts or
settles jobs its installation queued. Queued prompts are handed to ComfyUI so that
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
import itertools
import json
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
from redis.exceptions import RedisError

from comfysite.runtime import name_os_thread
from generator import backends, estimates, jobs
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
from .errors import AnswerLost, BackendUnreachable, ComfyError, NotFound, ProtocolError, WorkflowRejected
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


# This process's part of its bridges' client ids: ComfyUI gives each client id one socket, and
# when a second socket under the same id comes and goes, the first one is left open but deaf.
PROCESS_TAG = uuid.uuid4().hex[:8]
EXTRA_DATA_KEY = "comfysite"  # our tag in each job's extra_data: {"installation", "job"}


def client_id_for(installation: str, url: str, process: str = PROCESS_TAG) -> str:
    """The websocket client id of this process's bridge to `url` for `installation`: unique to
    each (installation, process, backend), so no other socket ever takes its events."""
    backend = uuid.uuid5(uuid.NAMESPACE_URL, url.rstrip("/")).hex[:6]
    return f"comfysite-{installation[:12]}-{process}-{backend}"


def installation_of(extra_data: Any) -> str | None:
    """The installation that queued a job, from its extra_data as ComfyUI's /queue shows it."""
    tag = extra_data.get(EXTRA_DATA_KEY) if isinstance(extra_data, dict) else None
    installation = tag.get("installation") if isinstance(tag, dict) else None
    return installation if isinstance(installation, str) else None


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
    # Whether its events come to our socket: not for a job queued by another process of this
    # installation (a bridge that died or handed the backend over), which is watched by polling.
    hears_events: bool = True
    # Since when its POST /prompt went unanswered (timed out, cut): ComfyUI may hold it all the
    # same, so it is looked for in /queue and /history before it is ever sent again.
    unconfirmed_since: float | None = None
    clock: estimates.StepClock = field(default_factory=estimates.StepClock)  # times the run
    rate: estimates.Rate | None = None  # this backend's measured speed for it, once it starts

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
    # Between one user's queue places and the next user's (see Bridge._send_places).
    places_spacing: float = 0.002
    health_seconds: float = 5.0  # /system_stats this often; the row's checked_at is our heartbeat
    dead_seconds: float = 60.0  # unreachable this long: its jobs go back to the queue for others
    object_info_seconds: float = 60.0  # /object_info again this often: models added show up
    request_seconds: float = 10.0  # an HTTP request without a byte from ComfyUI this long failed
    # Our socket must hear something this soon after we queue a job (ComfyUI tells every socket
    # it knows of each change of its queue); if not, ComfyUI forgot it: connect again.
    echo_seconds: float = 3.0
    # Nothing heard this long while /queue says our job runs: connect again. Doubled after each
    # such reconnect while nothing of our jobs is heard (a node that runs long and quietly).
    quiet_seconds: float = 5.0
    probe_seconds: float = 1.0  # how often the socket and the jobs we hear nothing of are checked
    # A job whose POST went unanswered and that ComfyUI does not show is sent again after this.
    unconfirmed_seconds: float = 30.0
    layer_retry_seconds: float = 1.0  # the channel layer failed (Redis restarting): listen again after


class Bridge:
    def __init__(
        self,
        url: str,
        *,
        label: str = "",
        weight: int = 1,
        is_demo: bool = False,
        installation: str | None = None,
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
        self.settings = settings or BridgeSettings()
        # Read from the database when the bridge starts, unless given.
        self.installation = installation or ""
        self._client_id = client_id or ""
        self.client = ComfyClient(self.url, timeout=self.settings.request_seconds)
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
        self._place_rounds = itertools.count(1)  # rounds of telling places (see jobs.places_looked_at)
        # Shared by the bridges of a process: the queue and the places last told are the site's,
        # and two bridges working them out at once both told each move.
        self.places_lock = places_lock or asyncio.Lock()
        self._healthy: list[Backend] = []
        self._healthy_read_at = -1e9
        # What the socket has heard: every message counts, ours or not.
        self.messages_heard = 0
        self.last_heard = time.monotonic()
        self._echo: tuple[int, float] | None = None  # (messages heard before a POST, deadline)
        self._quiet_reconnects = 0  # in a row, with nothing of our jobs heard in between
        self._last_probe = -1e9
        self._polling = False  # a poll of the jobs we hear nothing of is on the state worker's list
        self._info_refreshed_at = -1e9
        self._info_saved: int | None = None  # a digest of the node definitions last written
        # This backend's speed per (workflow, size), for the time left on running cards.
        self.rates: dict[tuple[str, str], estimates.Rate | None] = {}

    @property
    def client_id(self) -> str:
        """Our websocket's client id (also sent with each job, so its events come to us)."""
        if self._client_id:
            return self._client_id
        return client_id_for(self.installation, self.url) if self.installation else ""

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled.

        The bridge's database work runs on a thread (and connection) of its own, so it never
        waits behind the web views' work on the thread Django's async views share.
        """
        database_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="bridge-db", initializer=name_os_thread
        )
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
        if not self.installation:
            self.installation = await db(backends.installation_key)()
        self._client_id = self.client_id  # worked out once
        self.connection = ComfyConnection(self.url, self.client_id)
        self._tasks = [
            asyncio.create_task(self._consume_events(), name=f"bridge-events {self.url}"),
            asyncio.create_task(self._run_state_work(), name=f"bridge-state {self.url}"),
            asyncio.create_task(self._run_outbox(), name=f"bridge-outbox {self.url}"),
            asyncio.create_task(self._dispatch(), name=f"bridge-dispatch {self.url}"),
            asyncio.create_task(self._watch_silence(), name=f"bridge-watchdog {self.url}"),
            asyncio.create_task(self._watch_socket(), name=f"bridge-socket-watch {self.url}"),
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
        now = time.monotonic()
        self.last_heard = now
        self.messages_heard += 1
        if isinstance(event, Connected):
            self._later(self._on_connected)
            return
        if isinstance(event, Disconnected):
            self.connected.clear()
            if not event.deliberate:  # a reconnect of our own is no outage
                self._later(
                    lambda: db(self._save_backend)(
                        online=False, status_message=f"connection lost: {event.reason}"
                    )
                )
            return
        active = self._active_for(event)
        if active is None:
            return
        active.last_event = now
        active.hears_events = True
        active.unconfirmed_since = None
        self._quiet_reconnects = 0
        if isinstance(event, ExecutionStart):
            self.running_prompt_id = active.job.comfy_prompt_id
            active.started = True
            active.clock.start(now)
            self._later(lambda: self._on_start(active))
        elif isinstance(event, ExecutionCached):
            active.done_nodes.update(event.nodes)
        elif isinstance(event, Executing):
            self._on_executing(active, event)
        elif isinstance(event, Progress):
            active.live.step, active.live.steps = event.value, event.max
            active.clock.step(event.value, now)
            self._relay_progress(active, force=event.value >= event.max)
        elif isinstance(event, Preview):
            self._on_preview(active, event)
        elif isinstance(event, Executed):
            self._later(lambda: self._import_outputs(active, event.node, event.files))
        elif isinstance(event, ExecutionSuccess):
            active.verdict_seen = True
            self._later(lambda: self._finish(active, S.SUCCEEDED))
            # After the final card: the owner waits for that, not for our bookkeeping.
            self._later(functools.partial(self._record_speed, active, active.clock.measurement(now)))
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
        self._echo = None
        if time.monotonic() - self._info_refreshed_at >= min(10.0, self.settings.object_info_seconds):
            await self._refresh_backend_info()
        else:  # our own reconnect a moment after the last look: what ComfyUI has is known
            await db(self._save_backend)(online=True, status_message="")
        await self._load_jobs_from_database()
        await self.reconcile(list(self.active.values()))
        await self._drop_stale_copies()
        # Only now may new jobs go out: reconciling must not mistake a job being submitted
        # for one ComfyUI lost.
        self.connected.set()
        self.wake.set()

    async def _on_start(self, active: ActiveJob) -> None:
        self._relay(await db(jobs.advance)(active.pk, S.RUNNING, active.live))
        job = active.job
        key = (job.workflow, estimates.job_size(job.params))
        if key not in self.rates:  # read once; then kept as this bridge measures
            self.rates[key] = await db(estimates.running_rate)(self.url, job.workflow, job.params)
        active.rate = self.rates[key]

    async def _record_speed(self, active: ActiveJob, measured: estimates.Measurement | None) -> None:
        """How long the run took, for the estimates on later jobs' cards."""
        if measured is not None:
            job = active.job
            rate = await db(estimates.record_run)(self.url, job.workflow, job.params, measured)
            self.rates[job.workflow, estimates.job_size(job.params)] = rate

    def _on_executing(self, active: ActiveJob, event: Executing) -> None:
        if event.is_end:
            if self.running_prompt_id == active.job.comfy_prompt_id:
                self.running_prompt_id = None
            self._later(lambda: self._on_end(active))
            return
        if active.current_node:
            active.done_nodes.add(active.current_node)
        active.current_node = event.node or ""
        active.clock.node(time.monotonic())
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
            try:
                await db(jobs.store_output)(active.job, node_id, index, output.filename, data)
            except Exception:
                # Not succeeded without it: settled again from /history at the watchdog's next round.
                logger.exception(
                    "Bridge %s: job %s: output %s not stored", self.url, active.pk, output.filename
                )
                active.outputs_missing = True
                return
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

    def upload_name(self, job: jobs.Job) -> str:
        """The name a job's input image gets in ComfyUI's input folder (subfolder "comfysite"):
        this installation's, so that another site's job of the same number never overwrites it."""
        return f"{self.installation[:12]}-job{job.pk}.png"

    def extra_data(self, job: jobs.Job) -> dict[str, Any]:
        """What we send with each job as ComfyUI's extra_data; /queue shows it, so a bridge can
        tell this installation's jobs from others' under any client id."""
        return {EXTRA_DATA_KEY: {"installation": self.installation, "job": job.pk}}

    async def _submit(self, submission: jobs.Submission) -> bool:
        job, graph = submission.job, submission.graph
        active = self._track(job)
        try:
            if submission.image is not None:
                # Never overwrite: the same bytes keep the name, other bytes get a new one.
                uploaded = await self.client.upload_image(
                    submission.image, self.upload_name(job), subfolder="comfysite", overwrite=False
                )
                graph = submission.with_uploaded_image(uploaded.load_image_value)
        except (BackendUnreachable, ProtocolError) as error:
            return await self._not_sent(active, error)
        heard_before = self.messages_heard
        try:
            await self.client.queue_prompt(
                graph,
                prompt_id=job.comfy_prompt_id,
                client_id=self.client_id,
                extra_data=self.extra_data(job),
            )
        except WorkflowRejected as rejection:
            workflow = self._workflow(active)
            problems = rejection.describe(graph) if workflow else [str(rejection)]
            await self._finish(active, S.FAILED, error="ComfyUI refused this job:\n" + "\n".join(problems))
            return True
        except AnswerLost as error:
            # It may be queued all the same (a slow answer, a cut connection): never sent twice.
            # It keeps its place here until ComfyUI shows it, or, after unconfirmed_seconds,
            # does not; meanwhile no more jobs go to a ComfyUI this slow.
            logger.warning("Bridge %s: job %s: %s; looking for it in ComfyUI", self.url, job.pk, error)
            active.unconfirmed_since = time.monotonic()
            with contextlib.suppress(ComfyError):
                await self._reconcile([active])
            if self.active.get(job.comfy_prompt_id) is active:
                await self._send_card(active)  # "Waiting in ComfyUI" meanwhile
            return False
        except (BackendUnreachable, ProtocolError) as error:
            return await self._not_sent(active, error)
        if self._echo is None:
            self._echo = (heard_before, time.monotonic() + self.settings.echo_seconds)
        # ComfyUI may have started it meanwhile, and its running card be out already: a card
        # read before would take the badge back to "Waiting in ComfyUI".
        if not active.started:
            waiting_card = await db(jobs.card_html)(active.pk, active.live)
            if not active.started:
                self._relay(waiting_card)
        return True

    async def _not_sent(self, active: ActiveJob, error: ComfyError) -> bool:
        """ComfyUI never got the job (no connection): it waits in the site's queue again."""
        self.active.pop(active.job.comfy_prompt_id, None)
        await db(jobs.unsubmit)(active.pk)
        await db(self._save_backend)(online=False, status_message=str(error))
        return False

    def _track(self, job: jobs.Job, *, hears_events: bool = True) -> ActiveJob:
        workflow = self._workflow_named(job.workflow)
        titles = {node_id: workflow.node_title(node_id) for node_id in workflow.graph} if workflow else {}
        active = ActiveJob(
            job=job, node_count=len(titles) or 1, node_titles=titles, hears_events=hears_events
        )
        self.active[job.comfy_prompt_id] = active
        return active

    # -- reconciliation --------------------------------------------------------------------

    async def _load_jobs_from_database(self) -> None:
        for job in await db(jobs.jobs_on_backend)(self.url):
            if job.comfy_prompt_id not in self.active:
                # Queued by an earlier bridge: /queue says under which client id (reconcile).
                self._track(job, hears_events=False)

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
            if self.active.get(prompt_id) is not active:
                continue  # settled meanwhile
            active.last_event = time.monotonic()
            if prompt_id in queue:
                active.unconfirmed_since = None
                active.hears_events = queue.client_ids.get(prompt_id) == self.client_id
            if prompt_id in queue.running:
                self.running_prompt_id = prompt_id
                if not active.started:
                    active.started = True
                    self._relay(await db(jobs.advance)(active.pk, S.RUNNING, active.live))
                continue
            if prompt_id in queue.pending:
                continue
            entry = await self.client.history(prompt_id)
            if entry is not None:
                active.unconfirmed_since = None
                await self._settle_from_history(active, entry)
            elif active.unconfirmed_since is None:
                await self._lost(active)
            elif time.monotonic() - active.unconfirmed_since >= self.settings.unconfirmed_seconds:
                await self._lost(active, "ComfyUI did not take this job, twice; please try again.")
            # else: its POST may still be on its way into ComfyUI's queue; looked for again soon

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

    async def _lost(
        self,
        active: ActiveJob,
        reason: str = "The ComfyUI backend restarted and lost this job twice; please try again.",
    ) -> None:
        """Neither queued nor in history: the backend restarted. One more try, then failed."""
        self.active.pop(active.job.comfy_prompt_id, None)
        if self.running_prompt_id == active.job.comfy_prompt_id:
            self.running_prompt_id = None
        status = await db(jobs.requeue_or_fail)(active.pk, reason)
        logger.warning("Bridge %s: job %s was lost by ComfyUI; now %s", self.url, active.pk, status)
        await self._send_card(active)
        self.wake.set()

    async def _drop_stale_copies(self) -> None:
        """Delete from ComfyUI's queue what this installation queued there but no longer expects
        from it: jobs moved to another backend while this one was unreachable must not run twice.
        Jobs of other installations sharing this ComfyUI are none of our business, whatever
        their client id; and a job some bridge of ours still drives is no stale copy."""
        try:
            queue = await self.client.queue()
            ours = [p for p, extra in queue.extra_data.items() if installation_of(extra) == self.installation]
            candidates = [p for p in ours if p not in self.active]
            if not candidates:
                return
            stale = await db(jobs.unknown_prompt_ids)(candidates)
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
            await asyncio.sleep(min(self.settings.health_seconds, self.settings.object_info_seconds))
            if self.connected.is_set():
                info = None
                if time.monotonic() - self._info_refreshed_at >= self.settings.object_info_seconds:
                    # Models and custom nodes added to ComfyUI show on the form without a reconnect.
                    self._info_refreshed_at = time.monotonic()
                    try:
                        info = await self.client.object_info()
                    except ComfyError as error:
                        logger.warning("Bridge %s: /object_info failed: %s", self.url, error)
                    await self._drop_stale_copies()
                try:
                    stats = await self.client.system_stats()
                except ComfyError as error:
                    await db(self._save_backend)(online=False, status_message=f"health check: {error}")
                else:
                    await db(self._save_backend)(
                        online=True, status_message="", system_stats=stats, object_info=info
                    )
                await self._cancel_missed()
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

    async def _watch_socket(self) -> None:
        """Catch a socket ComfyUI no longer sends to within seconds, not at the silence check:
        it stays open and answers pings, but ComfyUI forgot it (another socket took its client
        id and left, a proxy kept a connection ComfyUI dropped). Also settles, by polling, the
        jobs whose events go to another socket (queued by an earlier bridge process)."""
        while True:
            await asyncio.sleep(self.settings.probe_seconds)
            if not self.connected.is_set():
                continue
            try:
                await self._probe_socket()
            except ComfyError as error:
                logger.info("Bridge %s: socket check: %s", self.url, error)
            except Exception:
                logger.exception("Bridge %s: socket check failed", self.url)

    async def _probe_socket(self) -> None:
        now = time.monotonic()
        if self._echo is not None and now >= self._echo[1]:
            heard_before, _ = self._echo
            self._echo = None
            if self.messages_heard == heard_before:
                await self.connection.reconnect(
                    "ComfyUI said nothing of the job we queued: it no longer hears us"
                )
                return
        quiet_for = now - self.last_heard
        quiet_limit = min(
            self.settings.silence_seconds, self.settings.quiet_seconds * 2**self._quiet_reconnects
        )
        listening = [a for a in self.active.values() if a.hears_events and a.unconfirmed_since is None]
        unheard = [a for a in self.active.values() if not a.hears_events or a.unconfirmed_since is not None]
        suspicious = bool(listening) and quiet_for >= quiet_limit and now - self._last_probe >= quiet_limit
        if not (suspicious or unheard):
            return
        self._last_probe = now
        if suspicious:
            queue = await self.client.queue()
            if any(a.job.comfy_prompt_id in queue.running for a in listening):
                self._quiet_reconnects += 1
                await self.connection.reconnect(
                    f"nothing heard for {quiet_for:.0f} s while our job runs in ComfyUI"
                )
                return
            if any(a.job.comfy_prompt_id not in queue and not a.verdict_seen for a in listening):
                # Gone from ComfyUI's queue without a word to us (a verdict heard means it is
                # being imported): it ended while our socket was deaf. Connecting again settles
                # it from /history at once; waiting for the silence check left it "running" for
                # two minutes (found by the fault soak).
                self._quiet_reconnects += 1
                await self.connection.reconnect(
                    f"nothing heard for {quiet_for:.0f} s while our job left ComfyUI's queue"
                )
                return
        if unheard and not self._polling:
            self._polling = True
            self._later(functools.partial(self._poll, unheard))

    async def _poll(self, actives: list[ActiveJob]) -> None:
        try:
            await self.reconcile(actives)
        finally:
            self._polling = False

    # -- control messages from the web processes -------------------------------------------

    async def _listen_control(self) -> None:
        """Wakes and cancels from the web processes. The channel layer going away (Redis
        restarted) is waited out here: it once ended this task, and with it the whole bridge,
        its socket and every job's live state. A wake missed meanwhile costs one poll."""
        while True:
            try:
                await self._receive_control()
            except Exception as error:
                logger.warning(
                    "Bridge %s: channel layer unavailable (%s); listening again shortly", self.url, error
                )
                await asyncio.sleep(self.settings.layer_retry_seconds)
                self.wake.set()

    async def _receive_control(self) -> None:
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
            with contextlib.suppress(Exception):  # the layer may be the thing that failed
                await self.layer.group_discard(BRIDGE_GROUP, channel)

    async def _cancel_missed(self) -> None:
        """Act on cancels whose message never came: a cancel is saved on the job first, then
        told over the channel layer, and while Redis restarts the telling is lost."""
        waiting = [active.pk for active in self.active.values() if not active.live.cancelling]
        for pk in await db(jobs.cancel_requested)(waiting) if waiting else ():
            self._later(functools.partial(self.cancel, pk))

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
                await self._group_send(self._outbox.popleft())
        return True

    async def _group_send(self, relay: Relay) -> None:
        try:
            await self.layer.group_send(user_group(relay.owner_id), relay.message())
        except (RedisError, OSError) as error:  # Redis restarting: tabs catch up on reconnect
            logger.warning("Bridge %s: relay to user %s lost: %s", self.url, relay.owner_id, error)
        except Exception:
            logger.exception("Bridge %s: relay to user %s failed", self.url, relay.owner_id)

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
        if active.rate is not None:
            steps = estimates.job_steps(active.job.params)
            active.live.seconds_left = active.clock.seconds_left(active.rate, steps, now)
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
                    looked_at = jobs.places_looked_at(next(self._place_rounds))
                    changed = await db(jobs.moved_queue_places)(looked_at)
                    await self._send_places(changed)
            except Exception:
                logger.exception("Bridge %s: queue places not sent", self.url)
            await asyncio.sleep(self.settings.positions_interval)

    async def _send_places(self, relays: list[Relay]) -> None:
        """A round's queue places, one user's at a time with a pause between, beside the outbox
        (not behind it, nor it behind them). Each web process reads all its tabs' messages
        from one Redis list, in order: a round of two hundred users' places sent at once stood
        in front of the progress sent after it (relay p99 64-115 ms through Redis with 200 tabs
        and 200 waiting jobs, 11 ms with no places told; bench/topology.py). A place can so
        arrive after the card of the job's start: tabs drop the lines of jobs no longer queued
        (JobsConsumer)."""
        for relay in relays:
            await self._group_send(relay)
            await asyncio.sleep(self.settings.places_spacing)

    async def _refresh_backend_info(self) -> None:
        info = stats = None
        self._info_refreshed_at = time.monotonic()
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
            kept = {name: spec for name, spec in object_info.items() if name in used}
            names = sorted(object_info)
            digest = hash(json.dumps([kept, names], sort_keys=True))
            if digest != self._info_saved:  # looked at every minute; written when it changed
                fields["object_info"], fields["node_classes"] = kept, names
                self._info_saved = digest
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
