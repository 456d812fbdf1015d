"""Signed membership claims: only the node a claim is about may say it lives or leaves.

A membership claim is a statement about one node at one incarnation. Who
must have signed it, and over exactly which bytes, is fixed here:

| claim   | signed by             | over                                        |
|---------|-----------------------|---------------------------------------------|
| Alive   | the node it is about  | node id, incarnation, address               |
| Leave   | the node it is about  | node id, incarnation                        |
| Suspect | its accuser (`by`)    | node id, incarnation, accuser               |
| Dead    | its accuser (`by`)    | node id, incarnation, accuser               |

So a relay cannot forge anyone's liveness or address, nor accuse in
another member's name; an accuser can accuse only at an incarnation the
accused itself signed (the receiver's rule, in the membership core), so no
claim can push a node's incarnation out of its reach.

The signed bytes are a msgpack array that starts with a domain tag, so a
claim signature can never be replayed as a record signature (records are
msgpack maps) or as a signature of another kind of claim. The claim's own
`signature` field is not part of what is signed.
"""

from __future__ import annotations

import msgpack

from .keys import Ed25519PrivateKey, Ed25519PublicKey, NodeKey, signature_valid
from .messages import Alive, Dead, Leave, MemberDigest, MemberState, Suspect

DOMAIN = "novacron-claim/1"

Claim = Alive | Suspect | Dead | Leave


def claim_bytes(claim: Claim) -> bytes:
    """The exact bytes a claim's signer signs."""
    if isinstance(claim, Alive):
        fields: list[object] = ["alive", claim.node_id, claim.incarnation, claim.address]
    elif isinstance(claim, Leave):
        fields = ["leave", claim.node_id, claim.incarnation]
    else:
        fields = [claim.TYPE, claim.node_id, claim.incarnation, claim.by]
    return msgpack.packb([DOMAIN, *fields], use_bin_type=True)  # type: ignore[no-any-return]


def signer_of(claim: Claim) -> str:
    """The node whose key must have signed `claim`."""
    return claim.by if isinstance(claim, Suspect | Dead) else claim.node_id


def sign_claim(key: NodeKey | Ed25519PrivateKey, claim: Claim) -> bytes:
    """The signature of `claim` (its `signature` field ignored) with the signer's key."""
    signing = key.signing if isinstance(key, NodeKey) else key
    return signing.sign(claim_bytes(claim))


def claim_valid(public: Ed25519PublicKey, claim: Claim) -> bool:
    """Whether `claim.signature` is its signer's signature (pass the signer's key)."""
    return signature_valid(public, claim.signature, claim_bytes(claim))


def line_claim(line: MemberDigest) -> Alive | Leave:
    """The claim a push-pull line carries the signature of.

    A line of a left member carries the member's Leave; any other line the
    member's Alive at the line's incarnation and address (a suspicion or a
    failure is vouched for by the peer that sends the line, not signed),
    with the line's certificate, which travels beside the signature as it does
    on an Alive.
    """
    if line.state is MemberState.LEFT:
        return Leave(line.node_id, line.incarnation, signature=line.signature)
    return Alive(line.node_id, line.incarnation, line.address, line.certificate, line.signature)
