"""Sans-IO state machines of the agent: input messages and time, output sends and events.

Nothing here reads a clock, sleeps or does I/O; the daemon's shells, the
coordinator and every simulator drive the same code. One folder a mechanism:

- `membership/`: who is in the cluster and what each host's signed record says
  (SWIM with Lifeguard, gossip, push-pull, records);
- `migration/`: the live-migration saga of one host as source and as target,
  the target's reservations and phase table, where a VM runs after a fault,
  and the policy and cost of one migration;
- `placement/`: where a VM may go, and whether a migration may start there;
- `rebalancing/`: what a host moves to even out load, when it plans, and what a
  draining host moves next;
- `federation/`: the agent's half of the coordinator link: the gateway choice,
  the link's stream, commands run at most once;
- `observability/`: CloudEvents and trace spans made from the core's events.

Shared by all of them: `events` (what the core reports to its driver),
`refusals` (why a control will not act) and `templates` (signed VM templates).
"""
