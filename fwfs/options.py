"""The option table: every setting of fwfs, written once.

Each row names its flags (none for a setting fixed in the code), its default, its effect
and its cost, the commands that take it and the typed-config field whose default it is.
From the table come the argparse flags of `fwfs mount`, `demo`, `unmount`, `doctor`,
`status`, `cache` and `prefetch` (`add_arguments`), the defaults of `MountConfig`, `WalkAheadConfig`
and `ClientConfig` (`default`), docs/CONFIGURATION.md and the options table of README.md
(`python -m fwfs.options`; tests/unit/test_options.py checks both are current).

It sits below config.py and imports nothing from fwfs. The sandbox's own flags
(`fwfs serve`, and `fwfs demo`'s site) fill its `ServeOptions` and are documented in
docs/SANDBOX.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The reasons a site with an audit trail accepts for a delete: flywheel-sdk 23's
# ContainerDeleteReason, sent as the `delete_reason` query parameter.
DELETE_REASONS = (
    "duplicate_data",
    "data_is_not_part_of_study",
    "data_incomplete_or_corrupt",
    "data_structured_incorrectly",
    "data_has_been_exported_or_moved",
    "container_is_empty",
    "analysis_or_processing_failed_or_cancelled",
    "compliance_consent_withdrawn",
    "compliance_phi",
    "compliance_data_policy",
    "test_data",
    "packfile_cleanup",
)

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """A byte count with an optional K/M/G suffix (binary units): 64M, 1G, 4096."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if text and text[-1] in _UNITS:
            return int(float(text[:-1]) * _UNITS[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M)") from None


def parse_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text!r}")
    return value


def show_size(size: int) -> str:
    """The inverse of `parse_size` for whole units: 268435456 -> 256M."""
    for suffix in ("G", "M", "K"):
        if size and size % _UNITS[suffix] == 0:
            return f"{size // _UNITS[suffix]}{suffix}"
    return str(size)


@dataclass(frozen=True)
class Option:
    """One setting. ``name`` is the argparse dest. ``effect`` is the --help text: a
    ``{default}`` in it is the default as shown, ``{choices}`` the choices. ``field`` is
    the typed-config field ("MountConfig.metadata_ttl") that takes its default from
    ``default``; None when the setting is no config field's default (the CLI passes it
    on, or it only informs a process)."""

    name: str
    flags: tuple[str, ...]
    default: Any
    effect: str
    cost: str
    commands: tuple[str, ...] = ("mount",)
    field: str | None = None
    env: str | None = None
    parse: Callable[[str], Any] | None = None
    action: str = "store"
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    # The default as a person reads it, when str(default) would not do.
    shown: str | None = None
    size: bool = False

    @property
    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.action == "store_true":
            return "on" if self.default else "off"
        if self.size:
            return show_size(self.default)
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return "none" if self.default is None else str(self.default)

    @property
    def help(self) -> str:
        return self.effect.format(default=self.shown_default, choices=", ".join(self.choices or ()))


def _fixed(
    name: str, default: Any, effect: str, cost: str, field: str, size: bool = False
) -> Option:
    """A setting fixed in the code: no flag, no command; the default of `field`."""
    return Option(name, (), default, effect, cost, commands=(), field=field, size=size)


_MOUNT_DEMO = ("mount", "demo")

