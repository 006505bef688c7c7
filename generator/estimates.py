"""How long until a job is done: the estimate on each queued and running job card.

Each backend's speed is measured on the jobs it finishes, per workflow and size (StepRate):
seconds per sampler step, and the fixed seconds before and after the steps (loading, decoding,
saving). A running job's estimate is its steps remaining at that speed; a waiting job's is the
work ahead of it in the fair order, shared by the backends that take jobs, plus its own run.
Where a job it depends on was never measured, there is no estimate: nothing is better than a
wrong number.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from .backends import healthy_backends
from .models import Prompt, StepRate
from .scheduling import RATE_FIELDS, HandedJob, SiteQueue, queued_in_order, rate_params

# Weight of the newest job in the running averages: a backend that slowed down (a bigger model,
# another tenant on its GPU) shows within a few jobs, and one odd job moves little.
NEWEST_WEIGHT = 0.3
HEALTHY_FRESH_SECONDS = 15.0  # a backend whose bridge reported this lately takes jobs
S = Prompt.Status


def job_size(params: dict[str, Any]) -> str:
    """The size a job's rate is kept under: "512×768", or "" for a workflow without one."""
    width, height = params.get("width"), params.get("height")
    if isinstance(width, int) and isinstance(height, int):
        return f"{width}×{height}"
    return ""


def job_steps(params: dict[str, Any]) -> int | None:
    """The sampler steps the job asked for, if its workflow has the setting."""
    steps = params.get("steps")
    return steps if isinstance(steps, int) and steps > 0 else None


@dataclass(frozen=True)
class Rate:
    seconds_per_step: float
    seconds_before_steps: float
    seconds_after_steps: float
    steps: float  # steps a job took when measured: for jobs that do not say

    def job_seconds(self, steps: int | None = None) -> float:
        """A whole run of a job of `steps` sampler steps."""
        return self.seconds_before_steps + self.step_seconds(steps) + self.seconds_after_steps

    def step_seconds(self, steps: int | None) -> float:
        return self.seconds_per_step * (self.steps if steps is None else steps)

    @classmethod
    def mean(cls, rates: list[Rate]) -> Rate:
        """A job not yet on a backend may run on any of them."""
        count = len(rates)
        return cls(
            sum(r.seconds_per_step for r in rates) / count,
            sum(r.seconds_before_steps for r in rates) / count,
            sum(r.seconds_after_steps for r in rates) / count,
            sum(r.steps for r in rates) / count,
        )


@dataclass(frozen=True)
class Measurement:
    """One finished run, as the bridge timed it."""

    steps: int
    seconds_per_step: float | None  # None: no sampler steps to time
    seconds_before_steps: float
    seconds_after_steps: float


@dataclass
class StepClock:
    """Times one job as its events come (monotonic seconds): kept by the bridge on the job."""

    started: float | None = None
    node_started: float = 0.0
    first_stepping_node: float | None = None  # when the first node that took steps began
    last_step: float | None = None
    node_value: int = 0
    steps_done: int = 0  # over the whole job, every sampler node
    stepping_seconds: float = 0.0

    def start(self, now: float) -> None:
        self.started = self.node_started = now

    def node(self, now: float) -> None:
        self.node_started, self.node_value = now, 0

    def step(self, value: int, now: float) -> None:
        if value <= self.node_value:  # a repeated or restarted count: nothing new was done
            return
        if self.node_value == 0 and self.first_stepping_node is None:
            self.first_stepping_node = self.node_started
        since = self.node_started if self.node_value == 0 else (self.last_step or self.node_started)
        self.stepping_seconds += now - since
        self.steps_done += value - self.node_value
        self.node_value, self.last_step = value, now

    def measurement(self, now: float) -> Measurement | None:
        if self.started is None:  # its start was not seen: a run of unknown length
            return None
        if not self.steps_done or self.first_stepping_node is None or self.last_step is None:
            return Measurement(0, None, now - self.started, 0.0)
        return Measurement(
            self.steps_done,
            self.stepping_seconds / self.steps_done,
            self.first_stepping_node - self.started,
            now - self.last_step,
        )

    def seconds_left(self, rate: Rate, steps: int | None, now: float) -> float:
        """Of a running job: its steps remaining at the measured speed, and what follows them."""
        total = rate.steps if steps is None else steps
        left = max(0.0, total - self.steps_done) * rate.seconds_per_step + rate.seconds_after_steps
        if self.started is not None and self.first_stepping_node is None:  # still loading
            left += max(0.0, rate.seconds_before_steps - (now - self.started))
        elif self.last_step is not None and self.node_value:
            left -= min(rate.seconds_per_step, now - self.last_step)  # into the next step already
        return max(0.0, left)


