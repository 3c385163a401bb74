"""The Livepeer worker's rules, as pure functions and state machines on a simulated clock: ai-runner's
stream states, the registration backoff, the events channel's pacing, max_framerate, the gateway's
params wrappings and the bearer check."""

from __future__ import annotations

import math

import pytest

from comfystream.trickle.events import heartbeat_urls
from comfystream.trickle.pacing import SegmentPacer
from comfystream.trickle.protocol import WINDOW
from server.http.auth import resolve_token, token_matches
from server.livepeer.gateway_params import unwrap_params
from server.livepeer.registration import CapabilitySettings, RegistrationState, settings_from
from server.livepeer.status import (
    DEGRADED_INFERENCE,
    DEGRADED_INPUT,
    ERROR,
    LOADING,
    OFFLINE,
    ONLINE,
    Measurements,
    StreamStatusTracker,
    compute_state,
    idle_too_long,
)
from server.streams.frame_rate import FrameRateLimiter

# ---- ai-runner states ----------------------------------------------------------------------------


def healthy(now: float = 100.0, **kw) -> Measurements:
    """A stream up since t=10 with 30 fps in and out until `now`."""
    base = dict(
        now=now,
        started_at=0.0,
        ready_at=10.0,
        last_input=now - 0.03,
        last_output=now - 0.05,
        input_fps=30.0,
        output_fps=29.0,
    )
    base.update(kw)
    return Measurements(**base)


def test_states_follow_ai_runners_rules() -> None:
    assert compute_state(healthy()) == ONLINE
    assert compute_state(healthy(ready_at=None)) == LOADING
    assert compute_state(healthy(ended=True)) == OFFLINE
    assert compute_state(healthy(ended=True, failed=True)) == ERROR
    # input below 5 fps (a stutter), or stalled for over 2 s; a 10 or 15 fps camera is normal input
    assert compute_state(healthy(input_fps=4.9, output_fps=4.8)) == DEGRADED_INPUT
    assert compute_state(healthy(input_fps=14.9, output_fps=14.0)) == ONLINE
    assert compute_state(healthy(input_fps=10.0, output_fps=9.0)) == ONLINE
    assert compute_state(healthy(input_fps=15.0, output_fps=12.0)) == ONLINE
    assert compute_state(healthy(last_input=97.5, last_output=97.5)) == DEGRADED_INPUT
    # output below min(10, 0.8 x input): 30 in -> 10 is the floor; 15 in -> 10 too; 12 in -> 9.6
    assert compute_state(healthy(output_fps=9.9)) == DEGRADED_INFERENCE
    assert compute_state(healthy(output_fps=10.0)) == ONLINE
    assert compute_state(healthy(input_fps=15.0, output_fps=9.9)) == DEGRADED_INFERENCE
    # unknown fps (None): only the stall rules apply
    assert compute_state(healthy(input_fps=None, output_fps=None)) == ONLINE
    assert compute_state(healthy(last_output=97.0)) == DEGRADED_INFERENCE  # output stalled 3 s
    # an error in the last 15 s, a worker restart in the last 60 s
    assert compute_state(healthy(last_error=86.0)) == DEGRADED_INFERENCE
    assert compute_state(healthy(last_error=84.0)) == ONLINE
    assert compute_state(healthy(last_restart=41.0)) == DEGRADED_INFERENCE
    assert compute_state(healthy(last_restart=39.0)) == ONLINE
    # input flows, output stopped for over 5 s: ERROR
    assert compute_state(healthy(last_output=94.0)) == ERROR


def test_a_slow_steady_model_is_online() -> None:
    # 3 s a frame: one output every 3 s, 0.33 fps out of 30 in
    slow = dict(frame_s=3.0, output_fps=0.33)
    assert compute_state(healthy(last_output=97.5, **slow)) == ONLINE  # 2.5 s since the last frame
    assert compute_state(healthy(last_output=92.0, **slow)) == DEGRADED_INFERENCE  # 8 s: 2+ frames late
    assert compute_state(healthy(last_output=90.0, **slow)) == ERROR  # 10 s, over 3 frame times
    # without the frame time the same output is an error, as before
    assert compute_state(healthy(last_output=94.0, output_fps=0.33)) == ERROR
    # a slow model's first output after a load: degraded past two of its frame times, an error past three
    first = dict(frame_s=12.0, last_params_update=70.0, last_output=69.0)
    assert compute_state(healthy(now=100.0, **first)) == DEGRADED_INFERENCE
    assert compute_state(healthy(now=105.0, **first)) == DEGRADED_INFERENCE
    assert compute_state(healthy(now=107.0, **first)) == ERROR


