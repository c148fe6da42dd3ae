"""Simulated agents for rollout tests and the bench: real MQTT clients, real HTTP downloads.

Each :class:`SimAgent` is a paho client (clean session, last will = offline status) that publishes
a retained online :class:`AgentStatus`, subscribes to its ``desired`` topic and, on a desired
model, downloads the bundle over HTTP with the agent token, checks its sha256 and publishes
``downloading`` then ``activated`` (or ``failed`` when told to fail) :class:`ModelEvent` s plus an
updated status, as the real agent does. Hundreds of clients are driven by a few threads with
``poll()`` (paho's external-loop API: ``loop_read`` / ``loop_write`` / ``loop_misc``), and downloads
run on a small thread pool, so 500 agents do not mean 500 busy threads.
"""

from __future__ import annotations

import hashlib
import os
import select
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import requests

from shared import topics
from shared.schemas import AgentState, AgentStatus, DesiredModel, ModelEvent, ModelEventKind, parse_payload


@dataclass
class SimAgent:
    agent_id: str
    lab: str = ""
    model_name: str | None = "leuko"
    model_version: str | None = "1.0.0"
    fail: bool = False  # report `failed` instead of activating
    client: mqtt.Client | None = None
    activated: list[str] = field(default_factory=list)  # versions activated, in order
    failed: list[str] = field(default_factory=list)
    desired_seen: list[DesiredModel] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one model update at a time

    def status(self, state: AgentState = AgentState.ONLINE) -> AgentStatus:
        return AgentStatus(
            agent_id=self.agent_id,
            state=state,
            lab=self.lab,
            model_name=self.model_name,
            model_version=self.model_version,
            device="SIM",
        )