def _blend(old: float, new: float) -> float:
    return old + NEWEST_WEIGHT * (new - old)


def record_run(backend: str, workflow: str, params: dict[str, Any], measured: Measurement) -> Rate:
    """Fold one finished run into its backend's rate, and return the rate (the bridge calls
    this on its database thread, after each job that succeeded, and keeps what it returns)."""
    rate, created = StepRate.objects.get_or_create(backend=backend, workflow=workflow, size=job_size(params))
    first = created or rate.jobs == 0
    fold = (lambda old, new: new) if first else _blend
    if measured.seconds_per_step is not None:
        unmeasured = rate.seconds_per_step == 0.0
        rate.seconds_per_step = (
            measured.seconds_per_step
            if unmeasured
            else fold(rate.seconds_per_step, measured.seconds_per_step)
        )
    rate.seconds_before_steps = fold(rate.seconds_before_steps, measured.seconds_before_steps)
    rate.seconds_after_steps = fold(rate.seconds_after_steps, measured.seconds_after_steps)
    rate.steps = fold(rate.steps, float(measured.steps))
    rate.jobs += 1
    rate.save()
    return Rate(rate.seconds_per_step, rate.seconds_before_steps, rate.seconds_after_steps, rate.steps)


@dataclass
class RateBook:
    """Every measured rate, read in one query (a row per backend, workflow and size)."""

    rates: dict[tuple[str, str, str], Rate] = field(default_factory=dict)
    means: dict[tuple[str, str], Rate | None] = field(default_factory=dict)  # over backends

    @classmethod
    def load(cls) -> RateBook:
        rows = StepRate.objects.filter(jobs__gt=0).values_list(
            "backend",
            "workflow",
            "size",
            "seconds_per_step",
            "seconds_before_steps",
            "seconds_after_steps",
            "steps",
        )
        return cls({(b, w, s): Rate(*numbers) for b, w, s, *numbers in rows})

    def rate(self, workflow: str, params: dict[str, Any], backend: str = "") -> Rate | None:
        """The rate of a job: its backend's, or the mean of every backend's when it has none yet."""
        size = job_size(params)
        if backend:
            return self.rates.get((backend, workflow, size))
        if (workflow, size) not in self.means:  # asked for each job of a long queue: worked out once
            found = [rate for (_, w, s), rate in self.rates.items() if (w, s) == (workflow, size)]
            self.means[workflow, size] = Rate.mean(found) if found else None
        return self.means[workflow, size]


def running_rate(backend: str, workflow: str, params: dict[str, Any]) -> Rate | None:
    """A job's rate on the backend that runs it (read once, when it starts)."""
    return RateBook.load().rate(workflow, params, backend)


# Queued jobs whose own runs are added up one by one for an estimate; a job further back is
# told these plus the average of their runs for each job between (a wait of hours, in words
# rounded to ten minutes, does not need every row read).
ADDED_UP = 100


@dataclass
class Backlog:
    """The work ahead of the site's queue: what the jobs handed to ComfyUI have left, and the
    backends that share the queued jobs. Two queries more than the queue, whatever its length."""

    book: RateBook
    handed: dict[int, float]  # seconds to done of each job handed to ComfyUI that can be told
    work: float | None  # seconds of work before the first queued job can start (None: unknown)
    backends: int

    @classmethod
    def load(cls, queue: SiteQueue) -> Backlog | None:
        """None when nothing was ever measured: no estimate, and no more queries to learn it."""
        book = RateBook.load()
        if not book.rates:
            return None
        handed: dict[int, float] = {}
        # Each backend's work: what its running job has left, then the jobs waiting inside it.
        work: dict[str, float | None] = {}
        for row, seconds in _handed_jobs_left(queue.handed, book):
            before = work.get(row.backend, 0.0)
            total = None if before is None or seconds is None else before + seconds
            work[row.backend] = total
            if total is not None:
                handed[row.pk] = total
        known = [seconds for seconds in work.values() if seconds is not None]
        ahead = sum(known) if len(known) == len(work) else None
        return cls(book, handed, ahead, max(1, len(healthy_backends(HEALTHY_FRESH_SECONDS))))

    def along(self, queued: Iterable[tuple[int, str, Any, Any, Any]]) -> Iterator[tuple[int, float, float]]:
        """For queued jobs from the front, in the fair order (pk and RATE_FIELDS): each one's
        seconds to done and its own run's. Stops at a job whose run was never measured: every
        job behind it waits for it too."""
        if self.work is None:
            return
        ahead = self.work
        for pk, workflow, width, height, steps in queued:
            params = rate_params(width, height, steps)
            rate = self.book.rate(workflow, params)
            if rate is None:
                return
            own = rate.job_seconds(job_steps(params))
            yield pk, ahead / self.backends + own, own
            ahead += own

    def front(self, queued: Iterable[tuple[int, str, Any, Any, Any]]) -> Front:
        """The first ADDED_UP queued jobs (pk and RATE_FIELDS, in the fair order), added up."""
        done: dict[int, float] = {}
        runs: list[float] = []
        for pk, seconds, own in self.along(queued):
            done[pk] = seconds
            runs.append(own)
        if len(runs) < ADDED_UP:  # a job there never measured, or no job behind them
            return Front(done, None, 0.0)
        # The last of them waits for its share of the work ahead of it; the next job, for that
        # and the last one's run, shared too.
        start_behind = done[pk] - runs[-1] + runs[-1] / self.backends
        return Front(done, start_behind, sum(runs) / len(runs))

    def behind(self, front: Front, ahead: int, workflow: str, params: dict[str, Any]) -> float | None:
        """Seconds to done of a job with `ahead` queued jobs before it, ADDED_UP or more: what
        the job right behind the front waits, then the front's average run for each job
        between, shared, then its own run."""
        rate = self.book.rate(workflow, params)
        if front.start_behind is None or rate is None:
            return None
        between = ahead - ADDED_UP
        return (
            front.start_behind + between * front.average / self.backends + rate.job_seconds(job_steps(params))
        )


