"""The Kubernetes target against an API server emulator over real HTTP (kmock), with the
official client: the exact PATCH to ``deployments/{name}/scale``, the answers 403, 404, 409
and silence, Lease-based leader election, and ``streamq autoscale --target kubernetes`` end to
end against a real Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import kmock
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from autoscaler import controller, kubernetes
from autoscaler.policy import Policy
from autoscaler.targets import TargetError
from streamq import keys
from streamq.config import Config
from tests.conftest import ROOT

# What is tested is the Kubernetes side; the autoscaler's reading of Redis runs on every engine
# in test_autoscale.
pytestmark = [pytest.mark.anyio, pytest.mark.any_engine]

NAMESPACE = "streams"
TOKEN = "t0ken-for-tests"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"


@pytest.fixture
async def kube() -> AsyncIterator[kmock.KubernetesEmulator]:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        yield emulator


@pytest.fixture
def kubeconfig(kube: kmock.KubernetesEmulator, tmp_path: Path) -> str:
    """A kubeconfig for the emulator, read by the client's own loader (JSON is YAML)."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": str(kube.url)}}],
                "users": [{"name": "ops", "user": {"token": TOKEN}}],
                "contexts": [
                    {
                        "name": "emu",
                        "context": {"cluster": "emu", "user": "ops", "namespace": NAMESPACE},
                    }
                ],
                "current-context": "emu",
            }
        )
    )
    return str(path)


def scale_path(deployment: str) -> str:
    return f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{deployment}/scale"


async def add_deployment(kube: kmock.KubernetesEmulator, name: str, replicas: int) -> None:
    meta = {"name": name, "namespace": NAMESPACE}
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {"replicas": replicas}}  # fmt: skip
    response = await kube.post(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", json=body)
    assert response.status == 200


async def replicas(kube: kmock.KubernetesEmulator, name: str) -> int:
    response = await kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}")
    body: Any = await response.json()
    count: int = body["spec"]["replicas"]
    return count


async def target_for(kubeconfig: str, stream: str, answer_within: float = 5.0) -> Any:
    api = await kubernetes.api_client(kubeconfig)
    assert kubernetes.default_namespace(kubeconfig) == NAMESPACE
    return kubernetes.KubernetesTarget(
        api, NAMESPACE, {stream: f"consume-{stream}"}, timeout=answer_within
    )


async def test_scaling_sends_one_merge_patch_to_the_scale_subresource(
    kube: kmock.KubernetesEmulator, kubeconfig: str, stream: str
) -> None:
    await add_deployment(kube, f"consume-{stream}", 1)
    target = await target_for(kubeconfig, stream)
    try:
        assert await target.workers(stream) == 1
        await target.scale(stream, 4)
    finally:
        await target.close()
    [patch] = list(kube["patch"])
    assert str(patch.url.path) == scale_path(f"consume-{stream}")
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    assert patch.headers["Authorization"] == f"Bearer {TOKEN}"
    assert patch.data == {"spec": {"replicas": 4}}
    assert await replicas(kube, f"consume-{stream}") == 4


async def test_a_patch_carries_the_version_it_read_so_a_concurrent_change_answers_409(
    kube: kmock.KubernetesEmulator, kubeconfig: str, stream: str
) -> None:
    name = f"consume-{stream}"
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale",
             "metadata": {"name": name, "namespace": NAMESPACE, "resourceVersion": "42"},
             "spec": {"replicas": 2}, "status": {"replicas": 2}}  # fmt: skip
    await add_deployment(kube, name, 2)
    kube[f"get {scale_path(name)}"] << scale
    kube[f"patch {scale_path(name)}"] << 409
    target = await target_for(kubeconfig, stream)
    try:
        assert await target.workers(stream) == 2
        with pytest.raises(TargetError) as raised:
            await target.scale(stream, 3)
    finally:
        await target.close()
    assert raised.value.status == 409
    assert "conflict" in str(raised.value)
    [patch] = list(kube["patch"])
    assert patch.data == {"metadata": {"resourceVersion": "42"}, "spec": {"replicas": 3}}


