"""The web node and Redis fail: nothing acknowledged is lost, requests fail fast, all recover."""

from __future__ import annotations

import pytest

from . import scenarios
from .harness import FaultStack, PrivateRedis, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    r = PrivateRedis(tmp_path_factory.mktemp("faults-redis"))
    r.start()
    yield r
    r.resume()
    r.stop()


@pytest.fixture(scope="module")
def fs(redis, tmp_path_factory):
    with FaultStack(redis.url, tmp_path_factory.mktemp("faults-web-redis"), prefix="fw", VTERM_HEARTBEAT_TTL=10) as st:
        yield st


def _no_process_died(fs):
    assert all(fs.processes_alive().values()), fs.processes_alive()


def test_web_node_restart_under_load(fs):
    out = scenarios.web_restart(fs)
    assert out.acknowledged > 0
    assert all(c["status"] == "succeeded" for c in out.commands), [c for c in out.commands
                                                                  if c["status"] != "succeeded"]
    assert out.lost == 0 and out.interrupted == 0 and out.recovered == 2


def test_redis_restart(fs, redis):
    out = scenarios.redis_restart(fs, redis)
    before, across, *_ = out.commands
    assert before["status"] == "succeeded"
    # A command acknowledged before Redis went away ends definitely (it ran in the shell).
    assert across["status"] == "succeeded" and across["output"] == "across\n", across
    assert all(c["status"] in scenarios.FINAL for c in out.commands)
    assert out.lost == 0 and out.recovered == 1
    _no_process_died(fs)


def test_redis_paused(fs, redis):
    out = scenarios.redis_pause(fs, redis)
    assert out.replies, "requests were made while Redis was paused"
    # How long each took (bounded by the broker's and Redis' timeouts) is reported, not asserted.
    print("\nreplies while Redis was paused: " + ", ".join(f"{s} in {sec:.1f} s" for s, _, sec, _ in out.replies))
    for status, retry_after, _seconds, _ in out.replies:
        # A 503 with Retry-After, never a 500 (nor a hang: the request got an answer).
        assert status in (201, 503), out.replies
        if status == 503:
            assert retry_after, out.replies
    assert all(c["status"] in scenarios.FINAL for c in out.commands)
    assert out.lost == 0 and out.recovered == 1
    _no_process_died(fs)


def test_websocket_resumes_with_since_after_the_web_node_restarts(fs):
    import signal

    from tests.ws_viewer import Viewer

    sid = fs.api.create_session()["id"]
    viewer = Viewer(fs.stack.url, sid, token=fs.api.token)
    fs.api.run(sid, "echo one")
    viewer.until_output("one")
    position = viewer.position
    fs.stack.stop_process("web", signal.SIGKILL)
    viewer.close()
    fs.stack.start_process(fs.stack.spec("web"))
    wait_for(fs.stack.ready, 60, "the web node to be back")
    fs.api.run(sid, "echo two")
    again = Viewer(fs.stack.url, sid, token=fs.api.token, since=position)
    again.until_output("two")
    assert again.breaks == [] and again.outputs[0][0] == position + 1, (position, again.outputs[:2])
    again.close()
