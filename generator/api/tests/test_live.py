"""The API end to end: the site as `manage.py serve` runs it, its bridge, the ComfyUI emulator,
driven by OpenAI's own client and by plain HTTP, as a script would."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from PIL import Image

from generator.tests.browser import running_site
from generator.tests.factories import png_bytes

SEED = """
from django.contrib.auth.models import User
from generator.api.keys import create_key
for name in ("alice", "bob"):
    user = User.objects.create_user(name)
    open(f"{KEYS}/{name}", "w").write(create_key(user, "tests")[1])
"""
SITE_ENV = {"QUOTA_MAX_QUEUED": "100", "QUOTA_MAX_IMAGES_PER_DAY": "10000", "API_RATE_LIMIT": "10000/m"}
QUICK = {"steps": 2}  # 0.15 s a step on the demo backend


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api-site")
    keys = tmp / "keys"
    keys.mkdir()
    with running_site(tmp, extra_env=SITE_ENV, seed=f"KEYS = {str(keys)!r}\n{SEED}") as url:
        yield url, {name: (keys / name).read_text() for name in ("alice", "bob")}


@pytest.fixture
def alice(site):
    url, keys = site
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['alice']}"}, timeout=60)


@pytest.fixture
def images(site):
    url, keys = site
    return openai.OpenAI(base_url=f"{url}/v1", api_key=keys["alice"], max_retries=0).images


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def events_of(client: httpx.Client, job_id: int, headers=None, stop_after: int | None = None):
    """(id, event, data) of the job's stream, to its end or for `stop_after` events."""
    events, block = [], {}
    with client.stream("GET", f"/api/jobs/{job_id}/events", headers=headers or {}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                block[name] = value
                continue
            if "event" in block:
                events.append((block["id"], block["event"], json.loads(block["data"])))
                if block["event"] == "finished" or len(events) == stop_after:
                    break
            block = {}
    return events


def test_openai_client_generates_two_images_as_base64(images):
    result = images.generate(
        prompt="a lighthouse at dusk",
        n=2,
        size="512x384",
        response_format="b64_json",
        extra_body={"parameters": QUICK},
    )

    assert len(result.data) == 2
    pictures = [picture(base64.b64decode(datum.b64_json)) for datum in result.data]
    assert [p.size for p in pictures] == [(512, 384), (512, 384)]
    assert pictures[0].tobytes() != pictures[1].tobytes()  # two images, not one twice
    assert result.data[0].revised_prompt is None


def test_openai_client_gets_links_that_work_without_a_key(images):
    result = images.generate(prompt="a red fox", extra_body={"parameters": QUICK})

    [datum] = result.data
    fetched = httpx.get(datum.url)
    assert fetched.status_code == 200
    assert picture(fetched.content).format == "PNG"


def test_openai_client_edits_an_uploaded_image(images):
    source = png_bytes((320, 256))

    result = images.edit(
        image=("photo.png", source, "image/png"),
        prompt="the same, in winter",
        response_format="b64_json",
        extra_body={"parameters": {"steps": 2, "denoise": 0.6}},
    )

    assert picture(base64.b64decode(result.data[0].b64_json)).size == (320, 256)


def test_openai_client_sees_errors_in_words(images):
    with pytest.raises(openai.BadRequestError, match="no workflow 'dall-e-3'"):
        images.generate(prompt="x", model="dall-e-3")
    with pytest.raises(openai.BadRequestError, match="steps: Ensure this value is less than or equal to 150"):
        images.generate(prompt="x", extra_body={"parameters": {"steps": 1000}})
    with pytest.raises(openai.BadRequestError, match="not an image"):
        images.edit(image=("evil.png", b"<svg onload=alert(1)>", "image/png"), prompt="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=images._client.base_url, api_key="csk_nope", max_retries=0).images.generate(
            prompt="x"
        )


def test_a_client_that_stops_waiting_leaves_the_job_to_finish(images, alice):
    with pytest.raises(openai.APITimeoutError):
        images.generate(prompt="a slow one", extra_body={"parameters": {"steps": 8}}, timeout=0.3)

    [job] = alice.get("/api/jobs", params={"q": "a slow one"}).json()["data"]
    assert events_of(alice, job["id"])[-1][2]["status"] == "succeeded"


def test_an_async_job_streams_its_progress_in_order_to_the_end(alice):
    created = alice.post(
        "/api/jobs", json={"workflow": "txt2img", "parameters": {"prompt": "a tall ship", "steps": 5}}
    )
    assert created.status_code == 202

    events = events_of(alice, created.json()["id"])

    names = [name for _, name, _ in events]
    assert names[0] == "status"
    assert names[-1] == "finished"
    assert "progress" in names
    steps = [data["step"] for _, name, data in events if name == "progress" and data["node"] == "KSampler"]
    assert steps == sorted(steps)
    assert steps[-1] == 5
    finished = events[-1][2]
    assert finished["status"] == "succeeded"
    assert len(finished["outputs"]) == 1
    assert alice.get(f"/api/jobs/{finished['id']}").json()["outputs"][0]["id"] == finished["outputs"][0]["id"]


def test_a_stream_resumes_after_a_disconnect_without_repeating_events(alice):
    job_id = alice.post("/api/jobs", json={"parameters": {"prompt": "resume me", "steps": 12}}).json()["id"]
    first = events_of(alice, job_id, stop_after=4)

    rest = events_of(alice, job_id, headers={"Last-Event-ID": first[-1][0]})

    assert rest[-1][1] == "finished"
    numeric = [int(event_id) for event_id, _, _ in first + rest[:-1]]
    assert numeric == sorted(set(numeric))  # nothing told twice, nothing out of order
    again = alice.get(f"/api/jobs/{job_id}/events", headers={"Last-Event-ID": rest[-1][0]})
    assert again.status_code == 204


def test_cancel_works_in_each_state(alice):
    def start(steps: int) -> int:
        return alice.post("/api/jobs", json={"parameters": {"prompt": "cancel me", "steps": steps}}).json()[
            "id"
        ]

    running = start(60)
    waiting = start(60)  # handed to ComfyUI behind the running one
    queued = start(60)  # still in the site's queue
    for _, name, data in events_of(alice, running, stop_after=30):
        if name == "progress" and data["step"] >= 1:
            break

    assert alice.delete(f"/api/jobs/{queued}").json()["status"] == "cancelled"
    for job_id in (waiting, running):
        assert alice.delete(f"/api/jobs/{job_id}").status_code == 200
    ended = {job_id: events_of(alice, job_id)[-1][2] for job_id in (running, waiting, queued)}

    assert {job["status"] for job in ended.values()} == {"cancelled"}
    assert ended[running]["error"] == "Cancelled while it ran."
    assert ended[waiting]["error"] == "Cancelled before it started."
    assert ended[running]["outputs"] == []


def test_two_identical_posts_at_once_with_one_idempotency_key_make_one_job(alice):
    body = {"parameters": {"prompt": "exactly once", **QUICK}}

    def post(_):
        return alice.post("/api/jobs", json=body, headers={"Idempotency-Key": "run-7"})

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(post, range(2)))

    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json()["id"] == answers[1].json()["id"]
    assert len(alice.get("/api/jobs", params={"q": "exactly once"}).json()["data"]) == 1


