"""The sandbox: a Flywheel-compatible local site (SQLite metadata, file bytes on disk).

It shares no code with the client side of fwfs: it is the independent other end of the wire.
"""