def test_after_a_reload_the_first_output_gets_its_grace() -> None:
    # a params update at t=99: no output since, for 1 s -> ONLINE; 5 s -> DEGRADED_INFERENCE;
    # 31 s -> ERROR; and when no input came since either -> DEGRADED_INPUT
    at = dict(last_params_update=99.0, last_output=98.9)
    assert compute_state(healthy(now=100.0, **at)) == ONLINE
    assert compute_state(healthy(now=104.0, **at)) == DEGRADED_INFERENCE
    assert compute_state(healthy(now=130.5, **at)) == ERROR
    assert compute_state(healthy(now=104.0, last_input=98.0, **at)) == DEGRADED_INPUT
    # right after the worker came up, before any frame
    fresh = Measurements(now=11.0, started_at=0.0, ready_at=10.0)
    assert compute_state(fresh) == ONLINE
    assert compute_state(Measurements(now=13.0, started_at=0.0, ready_at=10.0)) == DEGRADED_INPUT


def test_sixty_seconds_without_input_stops_the_stream() -> None:
    m = healthy(now=100.0, last_input=39.0, last_output=39.0)
    assert idle_too_long(m) and compute_state(m) == DEGRADED_INPUT
    assert not idle_too_long(healthy(now=100.0, last_input=41.0, last_output=41.0))
    # never any input: counted from the start; a stream without an input channel never idles
    assert idle_too_long(Measurements(now=61.0, started_at=0.0, ready_at=5.0))
    assert not idle_too_long(Measurements(now=61.0, started_at=0.0, ready_at=5.0, has_input=False))
    assert not idle_too_long(Measurements(now=61.0, started_at=0.0, ready_at=None))  # still loading


def test_tracker_reads_counters_and_events_and_reports_ai_runners_event() -> None:
    t = StreamStatusTracker("comfystream", True, {"width": 64}, now=0.0, wall=1000.0, stream_id="s")
    t.observe({"received": 0, "processed": 0}, "starting", 0.5)
    assert t.update_state(0.5) == LOADING and t.last_input is None
    t.observe({"received": 3, "processed": 0, "fps_in": 30.0, "fps_out": 0.0}, "running", 1.0)
    assert t.ready_at == 1.0 and t.last_input == 1.0 and t.last_output is None
    t.observe({"received": 60, "processed": 58, "input_fps": 30.0, "worker_fps": 29.0}, "running", 3.0)
    assert (t.last_output, t.input_fps, t.output_fps) == (3.0, 30.0, 29.0)  # issue-12 keys win
    assert t.update_state(3.0) == ONLINE
    t.on_event("worker_restarted", {"reason": "crash"}, 4.0)
    t.on_event("frame_error", {"error": "boom"}, 4.0)
    t.observe({"received": 90, "processed": 88, "input_fps": 30.0, "worker_fps": 29.0}, "running", 5.0)
    assert t.update_state(5.0) == DEGRADED_INFERENCE
    t.params_updated({"prompt": "x"}, 5.0)
    event = t.event(5.0)
    assert event["type"] == "status" and event["pipeline"] == "comfystream"
    assert set(event) == {
        "type",
        "pipeline",
        "start_time",
        "state",
        "last_state_update_time",
        "input_status",
        "inference_status",
        "timestamp",
    }
    assert event["start_time"] == 1_000_000 and event["timestamp"] == 1_005_000  # wall-clock ms
    assert event["input_status"] == {"last_input_time": 1_005_000, "fps": 30.0}
    inf = event["inference_status"]
    assert (inf["restart_count"], inf["last_restart_time"], inf["last_error"]) == (1, 1_004_000, "boom")
    assert inf["last_params"] == {"prompt": "x"} and len(inf["last_params_hash"]) == 32
    t.observe({"received": 90, "processed": 88}, "stopped", 6.0)
    assert t.update_state(6.0) == OFFLINE


# ---- registration --------------------------------------------------------------------------------


