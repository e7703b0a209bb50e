"""The Kubernetes target: each stream's consumer Deployment is resized through its ``scale``
subresource, and controllers elect a leader with a ``coordination.k8s.io`` Lease.

It talks to the API server with the official client's asyncio flavour (``kubernetes.aio``),
configured in-cluster (the pod's ServiceAccount) or from a kubeconfig. The RBAC it needs:
``get`` and ``patch`` on ``deployments/scale`` in its namespace, and ``get``, ``create`` and
``update`` on ``leases``.

Resizing is optimistic: the PATCH carries the resourceVersion of the scale it read, so a
change made meanwhile by someone else (a person with kubectl, another controller) makes the
API answer 409 and this controller decides again at the next tick, from the new size.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio

from autoscaler.targets import TargetError
from streamq.errors import ConfigError

if TYPE_CHECKING:
    from kubernetes.aio.client import ApiClient

log = logging.getLogger("streamq.autoscaler")

DEFAULT_DEPLOYMENT: Final = "streamq-consume-{stream}"
"""The Deployment of a stream's workers, unless its config names one (the Helm chart's)."""

DEFAULT_LEASE: Final = "streamq-autoscaler"
NAMESPACE_FILE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MERGE_PATCH: Final = "application/merge-patch+json"

T = TypeVar("T")


async def api_client(kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    """A client for the pod's own cluster, or for a kubeconfig (given, $KUBECONFIG, ~/.kube)."""
    try:
        from kubernetes.aio import client, config
    except ImportError:
        raise ConfigError(
            "the kubernetes target needs the kubernetes client: pip install 'streamq[kubernetes]'"
        ) from None
    try:
        if kubeconfig is None and context is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return client.ApiClient(configuration)
        chosen = kubeconfig or os.environ.get("KUBECONFIG") or None
        made: ApiClient = await config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=chosen, context=context, persist_config=False
        )
        return made
    except config.ConfigException as exc:
        raise ConfigError(f"kubernetes: {exc}") from None


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The pod's namespace in a cluster, else the kubeconfig context's, else ``default``."""
    if kubeconfig is None and context is None and NAMESPACE_FILE.exists():
        return NAMESPACE_FILE.read_text().strip()
    try:
        from kubernetes.aio import config

        contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            kubeconfig or os.environ.get("KUBECONFIG") or None
        )
    except Exception:  # no kubeconfig at all: api_client() reports that better
        return "default"
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    namespace: str = (chosen or {}).get("context", {}).get("namespace") or "default"
    return namespace


async def _call(what: str, call: Awaitable[T], seconds: float) -> T:
    """One API call as a TargetError on any failure, with a hard deadline."""
    import aiohttp
    from kubernetes.aio.client.exceptions import ApiException

    try:
        with anyio.fail_after(seconds):
            return await call
    except ApiException as exc:
        reason = {
            401: "unauthorized: the credentials were refused",
            403: "forbidden: check the ServiceAccount's RBAC",
            404: "not found",
            409: "conflict: it changed since it was read",
        }.get(exc.status or 0, f"HTTP {exc.status} {exc.reason}")
        raise TargetError(f"{what}: {reason}", exc.status) from None
    except TimeoutError:
        raise TargetError(f"{what}: no answer within {seconds:g}s") from None
    except (OSError, asyncio.IncompleteReadError, aiohttp.ClientError) as exc:
        raise TargetError(f"{what}: {type(exc).__name__}: {exc}") from None


class KubernetesTarget:
    """The replicas of each stream's consumer Deployment, through ``deployments/{name}/scale``."""

    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        deployments: Mapping[str, str],
        timeout: float = 10.0,
    ) -> None:
        from kubernetes.aio.client import AppsV1Api

        self.api = api
        self.namespace = namespace
        self.deployments = dict(deployments)
        self.timeout = timeout
        self._apps = AppsV1Api(api)
        self._read_versions: dict[str, str | None] = {}

    def _what(self, verb: str, stream: str) -> str:
        return f"{verb} deployments/{self.deployments[stream]}/scale in {self.namespace}"

    async def workers(self, stream: str) -> int:
        scale = await _call(
            self._what("get", stream),
            self._apps.read_namespaced_deployment_scale(
                self.deployments[stream], self.namespace, _request_timeout=self.timeout
            ),
            self.timeout,
        )
        self._read_versions[stream] = scale.metadata.resource_version if scale.metadata else None
        return (scale.spec.replicas if scale.spec else None) or 0

    async def scale(self, stream: str, count: int) -> None:
        body: dict[str, Any] = {"spec": {"replicas": count}}
        version = self._read_versions.pop(stream, None)
        if version:
            body["metadata"] = {"resourceVersion": version}
        await _call(
            self._what("patch", stream),
            self._apps.patch_namespaced_deployment_scale(
                self.deployments[stream],
                self.namespace,
                body,
                _content_type=MERGE_PATCH,
                _request_timeout=self.timeout,
            ),
            self.timeout,
        )

    async def close(self) -> None:
        await self.api.close()  # type: ignore[no-untyped-call]


