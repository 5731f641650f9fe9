"""mpool.ray: the pool inside Ray Serve, on a local Ray cluster bound to loopback.

Two Serve replicas, each its own Pool in its own process, serve the Python-defined
models of server_models.py. A replica is another process, so the models that a
test gates (FileGate, FileEndless) talk to it through files in a temporary
folder: markers they create when they start or stop, a file that releases them.
Skipped, saying why, where Ray cannot be imported.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed here (pip install 'ray[serve]'); mpool.ray needs it")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed here (pip install 'ray[serve]')")

import mpool  # noqa: E402
import mpool.ray  # noqa: E402
import server_models  # noqa: E402
from mpool.server.config import ModelEntry, ServerConfig  # noqa: E402

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(HERE), "HF_HUB_OFFLINE": "1"}},
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = ServerConfig(models=[
        ModelEntry(key="hash", python="server_models:embedder"),
        ModelEntry(key="words", python="server_models:streamer"),
        ModelEntry(key="gate", python="server_models:file_gate"),
        ModelEntry(key="endless", python="server_models:file_endless"),
    ])
    app = mpool.ray.deployment(cfg, num_replicas=2, max_ongoing_requests=1, max_queued_requests=1)
    serve.run(app, name="mpool", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_the_openai_routes_and_stream_through_serve(cluster, request):
    client = openai.OpenAI(base_url=f"{cluster}/v1", api_key="unused", max_retries=0)
    request.addfinalizer(client.close)
    assert {m.id for m in client.models.list()} == {"hash", "words", "gate", "endless"}
    out = client.embeddings.create(model="hash", input=["a", "b"], encoding_format="float")
    assert [d.embedding for d in out.data] == server_models.HashEmbedder().embed(["a", "b"]).tolist()
    chunks = list(client.completions.create(model="words", prompt="one two three", stream=True))
    assert [c.choices[0].text for c in chunks if c.choices] == ["one ", "two ", "three ", ""]
    assert chunks[-1].choices[0].finish_reason == "stop"
    ollama = httpx.post(f"{cluster}/api/generate", json={"model": "words", "prompt": "x y", "stream": False}).json()
    assert ollama["response"] == "x y " and ollama["done"]


def test_the_multiplexed_model_id_selects_the_pool_key(cluster):
    routed = {"serve_multiplexed_model_id": "hash"}
    by_id = httpx.post(f"{cluster}/v1/embeddings", json={"input": "a", "encoding_format": "float"}, headers=routed)
    assert by_id.status_code == 200
    assert by_id.json()["model"] == "hash"
    assert by_id.json()["data"][0]["embedding"] == server_models.HashEmbedder().embed(["a"])[0].tolist()
    same = httpx.post(f"{cluster}/v1/embeddings", json={"model": "hash", "input": "a"}, headers=routed)
    assert same.status_code == 200
    other = httpx.post(f"{cluster}/v1/embeddings", json={"model": "words", "input": "a"}, headers=routed)
    assert other.status_code == 400 and "routed for ('hash')" in other.json()["error"]["message"]
    unknown = httpx.post(f"{cluster}/v1/embeddings", json={"input": "a"}, headers={"serve_multiplexed_model_id": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    stream = httpx.post(f"{cluster}/v1/completions", json={"prompt": "p q", "stream": False},
                        headers={"serve_multiplexed_model_id": "words"})
    assert stream.json()["choices"][0]["text"] == "p q "


def test_a_client_that_disconnects_cancels_its_job_inside_the_replica(cluster, tmp_path):
    with httpx.stream("POST", f"{cluster}/v1/completions", timeout=60,
                      json={"model": "endless", "prompt": str(tmp_path), "stream": True}) as r:
        assert next(r.iter_lines()).startswith("data:")
    deadline = time.monotonic() + 60
    while not (tmp_path / "closed").exists():
        assert time.monotonic() < deadline, "the generation in the replica was not cancelled"
        time.sleep(0.01)


def test_saturated_replicas_answer_with_back_pressure_not_a_hang(cluster, tmp_path):
    """Both replicas hold a gated request (max_ongoing_requests=1) and the proxy queues at
    most max_queued_requests=1 more: further requests, sent one after another while the gate
    is closed, are soon refused with 429 and a Retry-After; after the gate opens, every
    accepted request completes.

    Serve checks its queue bound before it counts a request as queued, with an await in
    between, so requests that arrive together may all be queued (Ray's router says so). The
    requests are therefore sent 0.2 s apart, not at once: one that arrives after a queued
    request was counted must be refused."""

    def post(_):
        return httpx.post(f"{cluster}/v1/completions", json={"model": "gate", "prompt": str(tmp_path)}, timeout=120)

    def post_until_accepted(i):
        # Serve's router may still count a replica busy just after an earlier test's
        # request ended, and refuse at once: such a refusal is retried.
        deadline = time.monotonic() + 60
        while (r := post(i)).status_code == 429:
            assert time.monotonic() < deadline, "Serve kept refusing a request to idle replicas"
            time.sleep(0.05)
        return r

    with ThreadPoolExecutor(40) as ex:
        running = [ex.submit(post_until_accepted, i) for i in range(2)]
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("started-*"))) < 2:
            assert time.monotonic() < deadline, "the two gated requests did not start"
            time.sleep(0.01)
        more = []
        refused = []
        while not refused:
            assert len(more) < 36, "saturated replicas did not refuse: the requests queue without bound"
            more.append(ex.submit(post, len(more)))
            time.sleep(0.2)
            refused = [f.result() for f in more if f.done()]
        assert all(r.status_code == 429 and r.headers["retry-after"] == "1" for r in refused)
        (tmp_path / "release").touch()
        rest = [f.result() for f in running + more]
    accepted = [r for r in rest if r.status_code != 429]
    assert len(accepted) >= 2 and all(r.json()["choices"][0]["text"] == "released" for r in accepted)


def test_deployment_refuses_a_bad_config_on_the_driver():
    with pytest.raises(mpool.InvalidInput, match="unknown key"):
        mpool.ray.deployment({"models": {"m": {"path": "x", "colour": 1}}})
    with pytest.raises(mpool.InvalidInput, match="config must be"):
        mpool.ray.deployment(42)  # type: ignore[arg-type]
