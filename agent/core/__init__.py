"""Sans-IO state machines of the agent: input messages and time, output sends and events.

Membership and state gossip, one concern per module:

- `config`: `MembershipConfig`, the protocol's tunables;
- `node`: `MembershipNode`, the public entry point composing the rest;
- `members`: the copy-on-write member table and the probe order;
- `transitions`: the Alive/Suspect/Dead/Leave rules as pure decisions;
- `suspicion`: suspicion timeouts (pure math) and confirmations;
- `awareness`: Lifeguard local health;
- `broadcast`: the retransmit-limited gossip queue;
- `probe`: bookkeeping of direct and indirect probes;
- `records`: signed records and the rule for accepting one;
- `pushpull`: anti-entropy digests and deltas;
- `snapshot`: a shared pre-converged view for starting many nodes;
- `stats`: counters; `events`: what the core reports to its driver.
"""
