"""Contract tests: every message recorded from a real ComfyUI parses into the right typed event."""

import json
import struct

import pytest

from generator.comfy.errors import ProtocolError
from generator.comfy.events import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    FeatureFlags,
    OutputFile,
    Preview,
    Progress,
    ProgressState,
    Status,
    parse_binary,
    parse_history,
    parse_message,
    preview_frame,
)

from .recording import SAMPLES, TRANSCRIPTS, binary_frames, http_exchanges, received_messages

EVENT_TYPES = {
    "status": Status,
    "feature_flags": FeatureFlags,
    "execution_start": ExecutionStart,
    "execution_cached": ExecutionCached,
    "executing": Executing,
    "progress": Progress,
    "progress_state": ProgressState,
    "executed": Executed,
    "execution_success": ExecutionSuccess,
    "execution_error": ExecutionError,
    "execution_interrupted": ExecutionInterrupted,
}


@pytest.mark.parametrize("transcript", TRANSCRIPTS)
def test_every_recorded_message_parses_into_its_event_with_its_fields(transcript):
    messages = received_messages(transcript)
    assert messages

    for message in messages:
        event = parse_message(json.dumps(message))
        data = message["data"]
        assert isinstance(event, EVENT_TYPES[message["type"]])
        if "prompt_id" in data:
            assert event.prompt_id == data["prompt_id"]
        match event:
            case Status():
                assert event.queue_remaining == data["status"]["exec_info"]["queue_remaining"]
                assert event.sid == data.get("sid")
            case Executing():
                assert event.node == data["node"]
                assert event.is_end == (data["node"] is None)
            case Progress():
                assert (event.node, event.value, event.max) == (data["node"], data["value"], data["max"])
            case ProgressState():
                assert set(event.nodes) == set(data["nodes"])
                for node_id, node in event.nodes.items():
                    recorded = data["nodes"][node_id]
                    assert (node.node_id, node.value, node.max, node.state) == (
                        recorded["node_id"],
                        recorded["value"],
                        recorded["max"],
                        recorded["state"],
                    )
                    assert node.display_node_id == recorded["display_node_id"]
                    assert node.real_node_id == recorded["real_node_id"]
            case ExecutionCached():
                assert list(event.nodes) == data["nodes"]
            case Executed():
                assert (event.node, event.display_node) == (data["node"], data["display_node"])
                images = data["output"]["images"]
                assert [f.filename for f in event.files] == [i["filename"] for i in images]
                assert all(f.kind == "images" for f in event.files)
            case ExecutionError():
                assert (event.node_id, event.node_type) == (data["node_id"], data["node_type"])
                assert (event.exception_type, event.exception_message) == (
                    data["exception_type"],
                    data["exception_message"],
                )
                assert event.traceback == tuple(data["traceback"])
                assert event.executed == tuple(data["executed"])
            case ExecutionInterrupted():
                assert (event.node_id, event.node_type) == ("3", "KSampler")
                assert event.executed == tuple(data["executed"])
            case ExecutionStart() | ExecutionSuccess():
                assert event.timestamp == data["timestamp"]
            case FeatureFlags():
                assert event.flags == data


def test_the_first_status_after_connecting_names_the_socket():
    first = parse_message(json.dumps(received_messages("success_txt2img")[0]))
    assert first == Status(queue_remaining=0, sid="harness-25367b1b")


def test_execution_errors_read_as_a_sentence():
    message = next(m for m in received_messages("execution_error") if m["type"] == "execution_error")
    event = parse_message(json.dumps(message))

    assert (
        event.describe()
        == "Node 9 (SaveImage) failed: Saving image outside the output folder is not allowed."
    )
    assert event.describe("Save Image").startswith("Save Image (node 9) failed:")

    bad_image = next(
        m for m in received_messages("execution_error_bad_image") if m["type"] == "execution_error"
    )
    assert parse_message(json.dumps(bad_image)).exception_type == "PIL.UnidentifiedImageError"


def recorded_frame(record: dict) -> bytes:
    """Rebuild a recorded binary frame: its recorded header, then (type 4) its metadata as
    ComfyUI serialises it, then a recorded preview payload of the same type."""
    header = bytes.fromhex(record["header_hex"])
    if record["type"] == 4:
        metadata = json.dumps(record["metadata"]).encode()
        assert len(metadata) == record["metadata_len"]
        return header + metadata + (SAMPLES / "preview_metadata_preview_type4.jpg").read_bytes()
    return header + (SAMPLES / "txt2img_preview_type1.jpg").read_bytes()