OPTIONS: tuple[Option, ...] = (
    Option(
        "api_key",
        ("--api-key",),
        None,
        "Flywheel API key (visible in `ps`: prefer FWFS_API_KEY or `fw login`)",
        "none; on the command line, other users can read it in `ps`",
        commands=("mount", "doctor", "prefetch"),
        env="FWFS_API_KEY",
        shown="$FWFS_API_KEY, then `fw login`'s user.json",
    ),
    Option(
        "foreground",
        ("--foreground", "-f"),
        False,
        "do not go to the background",
        "the terminal stays taken until unmount; the log goes to it unless --log-file",
        action="store_true",
    ),
    Option(
        "read_only",
        ("--read-only",),
        False,
        "refuse every write (EROFS)",
        "none; no spool is used",
        action="store_true",
    ),
    Option(
        "allow_delete",
        ("--allow-delete",),
        False,
        "let rm and rmdir delete files and containers on the site (default: EPERM)",
        "an `rm -r` deletes on the site, for every user of it",
        field="MountConfig.allow_delete",
        action="store_true",
    ),
    Option(
        "delete_reason",
        ("--delete-reason",),
        None,
        "the reason sent with every delete, which sites with an audit trail require "
        "(one of: {choices})",
        "none; without it, deletes on a site with an audit trail fail",
        field="MountConfig.delete_reason",
        metavar="REASON",
        choices=DELETE_REASONS,
    ),
    Option(
        "retry_failed_uploads",
        ("--retry-failed-uploads",),
        False,
        "at mount, upload again the files earlier failed uploads left in the spool's "
        "recovery/ folder (by default they are only listed in the log)",
        "those uploads share the link with the mount's own requests while they run",
        field="MountConfig.retry_recovery",
        action="store_true",
    ),
    Option(
        "spool_dir",
        ("--spool-dir",),
        None,
        "where written files wait for upload, and failed uploads are kept (default: {default})",
        "local disk: a written file's whole size until its upload is done; failed uploads "
        "stay in its recovery/ folder",
        parse=Path,
        shown="~/.cache/fwfs/spool/<site and mountpoint>",
    ),
    Option(
        "fuse_options",
        ("-o",),
        (),
        "FUSE mount options, e.g. allow_other",
        "allow_other lets every local user through the mount (with the mounting user's "
        "key); it needs user_allow_other in /etc/fuse.conf",
        action="append",
        metavar="OPT[,OPT...]",
        shown="none",
    ),
    Option(
        "metadata_ttl",
        ("--metadata-ttl",),
        30.0,
        "seconds a directory listing is trusted (default {default})",
        "lower: changes made elsewhere show sooner, and a directory in use is listed again "
        "(one request or more) that much more often; higher: fewer requests, older listings",
        commands=_MOUNT_DEMO,
        field="MountConfig.metadata_ttl",
        parse=float,
    ),
    Option(
        "negative_ttl",
        ("--negative-ttl",),
        5.0,
        "seconds a failed <id:...> lookup is remembered (default {default})",
        "lower: an id that appears is found sooner; a name looked up again and again costs "
        "one POST /api/lookup per this many seconds",
        field="MountConfig.negative_ttl",
        parse=float,
    ),
    Option(
        "cache_size",
        ("--cache-size",),
        256 << 20,
        "memory for cached file blocks (default {default})",
        "memory: the daemon's peak RSS stays under this plus 150 MiB (docs/BENCHMARKS.md); "
        "smaller also shrinks readahead (at most a quarter of it) and walk-ahead (an eighth), "
        "and bytes read again are fetched again",
        commands=_MOUNT_DEMO,
        field="MountConfig.cache_size",
        parse=parse_size,
        size=True,
    ),
    Option(
        "disk_cache",
        ("--disk-cache",),
        0,
        "also keep file blocks on local disk, up to SIZE, across unmounts and shared by the "
        "mounts of the site (e.g. 20G; 0: off; default {default}). Off by default because "
        "it puts patient data on this machine's disk (docs/SEMANTICS.md, Caching)",
        "disk: up to SIZE under --cache-dir, readable only by you; a block read again, "
        "after a remount too, costs no request",
        commands=("mount", "prefetch"),
        field="MountConfig.disk_cache",
        parse=parse_size,
        metavar="SIZE",
        shown="0 (off)",
        size=True,
    ),
    Option(
        "cache_dir",
        ("--cache-dir",),
        None,
        "where --disk-cache keeps blocks (default: {default}); mounts may share one",
        "none; made with mode 0700, and a directory of another user is refused",
        commands=("mount", "cache", "prefetch"),
        parse=Path,
        metavar="DIR",
        shown="~/.cache/fwfs/cache/<site host>",
    ),
    Option(
        "mount",
        ("--mount",),
        None,
        "prefetch into the disk cache of the running mount at MP, reading through it (the "
        "default when every PATH is inside an fwfs mount); PATHs not inside it are site "
        "paths under MP",
        "the mount's link and daemon are busy while it runs; a mount without --disk-cache "
        "is refused",
        commands=("prefetch",),
        parse=Path,
        metavar="MP",
    ),
    Option(
        "jobs",
        ("--jobs", "-j"),
        8,
        "files read at once (default {default})",
        "each file in flight holds up to its readahead window of memory; fewer than 4 "
        "may not fill a long fat link",
        commands=("prefetch",),
        parse=parse_count,
        metavar="N",
    ),
    Option(
        "walk_ahead",
        ("--walk-ahead",),
        16,
        "when a program reads a directory's files in order, fetch the next N ahead "
        "(0: never; default {default})",
        "bytes fetched for files the program may not open, within the walk-ahead budget "
        "below; 0 costs a round trip per file",
        field="WalkAheadConfig.files",
        parse=parse_count,
        metavar="N",
    ),
    Option(
        "list_archives",
        ("--list-archives",),
        False,
        "list each zip's member directory <name>.d (it is always reachable)",
        "walks (`find`, `du`, `ls -R`) go into every zip: its central directory is fetched",
        field="MountConfig.list_archives",
        action="store_true",
    ),
    Option(
        "no_archives",
        ("--no-archives",),
        False,
        "no member directories for zip archives",
        "none; members can then be read only by copying the whole zip",
        action="store_true",
    ),
    Option(
        "list_bids",
        ("--list-bids",),
        False,
        "list each project's BIDS view <project>.bids beside it (it is always reachable)",
        "walks (`find`, `du`, `ls -R`) of a group enter every project's view: three "
        "listing requests per project, more per 250 sessions or acquisitions",
        commands=_MOUNT_DEMO,
        field="MountConfig.list_bids",
        action="store_true",
    ),
    Option(
        "bids_sourcedata",
        ("--bids-sourcedata",),
        False,
        "show the files curated to sourcedata/ (the DICOM archives) in BIDS views, as "
        "the exporter's --source-data does",
        "none in requests; BIDS apps that index the whole tree see more files",
        commands=_MOUNT_DEMO,
        field="MountConfig.bids_sourcedata",
        action="store_true",
    ),
    Option(
        "log_file",
        ("--log-file",),
        None,
        "write the log here",
        "disk for the log (the API key is never in it); in the background, without it the "
        "log is lost",
        parse=Path,
    ),
    Option(
        "debug",
        ("--debug",),
        False,
        "log every request and FUSE call",
        "a line per request and per FUSE call: CPU and log size grow with the work",
        action="store_true",
    ),
    Option(
        "lazy",
        ("--lazy", "-z"),
        False,
        "detach now, finish when no longer busy",
        "programs with files open keep the daemon, and its uploads, running after the "
        "command returns",
        commands=("unmount",),
        action="store_true",
    ),
    Option(
        "timeout",
        ("--timeout",),
        3600.0,
        "seconds to wait for running uploads to finish (default {default})",
        "the command waits up to this long; an upload cut short stays in the spool for the "
        "next mount",
        commands=("unmount",),
        parse=float,
    ),
    Option(
        "json",
        ("--json",),
        False,
        "print the report as JSON, for scripts",
        "none; asking a mount costs it no request",
        commands=("status",),
        action="store_true",
    ),
    # Settings fixed in the code: no flag, but one default, here.
    _fixed(
        "block_size",
        128 << 10,
        "the unit of the block cache, of ranged reads and of st_blksize",
        "larger: fewer blocks to track, more bytes fetched for a small read",
        field="MountConfig.block_size",
        size=True,
    ),
    _fixed(
        "max_readahead",
        64 << 20,
        "the largest readahead window of a sequential read (it starts at 1 MiB and doubles; "
        "at most a quarter of --cache-size)",
        "memory, and bytes fetched that a program which stops reading never uses",
        field="MountConfig.max_readahead",
        size=True,
    ),
    _fixed(
        "read_threads",
        8,
        "threads fetching file bytes ahead of the reads (readahead, prefetch)",
        "a thread and a connection each",
        field="MountConfig.read_threads",
    ),
    _fixed(
        "walk_ahead_budget",
        16 << 20,
        "bytes fetched ahead by walk-ahead and not yet opened, over all walks (at most an "
        "eighth of --cache-size)",
        "memory within the block cache, and bytes fetched for files never opened",
        field="WalkAheadConfig.budget",
        size=True,
    ),
    _fixed(
        "walk_ahead_file_bytes",
        1 << 20,
        "walk-ahead fetches files up to this size whole, of larger ones at most this much",
        "bytes fetched for files never opened, or read only in part",
        field="WalkAheadConfig.file_bytes",
        size=True,
    ),
    _fixed(
        "walk_ahead_threads",
        16,
        "parallel walk-ahead fetches",
        "a thread and a connection each",
        field="WalkAheadConfig.threads",
    ),
    _fixed(
        "walk_ahead_idle",
        5.0,
        "seconds after its last in-order open that a walk still has the directories it "
        "lists fetched ahead",
        "requests for directories the program may not go into",
        field="WalkAheadConfig.idle",
    ),
    _fixed(
        "connect_timeout",
        10.0,
        "seconds to wait for a connection (per address DNS returns)",
        "lower: a slow site fails sooner; higher: a dead one is noticed later",
        field="ClientConfig.connect_timeout",
    ),
    _fixed(
        "read_timeout",
        30.0,
        "seconds to wait for each read of a response",
        "a site that stops answering holds a call this long before a retry",
        field="ClientConfig.read_timeout",
    ),
    _fixed(
        "total_timeout",
        60.0,
        "no retry starts after this many seconds since a call began (the checks at mount: 10 "
        "at most)",
        "a dead site fails a call after about this long plus one attempt (100 s with the "
        "timeouts above)",
        field="ClientConfig.total_timeout",
    ),
    _fixed(
        "retries",
        7,
        "retries of an idempotent request that failed (429, 502-504, dropped connections, "
        "read timeouts, short bodies)",
        "one more request each, within total_timeout",
        field="ClientConfig.retries",
    ),
    _fixed(
        "backoff_factor",
        0.5,
        "seconds: retry n waits up to backoff_factor * 2**n (full jitter), or Retry-After",
        "time before a retry",
        field="ClientConfig.backoff_factor",
    ),
    _fixed(
        "backoff_max",
        15.0,
        "seconds a retry waits at most (Retry-After included)",
        "time before a retry",
        field="ClientConfig.backoff_max",
    ),
    _fixed(
        "upload_attempts",
        3,
        "sends of each request of one upload at most, retries in place and restarts with a "
        "new ticket together (waits: 2 * backoff_factor, doubled each time); then close() "
        "fails with EIO and the bytes stay in the spool",
        "a failing upload holds close() through each wait; a failed part is sent again "
        "alone, not the whole file",
        field="ClientConfig.upload_attempts",
    ),
    _fixed(
        "pool_size",
        16,
        "keep-alive connections kept per host",
        "sockets; more requests in flight than this open and close connections",
        field="ClientConfig.pool_size",
    ),
    # The environment: read once, by the CLI, for the commands that reach a site.
    Option(
        "ca_file",
        (),
        None,
        "a CA bundle to trust instead of the OS store and certifi (FW_SSL_CERT_FILE wins)",
        "none",
        commands=("mount", "doctor", "prefetch"),
        field="TrustConfig.ca_file",
        env="FW_SSL_CERT_FILE, REQUESTS_CA_BUNDLE",
    ),
    Option(
        "os_ca_file",
        (),
        None,
        "where the OS trust store's bundle is, when not where OpenSSL looks",
        "none",
        commands=("mount", "doctor", "prefetch"),
        field="TrustConfig.os_ca_file",
        env="SSL_CERT_FILE",
    ),
    Option(
        "os_ca_dir",
        (),
        None,
        "where the OS trust store's hashed directory is, when not where OpenSSL looks",
        "none",
        commands=("mount", "doctor", "prefetch"),
        field="TrustConfig.os_ca_dir",
        env="SSL_CERT_DIR",
    ),
    Option(
        "cache_home",
        (),
        None,
        "where ~/.cache is: the default spool (fwfs/spool/), disk cache (fwfs/cache/), the "
        "daemons' pid files "
        "(fwfs/run/, for `fwfs unmount`) and control sockets (for `fwfs status`) are under it",
        "none",
        commands=("mount", "unmount", "status", "refresh", "cache", "prefetch"),
        env="XDG_CACHE_HOME",
        shown="~/.cache",
    ),
    Option(
        "user_home",
        (),
        None,
        "where `fw login` keeps its user.json (.config/flywheel/ under it)",
        "none",
        commands=("mount", "doctor", "prefetch"),
        env="FLYWHEEL_USER_HOME",
        shown="~",
    ),
)