def test_another_users_key_sees_none_of_alices_jobs(site, alice):
    url, keys = site
    bob = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {keys['bob']}"})
    job_id = alice.post("/api/jobs", json={"parameters": {"prompt": "mine", **QUICK}}).json()["id"]

    assert bob.get(f"/api/jobs/{job_id}").status_code == 404
    assert bob.get(f"/api/jobs/{job_id}/events").status_code == 404
    assert bob.delete(f"/api/jobs/{job_id}").status_code == 404
    assert job_id not in [job["id"] for job in bob.get("/api/jobs").json()["data"]]
    assert events_of(alice, job_id)[-1][2]["status"] == "succeeded"


def test_the_schema_and_docs_are_served(site):
    url, _ = site
    schema = httpx.get(f"{url}/api/openapi.json").json()

    assert {"/api/jobs", "/api/jobs/{pk}", "/api/jobs/{pk}/events", "/api/workflows"} <= set(schema["paths"])
    assert {"/v1/images/generations", "/v1/images/edits"} <= set(schema["paths"])
    assert "swagger" in httpx.get(f"{url}/api/docs").text.lower()


# -- webhooks through the real site and bridge ------------------------------------------------


class Receiver(threading.Thread):
    """A webhook receiver on a local port, started when wanted."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def run(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


WEBHOOK_ENV = {**SITE_ENV, "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_RETRY_BASE_SECONDS": "0.5"}


def test_webhooks_reach_a_receiver_that_was_down_once_and_survive_a_restart(tmp_path):
    from generator.tests.browser import free_port

    keys = tmp_path / "keys"
    keys.mkdir()
    seed = f"KEYS = {str(keys)!r}\n{SEED}"
    late, after_restart = free_port(), free_port()
    with running_site(tmp_path, extra_env=WEBHOOK_ENV, seed=seed) as url:
        client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {(keys / 'alice').read_text()}"}
        )

        def job_with_hook(port: int) -> int:
            body = {"parameters": {"prompt": "hook", **QUICK}, "webhook_url": f"http://127.0.0.1:{port}/hook"}
            job_id = client.post("/api/jobs", json=body).json()["id"]
            assert events_of(client, job_id)[-1][2]["status"] == "succeeded"
            return job_id

        late_job, restart_job = job_with_hook(late), job_with_hook(after_restart)
        time.sleep(2)  # a few failed attempts at both
        receiver = Receiver(late)
        receiver.start()
        wait_for(lambda: receiver.received)
        time.sleep(1.5)  # a second copy would come by now
        receiver.stop()
    # The site is down; the second receiver comes up; the site starts again on the same database.
    second = Receiver(after_restart)
    second.start()
    with running_site(tmp_path, extra_env=WEBHOOK_ENV):
        wait_for(lambda: second.received)
    second.stop()

    assert len(receiver.received) == 1
    [(headers, body)] = receiver.received
    event = json.loads(body)
    assert (event["type"], event["data"]["id"]) == ("job.succeeded", late_job)
    assert headers["webhook-id"] == event["id"]
    assert json.loads(second.received[0][1])["data"]["id"] == restart_job
