"""fwfs: a FUSE filesystem for Flywheel."""

__version__ = "0.1.0"
