"""The dependency rule of docs/ARCHITECTURE.md, checked on the source: imports go downwards."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fwfs"

# module -> fwfs modules it may import. Anything not listed may import nothing from fwfs
# except the package itself (for __version__).
ALLOWED: dict[str, set[str]] = {
    # `fwfs cache stats|clear` works on the disk cache's directory itself.
    "cli": {
        "sandbox",
        "demo",
        "wiring",
        "daemon",
        "doctor",
        "options",
        "control",
        "diskcache",
        "prefetch",
    },
    # `fwfs prefetch`: through a mount (its control channel), or an in-process model built
    # as the wiring builds one; beside the wiring, below the CLI.
    # diskcache: what a selection takes on disk, by the cache's own count.
    "prefetch": {
        "client",
        "config",
        "control",
        "daemon",
        "diskcache",
        "errors",
        "fs",
        "inprocess",
        "options",
    },
    # Signing in and the model's settings for every in-process user of the model (the
    # mount's wiring, prefetch, flywheel://); never fuse_ops, so never mfusepy, which
    # raises on import where libfuse is missing. daemon: the cache home.
    "inprocess": {"client", "config", "daemon", "errors", "options"},
    # `flywheel://` (fsspec): a second adapter beside fuse_ops, over the same model, built
    # as prefetch builds its in-process one (signed in by `inprocess`). daemon: the cache
    # home.
    "remote": {"client", "config", "daemon", "errors", "fs", "inprocess", "options", "uploads"},
    # A project's NIfTI headers as a table, in one process or on Dask's workers: over
    # `flywheel://` (or any fsspec filesystem, a mount's included), beside the adapters.
    "cohort": {"remote"},
    # `fwfs status` and `fwfs refresh`, both sides of the socket: the standard library and
    # where the daemon's socket is; never the model or mfusepy (the CLI side imports it).
    "control": {"daemon", "linux"},
    # The daemon's answers to `fwfs status` and `fwfs refresh`, gathered from the layers
    # that count; started by the wiring beside the mount.
    "report": {"client", "control", "daemon", "fs", "fuse_ops", "uploads"},
    # `fwfs doctor`: beside the mount's wiring, below the CLI; HTTP only through
    # FlywheelClient.probe.
    "doctor": {"client", "config", "errors", "models"},
    # `fwfs demo`: the sandbox site and a mount of it, wired as `fwfs mount` wires one.
    "demo": {"config", "inprocess", "sandbox", "wiring"},
    # `fwfs mount`: the configs from the flags, the client and the model, mounted.
    "wiring": {
        "client",
        "config",
        "daemon",
        "errors",
        "fs",
        "fuse_ops",
        "inprocess",
        "linux",
        "report",
        "site",
        # The upload policy FlywheelFS is handed, and the spool checked before forking.
        "uploads",
    },
    # The mount's process: readiness pipe, pid file, unmount and wait (the spool's journal
    # says whether uploads run).
    "daemon": {"uploads"},
    # glibc and sysfs tuning, `-o` parsing: nothing of fwfs.
    "linux": set(),
    "fuse_ops": {"config", "errors", "fs", "fuse_compat"},
    "fuse_compat": set(),
    # The model reaches the site only through the SiteClient protocol, never fwfs.client:
    # it must run over any object that keeps the contract (an in-process site, a fault
    # injector), not only over HTTP.
    "fs": {
        "archives",
        "bids",
        "blockcache",
        "config",
        "diskcache",
        "errors",
        "fs",
        "models",
        "paths",
        "rangedfile",
        "site",
        "uploads",
    },
    "uploads": {"config", "errors", "models"},
    # The BIDS exporter's rules, pure functions over the site's metadata: beside archives/,
    # below the model; the models it reads and the name rule, no I/O.
    "bids": {"bids", "models", "paths"},
    "archives": {"archives", "blockcache", "errors", "models", "paths", "rangedfile"},
    "rangedfile": {"blockcache"},
    "blockcache": set(),
    # The disk cache: the block cache's second tier, beside it; only the errno table.
    "diskcache": {"diskcache", "errors"},
    "client": {"config", "errors", "models"},
    "site": {"models"},
    "models": set(),
    "paths": set(),
    "errors": set(),
    # The typed configs take their defaults from the option table, which imports nothing.
    "config": {"errors", "options"},
    "options": set(),
    "sandbox": {"sandbox"},
    # Test support (fault injection, the site and mount runners): it stands beside the
    # product, over the seams it tests; nothing in the product imports it.
    "testing": {"config", "errors", "linux", "models", "site", "testing"},
}
# Third-party imports reserved to one layer.
ONLY_IN = {"mfusepy": "fuse_compat", "requests": "client", "urllib3": "client"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downwards(path: Path) -> None:
    layer = _layer(path)
    assert layer in ALLOWED, f"{layer} is not placed in the layers of docs/ARCHITECTURE.md"
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "fwfs" and len(parts) > 1 and parts[1] != "__version__":
            target = parts[1]
            if (PACKAGE / target).is_dir() or (PACKAGE / f"{target}.py").exists():
                assert target in ALLOWED[layer] | {layer}, f"{layer} must not import fwfs.{target}"
        owner = ONLY_IN.get(parts[0])
        if owner is not None:
            assert layer == owner, f"only {owner} may import {parts[0]}, not {layer}"
