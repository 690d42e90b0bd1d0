"""Locust load test for the broker (for users who load-test with Locust).

Not part of the test dependencies: ``pip install locust`` first. Importing this file has
no side effects beyond defining the user class. Point it at a running broker (for
example ``agent-token-broker dev`` on 127.0.0.1:5000):

    locust -f loadtests/locustfile.py --host http://127.0.0.1:5000 \
        --users 50 --spawn-rate 10 --run-time 1m --headless

Environment (all optional):
    BROKER_AGENTS       comma-separated agent identity ids (default: the demo tenant's two agents)
    BROKER_APIS         comma-separated downstream API names (default: graph)
    BROKER_USER_TOKEN   an inbound user token (aud = the blueprint) to add agent OBO requests
    BROKER_AGENT_USER   an agent user UPN to add agent-user requests (with the first agent)

Locust's Python client is far slower than the broker; for throughput figures use
``python -m loadtests.bench`` (wrk). Locust is useful for realistic user mixes and ramps.
"""

from __future__ import annotations

import os
import random
from typing import Any

try:
    from locust import HttpUser, between, task
except ImportError:  # importable without Locust (the test suite does not install it)
    HttpUser = None

DEMO_AGENTS = "a1a1a1a1-0001-4e6f-9a1b-1c2d3e4f5a61,a2a2a2a2-0002-4e6f-9a1b-1c2d3e4f5a62"


def _list(name: str, default: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


def _define_user() -> Any:
    if HttpUser is None:
        return None

    class BrokerUser(HttpUser):  # type: ignore[misc,valid-type]
        """An agent asking its sidecar for tokens: autonomous, and OBO / agent user when configured."""

        wait_time = between(0.0, 0.01)

        def on_start(self) -> None:
            self.agents = _list("BROKER_AGENTS", DEMO_AGENTS)
            self.apis = _list("BROKER_APIS", "graph")
            self.user_token = os.environ.get("BROKER_USER_TOKEN", "")
            self.agent_user = os.environ.get("BROKER_AGENT_USER", "")

        @task(5)
        def autonomous(self) -> None:
            agent, api = random.choice(self.agents), random.choice(self.apis)
            self.client.get(f"/AuthorizationHeaderUnauthenticated/{api}?AgentIdentity={agent}",
                            name="/AuthorizationHeaderUnauthenticated/[api] (autonomous)")

        @task(3)
        def obo(self) -> None:
            if not self.user_token:
                return
            agent = random.choice(self.agents)
            self.client.get(f"/AuthorizationHeader/{self.apis[0]}?AgentIdentity={agent}",
                            headers={"Authorization": f"Bearer {self.user_token}"},
                            name="/AuthorizationHeader/[api] (agent OBO)")

        @task(2)
        def agent_user_token(self) -> None:
            if not self.agent_user:
                return
            self.client.get(f"/AuthorizationHeaderUnauthenticated/{self.apis[0]}?AgentIdentity={self.agents[0]}"
                            f"&AgentUsername={self.agent_user}", name="/AuthorizationHeaderUnauthenticated/[api] (agent user)")

    return BrokerUser


BrokerUser = _define_user()
