"""Template images in pieces, sans-IO: the signed chunk map that lets a host check every
piece on its own (`chunkmap`), fetching the pieces from many peers at once,
checking each and avoiding peers that serve bad ones (`fetch`), who holds what
(`holders`), and a migration waiting for its target's fetch (`target_fetch`)."""
