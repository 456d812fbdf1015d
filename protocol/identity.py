"""Node identity in one import: keys, certificates, revocations and signed records.

The mechanisms live in one module each (`keys`, `certificates`, `revocation`,
`records`, `keyfiles`); this module re-exports what callers need, so the
daemon and the ZAP handler write `identity.verify_certificate(...)` and
`identity.verify_record(...)`.
"""

from __future__ import annotations

from .certificates import (
    Certificate,
    CertificateBody,
    check_node_id,
    decode_certificate,
    issue_certificate,
    verify_certificate,
)
from .keys import NodeKey, curve_z85, key_id
from .records import sign_record, verify_record
from .revocation import RevocationList, sign_revocation_list, verify_revocation_list

__all__ = [
    "Certificate",
    "CertificateBody",
    "NodeKey",
    "RevocationList",
    "check_node_id",
    "curve_z85",
    "decode_certificate",
    "issue_certificate",
    "key_id",
    "sign_record",
    "sign_revocation_list",
    "verify_certificate",
    "verify_record",
    "verify_revocation_list",
]