def test_registration_backs_off_refreshes_and_follows_capacity() -> None:
    s = RegistrationState(initial_delay_s=1.0, max_delay_s=8.0, refresh_s=300.0)
    assert not s.due(0.0) and s.wait_s(0.0) is None  # nothing wanted yet
    s.want(4, 0.0)
    assert s.due(0.0)
    # the orchestrator is down: 1, 2, 4, 8, 8 s between attempts
    now, delays = 0.0, []
    for _ in range(5):
        assert s.due(now)
        assert s.started() == 4
        assert not s.due(now) and s.wait_s(now) is None  # one attempt at a time
        delays.append(s.failed(now))
        assert not s.due(now + delays[-1] - 0.01)
        now += delays[-1]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    # a capacity change while backing off waits for the backoff, then goes
    s.want(2, now - 1.0)
    s.started()
    s.succeeded(2, now)
    assert (s.registered, s.failures) == (2, 0)
    assert not s.due(now + 299.0) and s.due(now + 300.0)  # refreshed every 300 s
    # a change after a success goes at once
    s.want(0, now + 10.0)
    assert s.due(now + 10.0) and s.started() == 0
    s.want(2, now + 10.5)  # changed again while the request was out
    s.succeeded(0, now + 11.0)
    assert s.due(now + 11.0) and s.started() == 2
    # a refusal (400: wrong secret) waits the longest delay
    assert s.failed(now + 12.0, refused=True) == 8.0


def test_registration_settings_read_pytrickles_environment() -> None:
    env = {
        "ORCH_URL": "https://orch:9995/",
        "ORCH_SECRET": "orch-secret",
        "CAPABILITY_NAME": "comfy-live",
        "CAPABILITY_URL": "http://worker:8000/",
        "CAPABILITY_CAPACITY": "3",
        "CAPABILITY_PRICE_PER_UNIT": "7",
        "CAPABILITY_PRICE_SCALING": "1000",
    }
    s = settings_from(env=env, token="T0K3N-xyz", port=8000)
    assert s is not None and s.orch_url == "https://orch:9995" and s.url == "http://worker:8000"
    assert s.body(3) == {
        "name": "comfy-live",
        "description": s.description,
        "url": "http://worker:8000",
        "capacity": 3,
        "price_per_unit": 7,
        "price_scaling": 1000,
        "token": "T0K3N-xyz",
    }
    for text in (repr(s), s.describe(3)):  # what may reach a log
        assert "orch-secret" not in text and "T0K3N" not in text
    flags = settings_from(env=env, orch_secret="other", capacity=5, name="n")
    assert (flags.orch_secret, flags.capacity, flags.name) == ("other", 5, "n")
    assert settings_from(env={}) is None  # no orchestrator: no registration
    defaults = settings_from(env={"ORCH_URL": "http://o", "ORCH_SECRET": "x"}, port=9000)
    assert defaults.url == "http://localhost:9000" and defaults.capacity is None
    assert defaults.body(8)["capacity"] == 8 and "token" not in defaults.body(8)
    for bad in ({"ORCH_URL": "http://o"}, {**env, "CAPABILITY_CAPACITY": "lots"}, {**env, "ORCH_URL": "o:1"}):
        with pytest.raises(ValueError):
            settings_from(env=bad)
    assert isinstance(s, CapabilitySettings)


# ---- events pacing, heartbeat keys ---------------------------------------------------------------


def test_events_are_paced_below_the_reference_window() -> None:
    pacer = SegmentPacer()
    assert pacer.max_segments == WINDOW - 1 == 4
    sent, now = [], 0.0
    for _ in range(12):  # a burst of 12 events at start-up
        now += pacer.delay(now)
        pacer.sent(now)
        sent.append(now)
    # never more than 4 in any second (the 5th slot is the publisher's preconnected next segment)
    for t in sent:
        assert sum(1 for u in sent if t <= u < t + 1.0) <= 4
    assert sent[:4] == [0.0] * 4 and sent[4] == 1.0 and sent[8] == 2.0
    # a quiet channel sends at once
    assert pacer.delay(10.0) == 0.0


def test_heartbeat_urls_are_pytrickles() -> None:
    assert heartbeat_urls({"subscribe_url": "http://a", "publish_url": "http://b", "events": "http://e"}) == {
        "subscribe": "http://a",
        "publish": "http://b",
        "control": "",
        "events": "http://e",
        "data": "",
    }


# ---- max_framerate -------------------------------------------------------------------------------


