"""How a job's settings read on its pages: the form's labels, the workflow's title, run times."""

from __future__ import annotations

import datetime

from django import template

from generator.models import Prompt
from generator.workflows import WorkflowError, get_workflow

register = template.Library()


@register.simple_tag
def workflow_title(prompt: Prompt) -> str:
    try:
        return get_workflow(prompt.workflow).title
    except WorkflowError:  # a workflow removed since: its file name is all there is
        return prompt.workflow


@register.simple_tag
def labelled_parameters(prompt: Prompt) -> list[tuple[str, object]]:
    """(label, value) of each parameter the job kept, labelled as the form labels it."""
    try:
        parameters = get_workflow(prompt.workflow).parameters
    except WorkflowError:
        parameters = {}
    labels = {name: parameter.label for name, parameter in parameters.items()}
    return [
        (labels.get(name) or name.replace("_", " ").capitalize(), value)
        for name, value in prompt.params.items()
    ]


@register.filter
def duration(value: datetime.timedelta | None) -> str:
    """ "4.2 s", "3 min 5 s", "1 h 2 min": what `timesince` rounds to "0 minutes"."""
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@register.simple_tag
def run_time(prompt: Prompt) -> str:
    if prompt.started_at is None or prompt.finished_at is None:
        return ""
    return duration(prompt.finished_at - prompt.started_at)