@pytest.mark.parametrize(
    ("status", "words"), [(403, "forbidden"), (404, "not found"), (500, "HTTP 500")]
)
async def test_an_api_refusal_is_one_line_naming_the_deployment(
    kube: kmock.KubernetesEmulator, kubeconfig: str, stream: str, status: int, words: str
) -> None:
    kube[f"patch {scale_path(f'consume-{stream}')}"] << status
    await add_deployment(kube, f"consume-{stream}", 1)
    target = await target_for(kubeconfig, stream)
    try:
        with pytest.raises(TargetError) as raised:
            await target.scale(stream, 2)
    finally:
        await target.close()
    message = str(raised.value)
    assert raised.value.status == status
    assert words in message
    assert f"deployments/consume-{stream}/scale in {NAMESPACE}" in message
    assert "\n" not in message
    assert TOKEN not in message


async def test_an_api_server_that_does_not_answer_times_out(
    kube: kmock.KubernetesEmulator, kubeconfig: str, stream: str
) -> None:
    gate = asyncio.Event()  # never set: the emulator holds the request open
    kube[f"get {scale_path(f'consume-{stream}')}"] << (lambda: gate.wait())
    target = await target_for(kubeconfig, stream, answer_within=0.5)
    try:
        with anyio.fail_after(10), pytest.raises(TargetError) as raised:
            await target.workers(stream)
    finally:
        gate.set()
        await target.close()
    assert "no answer within 0.5s" in str(raised.value)


class Held:
    """A leadership that is always held, for driving the loop alone."""

    fence: int | None = 1

    async def hold(self) -> bool:
        return True

    async def still_leading(self) -> bool:
        return True

    async def release(self) -> None:
        return None


async def test_a_refused_stream_does_not_stop_the_others(
    kube: kmock.KubernetesEmulator, kubeconfig: str, redis: Redis, stream: str
) -> None:
    other = stream + "-b"
    for name in (stream, other):
        await redis.xadd(keys.lane(name, "normal"), {"j": b"{}"})
        await add_deployment(kube, f"consume-{name}", 0)
    kube[scale_path(f"consume-{stream}")] << 403  # any method: it can neither read nor patch
    api = await kubernetes.api_client(kubeconfig)
    target = kubernetes.KubernetesTarget(
        api, NAMESPACE, {name: f"consume-{name}" for name in (stream, other)}
    )
    policy = Policy(min_workers=0, max_workers=3)
    try:
        await controller.run(
            redis, [stream, other], {stream: policy, other: policy}, target, Config(),
            leadership=Held(), interval=0.01, ticks=2,
        )  # fmt: skip
    finally:
        await target.close()
    errors = REGISTRY.get_sample_value("streamq_autoscaler_target_errors_total", {"stream": stream})
    assert errors == 2  # refused at each tick, and tried again
    [patch] = list(kube["patch"])
    assert str(patch.url.path) == scale_path(f"consume-{other}")
    assert await replicas(kube, f"consume-{other}") == 1


async def test_only_one_controller_leads_through_the_lease_and_a_new_leader_has_a_higher_fence(
    kube: kmock.KubernetesEmulator, kubeconfig: str
) -> None:
    api = await kubernetes.api_client(kubeconfig)
    try:
        first, second = (
            kubernetes.LeaseLeadership(
                api, NAMESPACE, "lead", identity=who, duration_seconds=1, timeout=5
            )
            for who in ("first", "second")
        )
        assert await first.hold()
        assert not await second.hold()
        assert (first.fence, second.fence) == (0, None)
        assert await first.hold()  # renewed
        assert not await second.hold()
        with anyio.fail_after(10):  # first stops renewing: second waits one duration
            while not await second.hold():  # noqa: ASYNC110 - the lease lapses on the server
                await anyio.sleep(0.1)
        assert not await first.hold()  # it sees it lost
        assert (first.fence, second.fence) == (None, 1)
        await second.release()
        assert await first.hold()  # released: no need to wait
        assert (first.fence, second.fence) == (2, None)
        response = await kube.get(f"{LEASES}/lead")
        lease: Any = await response.json()
        assert lease["spec"]["holderIdentity"] == "first"
        assert lease["spec"]["leaseTransitions"] == 2
    finally:
        await api.close()  # type: ignore[no-untyped-call]