@pytest.mark.parametrize(("fps_in", "max_fps"), [(30, 15), (25, 15), (60, 24), (10, 15)])
def test_max_framerate_admits_evenly(fps_in: int, max_fps: int) -> None:
    limiter = FrameRateLimiter(max_fps)
    admitted = [i / fps_in for i in range(fps_in * 10) if limiter.admit(i / fps_in)]
    assert len(admitted) == pytest.approx(min(fps_in, max_fps) * 10, abs=2)
    gaps = [b - a for a, b in zip(admitted, admitted[1:], strict=False)]
    # never a longer run of skips than the rate ratio requires (60 -> 24: 1 or 2 in a row)...
    assert max(gaps) <= math.ceil(fps_in / max_fps) / fps_in + 1e-9
    if fps_in <= max_fps:
        assert len(admitted) == fps_in * 10  # ...and nothing skipped below the limit


def test_max_framerate_follows_a_clock_that_restarts() -> None:
    limiter = FrameRateLimiter(10)
    assert limiter.admit(100.0) and not limiter.admit(100.05)
    assert limiter.admit(0.0)  # a new publisher's pts start again: not blocked until 100 s


# ---- the gateway's params, the bearer check ------------------------------------------------------

WORKFLOW = {"1": {"class_type": "LoadTensor", "inputs": {}}}


def test_gateway_wrappings_come_off() -> None:
    assert unwrap_params({"prompt": {"width": 512, "height": 512}}) == {"width": 512, "height": 512}
    assert unwrap_params({"params": {"prompt": {"width": 64, "height": 64}}}) == {"width": 64, "height": 64}
    assert unwrap_params({"params": None}) is None
    assert unwrap_params({"prompt": {}}) == {}
    # a workflow under "prompt" is a prompt, not wrapped params
    assert unwrap_params({"prompt": WORKFLOW}) == {"prompt": WORKFLOW}
    assert unwrap_params({"prompt": "{}"}) == {"prompt": "{}"}
    assert unwrap_params({"prompt": WORKFLOW, "width": 64}) == {"prompt": WORKFLOW, "width": 64}
    assert unwrap_params([1]) == [1]


def test_bearer_token_check() -> None:
    assert token_matches("Bearer s3cret", "s3cret") and token_matches("bearer  s3cret ", "s3cret")
    for header in (None, "", "s3cret", "Bearer", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret"):
        assert not token_matches(header, "s3cret"), header
    assert resolve_token("127.0.0.1", None, False) == (None, False)
    assert resolve_token("localhost", None, False) == (None, False)
    assert resolve_token("::1", None, False) == (None, False)
    assert resolve_token("0.0.0.0", "given", False) == ("given", False)
    assert resolve_token("0.0.0.0", None, True) == (None, False)
    token, generated = resolve_token("0.0.0.0", None, False)
    assert generated and token and len(token) >= 32


def test_serve_reads_the_livepeer_flags_and_environment(monkeypatch) -> None:
    from server.cli import build_parser
    from server.commands import config_from_args

    for name in ("AUTH_TOKEN", "ORCH_URL", "ORCH_SECRET", "CAPABILITY_NAME", "CAPABILITY_CAPACITY"):
        monkeypatch.delenv(name, raising=False)
    local = config_from_args(build_parser().parse_args(["serve"]))
    assert local.auth_token is None and local.registration is None  # loopback: open, no registration

    monkeypatch.setenv("ORCH_URL", "https://orch:9995")
    monkeypatch.setenv("ORCH_SECRET", "env-secret")
    monkeypatch.setenv("CAPABILITY_NAME", "comfyui")
    args = ["serve", "--host", "0.0.0.0", "--max-streams", "3", "--capability-url", "http://w:8000"]
    exposed = config_from_args(build_parser().parse_args(args))
    reg = exposed.registration
    assert exposed.auth_token and reg.token == exposed.auth_token  # generated, handed to the orchestrator
    assert (reg.orch_secret, reg.name, reg.url, exposed.pipeline_name) == (
        "env-secret",
        "comfyui",
        "http://w:8000",
        "comfyui",
    )
    monkeypatch.setenv("AUTH_TOKEN", "from-env")
    given = config_from_args(build_parser().parse_args([*args, "--orch-secret", "flag-secret"]))
    assert given.auth_token == "from-env" and given.registration.orch_secret == "flag-secret"
    open_api = config_from_args(build_parser().parse_args(["serve", "--host", "0.0.0.0", "--no-auth"]))
    monkeypatch.delenv("AUTH_TOKEN")
    assert (
        config_from_args(build_parser().parse_args(["serve", "--host", "0.0.0.0", "--no-auth"])).auth_token
        is None
    )
    assert open_api.auth_token == "from-env"  # a token given is used even with --no-auth