@dataclass(frozen=True)
class Front:
    done: dict[int, float]  # seconds to done of each of the first queued jobs that can be told
    start_behind: float | None  # seconds until the job right behind them starts (None: unknown)
    average: float  # their average run


def seconds_to_done(
    queue: SiteQueue, jobs: Sequence[Prompt], places: dict[int, int] | None = None
) -> dict[int, float]:
    """Seconds until each waiting job of `jobs` (queued, or waiting in ComfyUI) is done: the
    work ahead of it in the fair order, shared by the backends that take jobs, and its own run.
    `places`: the queued jobs' places, if known already. A job missing from the answer has no
    estimate (something it waits for was never measured)."""
    backlog = Backlog.load(queue) if jobs else None
    if backlog is None:
        return {}
    estimates = {job.pk: backlog.handed[job.pk] for job in jobs if job.pk in backlog.handed}
    places = queue.places(jobs) if places is None else places
    if not places:
        return estimates
    # How many queued jobs go before each: its place, less the jobs waiting in ComfyUI.
    ahead = {pk: place - queue.waiting_in_comfy - 1 for pk, place in places.items()}
    rows = queued_in_order().values_list("pk", *RATE_FIELDS)[: min(max(ahead.values()) + 1, ADDED_UP)]
    front = backlog.front(rows)
    for job in jobs:
        if job.pk in front.done:
            estimates[job.pk] = front.done[job.pk]
        elif ahead.get(job.pk, 0) >= ADDED_UP:
            seconds = backlog.behind(front, ahead[job.pk], job.workflow, job.params)
            if seconds is not None:
                estimates[job.pk] = seconds
    return estimates


def _handed_jobs_left(rows: Sequence[HandedJob], book: RateBook) -> list[tuple[HandedJob, float | None]]:
    """Jobs handed to ComfyUI, oldest first, with the seconds each has left (None: unknown).
    A running job's comes from the bridge's last word (its steps left), kept with its live state."""
    from .live import load_live_states  # here: live imports this module to render estimates

    lives = load_live_states([row.pk for row in rows if row.status == S.RUNNING])
    now = timezone.now()
    found: list[tuple[HandedJob, float | None]] = []
    for row in rows:
        rate = book.rate(row.workflow, row.params, row.backend)
        live = lives.get(row.pk)
        if rate is None:
            found.append((row, None))
        elif row.status != S.RUNNING:
            found.append((row, rate.job_seconds(job_steps(row.params))))
        elif live is not None and live.seconds_left is not None:
            found.append((row, live.seconds_left))
        else:
            found.append((row, _left_by_clock(rate, row, now)))
    return found


def _left_by_clock(rate: Rate, row: HandedJob, now: datetime.datetime) -> float:
    """A running job whose steps no tab was told yet: its run less the time it has run."""
    ran = (now - row.started_at).total_seconds() if row.started_at else 0.0
    return max(0.0, rate.job_seconds(job_steps(row.params)) - ran)


def about(seconds: float | None) -> str:
    """ "about 40 s", "about 3 min", "about 1 h 20 min": rounded so the words change seldom."""
    if seconds is None:
        return ""
    if seconds < 8:
        return "a few seconds"
    if seconds < 57.5:
        return f"about {round(seconds / 5) * 5} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    hours, minutes = divmod(round(seconds / 600) * 10, 60)
    return f"about {hours} h {minutes} min" if minutes else f"about {hours} h"
