"""`etchr worker reward` as a separate process: the API alone enqueues, the worker answers."""

from __future__ import annotations

from pathlib import Path

from tests.reward.conftest import RewardFactory
from tests.reward.test_reward_api import item, post
from tests.support.mllm_server import ScriptedMLLM
from tests.support.redis_server import RedisServer
from tests.support.servers import EtchrProcess


def test_separate_worker_process_serves_the_api(
    reward_service: RewardFactory,
    redis_server: RedisServer,
    key_prefix: str,
    mllm: ScriptedMLLM,
    tmp_path: Path,
) -> None:
    url = reward_service(reward_worker=False, reward_deadline_s=60)
    env = {
        "ETCHR_REDIS_URL": redis_server.url,
        "ETCHR_REDIS_PREFIX": key_prefix,
        "ETCHR_MLLM_BASE_URL": mllm.base_url,
        "ETCHR_MLLM_MODEL": "test-vlm",
    }
    worker = EtchrProcess(["worker", "reward"], env, tmp_path / "worker.log")
    try:
        response = post(url, "/reward", {"items": [item([(4, 2), (0, 0)])], "k": 4}, timeout=90)
        assert response.status_code == 200, response.text + worker.log()
        rewards = response.json()["items"][0]["rewards"]
        assert [r["reward"] for r in rewards] == [0.75, 0.0]
        assert worker.terminate(timeout=30) == 0, worker.log()
        assert "reward worker" in worker.log() and "stopped" in worker.log()
    finally:
        worker.stop()