class LeaseLeadership:
    """Leadership through a Lease, the way client-go's leader election does it.

    The holder renews ``spec.renewTime`` every tick. Another controller takes over only once
    the record it last saw has stood still for ``leaseDurationSeconds`` by its *own* clock,
    so clock skew between controllers does not matter. Writes carry the resourceVersion read,
    so of two candidates at most one wins. ``leaseTransitions`` is the fence: it grows with
    every new leader. A leader that cannot renew stops acting after two thirds of the
    duration, before anyone else may take over.
    """

    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        name: str = DEFAULT_LEASE,
        *,
        identity: str,
        duration_seconds: float = 15.0,
        timeout: float = 5.0,
    ) -> None:
        from kubernetes.aio.client import CoordinationV1Api

        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = max(1, round(duration_seconds))
        self.timeout = timeout
        self.fence: int | None = None
        self._leases = CoordinationV1Api(api)
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0

    async def hold(self) -> bool:
        """Take or keep the Lease; False while another controller holds it."""
        try:
            won = await self._try()
        except TargetError as exc:
            log.warning("leader election: %s", exc)
            won = False
            if (
                self.fence is not None
                and time.monotonic() - self._renewed_at < self.duration * 2 / 3
            ):
                return True  # still ours by our clock; others wait a whole duration
        if won:
            self._renewed_at = time.monotonic()
        elif self.fence is not None:
            log.warning("lost the leadership (fence %d)", self.fence)
            self.fence = None
        return won

    async def _try(self) -> bool:
        from kubernetes.aio.client import V1Lease, V1LeaseSpec, V1ObjectMeta

        what = f"lease {self.namespace}/{self.name}"
        now = datetime.now(UTC)
        try:
            lease = await self._read(f"get {what}")
        except TargetError as exc:
            if exc.status != 404:
                raise
            fresh = V1Lease(
                metadata=V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=self.duration,
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=0,
                ),
            )
            create = self._leases.create_namespaced_lease(
                self.namespace, fresh, _request_timeout=self.timeout
            )
            return await self._won(f"create {what}", create, transitions=0)
        spec = lease.spec or V1LeaseSpec()
        version = lease.metadata.resource_version if lease.metadata else None
        transitions = spec.lease_transitions or 0
        stamp = now.isoformat()
        if spec.holder_identity == self.identity:
            change = {"renewTime": stamp, "leaseDurationSeconds": self.duration}
            return await self._won(f"renew {what}", self._patch(version, change), transitions)
        observed = (spec.holder_identity, spec.renew_time, transitions)
        if observed != self._observed:
            self._observed, self._observed_at = observed, time.monotonic()
        duration = spec.lease_duration_seconds or self.duration
        if spec.holder_identity and time.monotonic() - self._observed_at < duration:
            return False
        change = {
            "holderIdentity": self.identity,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseDurationSeconds": self.duration,
            "leaseTransitions": transitions + 1,
        }
        return await self._won(f"take over {what}", self._patch(version, change), transitions + 1)

    async def _read(self, what: str) -> Any:
        return await _call(
            what,
            self._leases.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.timeout
            ),
            self.timeout,
        )

    def _patch(self, version: str | None, spec: dict[str, Any]) -> Awaitable[Any]:
        """A merge patch of the Lease's spec; with the version read, the API server refuses it
        (409) if another controller wrote in between."""
        body: dict[str, Any] = {"spec": spec}
        if version:
            body["metadata"] = {"resourceVersion": version}
        return self._leases.patch_namespaced_lease(
            self.name,
            self.namespace,
            body,
            _content_type=MERGE_PATCH,
            _request_timeout=self.timeout,
        )

    async def _won(self, what: str, write: Awaitable[Any], transitions: int) -> bool:
        try:
            await _call(what, write, self.timeout)
        except TargetError as exc:
            if exc.status == 409:
                return False  # another controller wrote first
            raise
        if self.fence != transitions:
            log.info("leading the autoscaling (lease %s, fence %d)", self.name, transitions)
        self.fence = transitions
        return True

    async def still_leading(self) -> bool:
        """By this controller's clock: renewed within two thirds of the duration, before any
        other candidate may take over."""
        return self.fence is not None and time.monotonic() - self._renewed_at < (
            self.duration * 2 / 3
        )

    async def release(self) -> None:
        """Give the Lease up on a clean stop, so the next leader need not wait it out."""
        if self.fence is None:
            return
        try:
            lease = await self._read("release lease")
            if lease.spec is not None and lease.spec.holder_identity == self.identity:
                version = lease.metadata.resource_version if lease.metadata else None
                change = {"holderIdentity": None, "leaseDurationSeconds": 1}
                await _call("release lease", self._patch(version, change), self.timeout)
        except TargetError as exc:
            log.warning("could not release the leadership: %s", exc)
        self.fence = None
