"""Locust clients for `benchmarks/coordinator_load.py` (configured by its environment).

Each user reads a site's VMs (100 a page), reads one VM, asks for a VM to be
created, or reads `/v1/status` (6:3:1:1), at `NOVA_RATE` requests a second on average
(exponential waits: independent clients, not a lockstep).
`/v1/status` is the baseline: a request that touches the database once, so
the others' figures can be read against the server's own cost on the same,
shared machine in the same run. With `NOVA_SAMPLES` set, every request's
start (epoch seconds), name, milliseconds and failure go to that file as JSON
when locust quits: the benchmark takes its percentiles from them, exactly
and over the window it chooses.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from typing import Any

from locust import FastHttpUser, events, task

TOKEN = os.environ.get("NOVA_TOKEN", "")
SITES = int(os.environ.get("NOVA_SITES", "100"))
VM_IDS = os.environ.get("NOVA_VM_IDS", "").split(",")
RATE = float(os.environ.get("NOVA_RATE", "4"))
SAMPLES = os.environ.get("NOVA_SAMPLES", "")
_names = itertools.count()
_samples: list[tuple[float, str, float, bool]] = []


@events.request.add_listener
def _sample(name: str, response_time: float, exception: Any, start_time: float, **_: Any) -> None:
    _samples.append((start_time, name, response_time, exception is not None))


@events.quitting.add_listener
def _write_samples(**_: Any) -> None:
    if SAMPLES:
        with open(SAMPLES, "w") as out:
            json.dump(_samples, out)


def poisson_wait(user: FastHttpUser) -> float:
    """Seconds until the user's next request: exponential, mean 1/RATE.

    Each user is then an independent client whose requests arrive as a
    Poisson process. With a constant pace instead, the 50 users, spawned
    together, stay in lockstep and send 50 requests in the same instant four
    times a second, so the median request waits for half of that burst.
    """
    return random.expovariate(RATE)


class ApiUser(FastHttpUser):
    wait_time = poisson_wait

    default_headers = {"Authorization": f"Bearer {TOKEN}"}

    @task(6)
    def list_vms(self) -> None:
        site = f"site{random.randrange(SITES):03}"
        self.client.get(f"/v1/vms?site={site}&state=running&per_page=100", name="GET /v1/vms?site")

    @task(3)
    def one_vm(self) -> None:
        self.client.get(f"/v1/vms/{random.choice(VM_IDS)}", name="GET /v1/vms/{id}")

    @task(1)
    def baseline(self) -> None:
        self.client.get("/v1/status", name="GET /v1/status (baseline)")

    @task(1)
    def create_vm(self) -> None:
        body = {
            "name": f"bench-{os.getpid()}-{next(_names)}",
            "vcpus": 1,
            "memory_mib": 128,
            "kernel": "/boot/vmlinuz",
        }
        self.client.post("/v1/vms", json=body, name="POST /v1/vms")