_BY_NAME = {option.name: option for option in OPTIONS}
_BY_FIELD = {option.field: option for option in OPTIONS if option.field is not None}


def option(name: str) -> Option:
    return _BY_NAME[name]


def default(field: str) -> Any:
    """The default of a typed-config field ("MountConfig.cache_size"), from the table."""
    return _BY_FIELD[field].default


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of `command`, in the table's order."""
    for row in OPTIONS:
        if command not in row.commands or not row.flags:
            continue
        kwargs: dict[str, Any] = {"dest": row.name, "action": row.action, "help": row.help}
        # argparse appends to the default list itself: give it a list of its own.
        kwargs["default"] = list(row.default) if row.action == "append" else row.default
        if row.action != "store_true":
            for key in ("metavar", "choices"):
                if getattr(row, key) is not None:
                    kwargs[key] = getattr(row, key)
            if row.parse is not None:
                kwargs["type"] = row.parse
        parser.add_argument(*row.flags, **kwargs)


def _cell(text: str) -> str:
    """Markdown for a table cell: `<name>` outside code would read as an HTML tag."""
    parts = text.replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _env_effect(row: Option) -> str:
    if row.flags:
        return f"`{row.flags[0]}`, when the flag is not given"
    return row.help


def _flags(row: Option) -> str:
    if not row.flags:
        return "(fixed)"
    value = "" if row.action == "store_true" else f" {row.metavar or row.name.upper()}"
    return ", ".join(f"`{flag}{value if i == 0 else ''}`" for i, flag in enumerate(row.flags))