async def test_a_candidate_that_loses_a_write_race_does_not_lead(
    kube: kmock.KubernetesEmulator, kubeconfig: str
) -> None:
    api = await kubernetes.api_client(kubeconfig)
    try:
        response = await kube.post(LEASES, json={"metadata": {"name": "free"}, "spec": {}})
        assert response.status == 200  # a lease nobody holds: free to take at once
        kube[f"post {LEASES}"] << 409
        kube[f"patch {LEASES}/free"] << 409
        creating = kubernetes.LeaseLeadership(api, NAMESPACE, "new", identity="late")
        assert not await creating.hold()  # another candidate's create won
        taking = kubernetes.LeaseLeadership(api, NAMESPACE, "free", identity="late")
        assert not await taking.hold()  # another candidate's takeover wrote first
        assert (creating.fence, taking.fence) == (None, None)
        [patch] = list(kube["patch"])
        assert patch.data["spec"]["holderIdentity"] == "late"
    finally:
        await api.close()  # type: ignore[no-untyped-call]


async def backlog_and_autoscaler(
    redis: Redis, redis_url: str, kubeconfig: str, stream: str, *flags: str
) -> list[str]:
    """2,000 jobs waiting on the stream, and the `streamq autoscale` command line to size
    its Deployment against the emulator."""
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(2000):
            pipe.xadd(keys.lane(stream, "normal"), {"j": json.dumps({"n": n})})
        await pipe.execute()
    return [sys.executable, "-m", "streamq", "autoscale", "--target", "kubernetes",
            "--kubeconfig", kubeconfig, "--redis-url", redis_url, "--stream", stream,
            "--max", "4", "--concurrency", "4", "--interval", "0.2", *flags]  # fmt: skip


@pytest.mark.slow
async def test_streamq_autoscale_target_kubernetes_sizes_the_deployment_and_gives_up_the_lease(
    kube: kmock.KubernetesEmulator, kubeconfig: str, redis: Redis, redis_url: str, stream: str
) -> None:
    await add_deployment(kube, f"streamq-consume-{stream}", 0)
    command = await backlog_and_autoscaler(redis, redis_url, kubeconfig, stream)
    async with await anyio.open_process(command, cwd=ROOT) as process:
        try:
            with anyio.fail_after(30):
                while await replicas(kube, f"streamq-consume-{stream}") != 4:  # noqa: ASYNC110
                    await anyio.sleep(0.1)  # the autoscaler is another process
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await process.wait()
    assert process.returncode == 0
    response = await kube.get(f"{LEASES}/streamq-autoscaler")
    lease: Any = await response.json()
    assert not lease["spec"].get("holderIdentity")  # released on a clean stop


async def test_a_kubernetes_dry_run_starts_from_the_real_size_and_changes_nothing(
    kube: kmock.KubernetesEmulator, kubeconfig: str, redis: Redis, redis_url: str, stream: str
) -> None:
    await add_deployment(kube, f"streamq-consume-{stream}", 2)
    command = await backlog_and_autoscaler(redis, redis_url, kubeconfig, stream, "--dry-run")
    async with await anyio.open_process(command, cwd=ROOT) as process:
        assert process.stderr is not None
        seen = b""
        try:
            with anyio.fail_after(30):
                async for chunk in process.stderr:
                    seen += chunk
                    if f"{stream}: 2 -> 4 workers".encode() in seen:
                        break
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await process.wait()
    assert f"{stream}: 2 -> 4 workers".encode() in seen
    assert list(kube["patch"]) == []  # nothing resized
    assert len(list(kube["post"])) == 1  # the test's own Deployment: no Lease was taken
    assert await replicas(kube, f"streamq-consume-{stream}") == 2
