"""Membership and state gossip (SWIM with Lifeguard), one concern per module:

- `config`: `MembershipConfig`, the protocol's tunables;
- `node`: `MembershipNode`, the public entry point composing the rest;
- `members`: the copy-on-write member table and the probe order;
- `transitions`: the Alive/Suspect/Dead/Leave rules as pure decisions;
- `suspicion`: suspicion timeouts (pure math) and confirmations;
- `accusations`: how many accusations each member may make;
- `awareness`: Lifeguard local health;
- `broadcast`: the retransmit-limited gossip queue; `bandwidth`: its byte budget;
- `probe`: bookkeeping of direct and indirect probes;
- `records`: signed records and the rule for accepting one; `keyring`: the keys;
- `pushpull`: anti-entropy digests and deltas;
- `snapshot`: a shared pre-converged view for starting many nodes;
- `stats`: counters and histograms.
"""