TRANSCRIPTS_WITH_PREVIEWS = [name for name in TRANSCRIPTS if binary_frames(name)]


def test_previews_were_recorded_in_most_transcripts():
    assert len(TRANSCRIPTS_WITH_PREVIEWS) >= 8


@pytest.mark.parametrize("transcript", TRANSCRIPTS_WITH_PREVIEWS)
def test_recorded_preview_frames_decode_by_their_header(transcript):
    for record in binary_frames(transcript):
        event = parse_binary(recorded_frame(record))

        assert isinstance(event, Preview)
        assert event.mime_type == "image/jpeg"
        assert event.image.startswith(bytes.fromhex(record["payload_magic_hex"]))
        if record["type"] == 4:
            assert event.prompt_id == record["metadata"]["prompt_id"]
            assert event.node_id == record["metadata"]["node_id"]
        else:
            assert (event.prompt_id, event.node_id) == (None, None)


def test_a_type_1_frame_with_image_format_2_is_a_png():
    png = (SAMPLES / "txt2img_ComfyUI_00001_.png").read_bytes()

    assert parse_binary(struct.pack(">II", 1, 2) + png) == Preview(png, "image/png")


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">II", 4, 500) + b'{"prompt_id": "p"}',  # announces more metadata than it has
        struct.pack(">II", 4, 9) + b"not json!",
        struct.pack(">II", 4, 2) + b"[]",
    ],
    ids=["metadata-cut-short", "metadata-not-json", "metadata-not-an-object"],
)
def test_a_type_4_frame_with_bad_metadata_is_a_protocol_error(frame):
    with pytest.raises(ProtocolError):
        parse_binary(frame)


def test_preview_frames_we_build_decode_to_the_same_preview():
    jpeg = (SAMPLES / "txt2img_preview_type1.jpg").read_bytes()

    assert parse_binary(preview_frame(jpeg)) == Preview(jpeg, "image/jpeg")
    tagged = parse_binary(preview_frame(jpeg, metadata={"prompt_id": "p1", "node_id": "3"}))
    assert (tagged.prompt_id, tagged.node_id, tagged.image) == ("p1", "3", jpeg)


def test_unknown_message_and_frame_types_are_ignored(caplog):
    caplog.set_level("DEBUG")

    assert parse_message('{"type": "crystools.monitor", "data": {"cpu": 3}}') is None
    assert parse_binary(struct.pack(">II", 3, 0) + b"text frame") is None
    assert "crystools.monitor" in caplog.text


@pytest.mark.parametrize(
    "text", ["not json", '["a list"]', '{"data": {}}', '{"type": "progress", "data": {"value": 1}}']
)
def test_malformed_messages_raise_a_protocol_error(text):
    with pytest.raises(ProtocolError):
        parse_message(text)


def test_a_binary_frame_shorter_than_its_header_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        parse_binary(b"\x00\x00\x00")


def test_history_of_a_success_lists_its_outputs_by_node():
    exchange = next(e for e in http_exchanges("success_txt2img") if e["path"].startswith("/history/"))
    prompt_id = exchange["path"].rsplit("/", 1)[1]

    entry = parse_history(prompt_id, exchange["response"]["json"])

    assert entry.succeeded
    assert entry.outputs_by_node() == {"9": (OutputFile("ComfyUI_00001_.png", "", "output", "images"),)}
    assert entry.failure is None


@pytest.mark.parametrize(
    ("transcript", "failure"), [("execution_error", ExecutionError), ("interrupted", ExecutionInterrupted)]
)
def test_history_of_a_failed_run_carries_its_failure(transcript, failure):
    exchange = next(
        e for e in http_exchanges(transcript) if e["path"].startswith("/history/") and e["response"]["json"]
    )
    prompt_id = next(iter(exchange["response"]["json"]))

    entry = parse_history(prompt_id, exchange["response"]["json"])

    assert not entry.succeeded
    assert entry.status_str == "error"
    assert isinstance(entry.failure, failure)
    assert entry.outputs == {}


def test_history_of_an_unknown_prompt_is_none():
    assert parse_history("nope", {}) is None


def test_output_files_of_any_kind_are_found_and_temp_files_are_not_kept():
    event = Executed(
        "p",
        "12",
        "12",
        {
            "gifs": [
                {"filename": "anim_00001.webp", "subfolder": "", "type": "output", "format": "image/webp"}
            ],
            "animated": [True],
            "images": [{"filename": "preview.png", "subfolder": "", "type": "temp"}],
        },
    )

    assert [(f.kind, f.is_kept) for f in event.files] == [("gifs", True), ("images", False)]