class SimFleet:
    """Simulated agents against a broker (``host``:``port``) and a hub (``hub_url``, agent ``token``)."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        loop_threads: int = 4,
        http_workers: int = 8,
        prefix: str = "sim",
    ) -> None:
        self.host, self.port, self.token = host, port, token
        self.run = uuid.uuid4().hex[:6]
        self.prefix = prefix
        self.agents: dict[str, SimAgent] = {}
        self._shards: list[list[mqtt.Client]] = [[] for _ in range(loop_threads)]
        # writes from the download threads only queue a packet and wake the shard's poll() via
        # this pipe; the loop thread owning the client does every socket write
        self._wake = [os.pipe() for _ in range(loop_threads)]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=http_workers, thread_name_prefix="sim-http")
        self._local = threading.local()
        self._jobs: list[Future[None]] = []
        self.downloads = 0
        self._threads = [
            threading.Thread(target=self._drive, args=(i,), name=f"sim-loop-{i}", daemon=True)
            for i in range(loop_threads)
        ]
        for t in self._threads:
            t.start()

    # --- fleet management -------------------------------------------------------------------
    def add(self, n: int, lab: str = "", fail: bool = False, **kw: Any) -> list[SimAgent]:
        """Define ``n`` agents (not connected yet) with unique ids."""
        out = []
        for _ in range(n):
            agent_id = f"{self.prefix}-{self.run}-{len(self.agents):04d}"
            agent = SimAgent(agent_id=agent_id, lab=lab, fail=fail, **kw)
            self.agents[agent_id] = agent
            out.append(agent)
        return out

    def connect(self, agents: Iterable[SimAgent] | None = None) -> None:
        """Connect (blocking TCP connect; CONNACK, subscribe and status follow on the loop threads)."""
        for i, agent in enumerate(agents if agents is not None else self.agents.values()):
            c = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=f"{agent.agent_id}", clean_session=True
            )
            c.user_data_set(agent)
            c.will_set(
                topics.build(agent.agent_id, topics.Kind.STATUS),
                agent.status(AgentState.OFFLINE).to_json(),
                qos=1,
                retain=True,
            )
            c.on_connect = self._on_connect
            c.on_message = self._on_message
            c.connect(self.host, self.port, keepalive=60)
            shard = i % len(self._shards)
            wake_fd = self._wake[shard][1]
            c.on_socket_register_write = lambda _c, _u, _s, fd=wake_fd: os.write(fd, b"w")
            agent.client = c
            with self._lock:
                self._shards[shard].append(c)

    def disconnect(self, agent: SimAgent) -> None:
        """Go offline cleanly (publishes the offline status first, like a stopping agent)."""
        c = agent.client
        if c is None:
            return
        c.publish(
            topics.build(agent.agent_id, topics.Kind.STATUS),
            agent.status(AgentState.OFFLINE).to_json(),
            1,
            True,
        ).wait_for_publish(5)
        with self._lock:
            for shard in self._shards:
                if c in shard:
                    shard.remove(c)
        c.disconnect()
        agent.client = None

    def connected(self) -> int:
        return sum(1 for a in self.agents.values() if a.client is not None and a.client.is_connected())

    def close(self) -> None:
        """Stop every client and clear the retained status + desired messages of every agent."""
        for agent in list(self.agents.values()):
            if agent.client is not None:
                with self._lock:
                    for shard in self._shards:
                        if agent.client in shard:
                            shard.remove(agent.client)
                agent.client.disconnect()
                agent.client = None
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for r, w in self._wake:
            os.close(r)
            os.close(w)
        clear_retained(
            self.port,
            [
                topics.build(a, kind)
                for a in self.agents
                for kind in (topics.Kind.STATUS, topics.Kind.DESIRED)
            ],
            host=self.host,
        )

    # --- paho callbacks (loop threads) --------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, agent: SimAgent, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(topics.build(agent.agent_id, topics.Kind.DESIRED), qos=1)
        client.publish(topics.build(agent.agent_id, topics.Kind.STATUS), agent.status().to_json(), 1, True)

    def _on_message(self, client: mqtt.Client, agent: SimAgent, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return  # a cleared retained desired state
        desired = parse_payload(topics.Kind.DESIRED, bytes(msg.payload))
        assert isinstance(desired, DesiredModel)
        agent.desired_seen.append(desired)
        with self._lock:
            self._jobs.append(self._pool.submit(self._apply, agent, desired))

    # --- work ---------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["Authorization"] = f"Bearer {self.token}"
            self._local.session = s
        return s

    def _event(self, agent: SimAgent, kind: ModelEventKind, desired: DesiredModel, detail: str = "") -> None:
        client = agent.client
        if client is None:
            return
        event = ModelEvent(
            agent_id=agent.agent_id,
            event=kind,
            model_name=desired.model_name,
            model_version=desired.model_version,
            rollout_id=desired.rollout_id,
            detail=detail,
        )
        client.publish(topics.build(agent.agent_id, topics.Kind.EVENTS), event.to_json(), qos=1)

    def _apply(self, agent: SimAgent, desired: DesiredModel) -> None:
        with agent.lock:
            # like the real agent: only the newest desired state matters, and the running model is kept
            if desired is not agent.desired_seen[-1]:
                return
            if (desired.model_name, desired.model_version) == (agent.model_name, agent.model_version):
                return
            self._apply_locked(agent, desired)

    def _apply_locked(self, agent: SimAgent, desired: DesiredModel) -> None:
        self._event(agent, ModelEventKind.DOWNLOADING, desired, desired.bundle_url)
        try:
            resp = self._session().get(desired.bundle_url, timeout=30)
            self.downloads += 1
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code} from {desired.bundle_url}")
            digest = hashlib.sha256(resp.content).hexdigest()
            if digest != desired.bundle_sha256:
                raise RuntimeError(f"sha256 {digest} differs from {desired.bundle_sha256}")
            if agent.fail:
                raise RuntimeError("simulated failure: smoke test did not reproduce the reference output")
        except (requests.RequestException, RuntimeError) as exc:
            agent.failed.append(desired.model_version)
            agent.errors.append(str(exc))
            self._event(agent, ModelEventKind.FAILED, desired, str(exc))
            return
        agent.model_name, agent.model_version = desired.model_name, desired.model_version
        agent.activated.append(desired.model_version)
        self._event(agent, ModelEventKind.ACTIVATED, desired, "device SIM")
        if agent.client is not None:
            status = agent.status()
            agent.client.publish(topics.build(agent.agent_id, topics.Kind.STATUS), status.to_json(), 1, True)

    # --- the poll loops -----------------------------------------------------------------------
    def _drive(self, index: int) -> None:
        last_misc = 0.0
        wake_r = self._wake[index][0]
        while not self._stop.is_set():
            with self._lock:
                clients = list(self._shards[index])
            by_fd: dict[int, mqtt.Client] = {}
            poller = select.poll()
            for c in clients:
                sock = c.socket()
                if sock is None:
                    continue
                fd = sock.fileno()
                by_fd[fd] = c
                poller.register(fd, select.POLLIN | (select.POLLOUT if c.want_write() else 0))
            if not by_fd:
                self._stop.wait(0.05)
                continue
            poller.register(wake_r, select.POLLIN)
            for fd, ev in poller.poll(50):
                if fd == wake_r:
                    os.read(wake_r, 4096)
                    continue
                c = by_fd[fd]
                if ev & (select.POLLIN | select.POLLERR | select.POLLHUP):
                    c.loop_read()
                if ev & select.POLLOUT:
                    c.loop_write()
            now = time.monotonic()
            if now - last_misc > 0.5:
                last_misc = now
                for c in clients:
                    c.loop_misc()


def clear_retained(port: int, topic_list: list[str], host: str = "127.0.0.1") -> None:
    """Remove retained messages (publish an empty retained payload on each topic)."""
    if not topic_list:
        return
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"clear-{uuid.uuid4().hex[:8]}")
    c.connect(host, port)
    c.loop_start()
    try:
        infos = [c.publish(t, b"", qos=1, retain=True) for t in topic_list]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def clear_session(port: int, client_id: str, host: str = "127.0.0.1") -> None:
    """Drop a persistent session so the broker stops queueing for it."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.connect(host, port)
    c.loop_start()
    c.disconnect()
    c.loop_stop()
