"""BIDS: where the official exporter puts a curated project's files, as pure rules."""

from fwfs.bids.rules import ERRORS_NAME, BidsTree, Entry, build, sidecar_json

__all__ = ["ERRORS_NAME", "BidsTree", "Entry", "build", "sidecar_json"]