def _rows(rows: list[Option], columns: tuple[str, ...]) -> Iterator[str]:
    yield "| " + " | ".join(columns) + " |"
    yield "|" + "---|" * len(columns)
    for row in rows:
        cells = {
            "option": _flags(row),
            "setting": f"`{row.name}`",
            "variable": ", ".join(f"`{name.strip()}`" for name in (row.env or "").split(",")),
            "commands": ", ".join(row.commands),
            # A variable standing in for a flag has no default of its own.
            "default": "none" if "variable" in columns and row.flags else row.shown_default,
            "effect": _env_effect(row) if "variable" in columns else row.help,
            "cost": row.cost,
            "sets": f"`{row.field}`" if row.field else "",
            "env": f"`{row.env}`" if row.env else "",
        }
        yield "| " + " | ".join(_cell(cells[c]) for c in columns) + " |"


def render_configuration() -> str:
    """docs/CONFIGURATION.md."""
    flagged = [row for row in OPTIONS if row.flags]
    fixed = [row for row in OPTIONS if not row.flags and row.commands == ()]
    environment = [row for row in OPTIONS if not row.flags and row.commands]
    parts = [
        "# Configuration",
        "",
        "<!-- Generated from fwfs/options.py by `python -m fwfs.options`; "
        "tests/unit/test_options.py checks it is current. Edit the table, not this file. -->",
        "",
        "Every setting of fwfs, its default, what it does and what it costs. The flags are "
        "those of `fwfs mount` unless the commands column says otherwise; `fwfs serve` and "
        "the site of `fwfs demo` take the sandbox's own flags (docs/SANDBOX.md). The last "
        "column names the field of the typed configuration (fwfs/config.py) whose default "
        "the row is.",
        "",
        "## Flags",
        "",
        *_rows(flagged, ("option", "commands", "default", "effect", "cost", "sets")),
        "",
        "## Fixed settings",
        "",
        "No flag sets these; each is the default of a typed-config field, written here so that "
        "every setting the mount runs with is in one place.",
        "",
        *_rows(fixed, ("setting", "default", "effect", "cost", "sets")),
        "",
        "## Environment",
        "",
        "What the environment changes. `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` and `~/.netrc` "
        "work as they do for requests.",
        "",
        *_rows(
            [row for row in flagged if row.env] + environment,
            ("variable", "commands", "default", "effect", "sets"),
        ),
        "",
    ]
    return "\n".join(parts)


def render_readme_table() -> str:
    """The options table of README.md: the flags of `fwfs mount`."""
    rows = [row for row in OPTIONS if "mount" in row.commands and row.flags]
    return "\n".join(_rows(rows, ("option", "default", "effect"))) + "\n"


def main(argv: list[str]) -> int:
    """`python -m fwfs.options`: prints docs/CONFIGURATION.md; `--readme`: README's table."""
    sys.stdout.write(render_readme_table() if "--readme" in argv else render_configuration())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
