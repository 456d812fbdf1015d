"""The wire: message catalogue, msgpack codec, identities and certificates.

Pure code: no sockets, no clock (callers pass `now`), no global randomness.
"""
