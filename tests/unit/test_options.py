"""The option table (fwfs/options.py) is the one place a setting's default is written: the
flags, the typed configs and the docs all come from it, and agree."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

import pytest

from fwfs import config, options
from fwfs.cli import build_parser
from fwfs.errors import InvalidArgument
from fwfs.inprocess import mount_config
from fwfs.options import OPTIONS, parse_size, show_size

ROOT = Path(__file__).resolve().parents[2]
CONFIGS: dict[str, type] = {
    cls.__name__: cls
    for cls in (config.MountConfig, config.WalkAheadConfig, config.ClientConfig, config.TrustConfig)
}


def _between(text: str, marker: str) -> str:
    start = text.index(f"<!-- {marker} -->\n") + len(f"<!-- {marker} -->\n")
    return text[start : text.index(f"<!-- /{marker} -->")]


def test_configuration_md_is_the_one_the_table_renders() -> None:
    # If this fails: python -m fwfs.options > docs/CONFIGURATION.md
    assert (ROOT / "docs" / "CONFIGURATION.md").read_text() == options.render_configuration()


def test_readme_options_table_is_the_one_the_table_renders() -> None:
    # If this fails: python -m fwfs.options --readme, between the README's markers.
    text = (ROOT / "README.md").read_text()
    assert _between(text, "options-table") == options.render_readme_table()


def _field(row: options.Option) -> dataclasses.Field[typing.Any]:
    assert row.field is not None
    cls_name, _, name = row.field.partition(".")
    fields = {f.name: f for f in dataclasses.fields(CONFIGS[cls_name])}
    assert name in fields, f"{row.name}: {row.field} is no field"
    return fields[name]


@pytest.mark.parametrize("row", [r for r in OPTIONS if r.field], ids=lambda r: r.name)
def test_each_config_default_is_its_rows_and_of_the_fields_type(row: options.Option) -> None:
    field = _field(row)
    assert field.default == row.default
    hint = typing.get_type_hints(CONFIGS[str(row.field).partition(".")[0]])[field.name]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    # A bool is an int to isinstance: an int field must not get True from the table.
    assert type(row.default) in allowed or (float in allowed and type(row.default) is int)


def test_a_mount_with_no_flags_runs_with_the_configs_defaults() -> None:
    """What `fwfs mount` builds from its defaults is `MountConfig()`, but for what the
    wiring decides: writable (a model built without saying is read-only), the user's ids
    and the places of the spool and of the disk cache (which stays off: 0 bytes).
    --no-archives and --read-only have no field of their own: this is where their defaults
    and the fields' are proved to agree."""
    args = build_parser().parse_args(["mount", "/mnt/fw"])
    built = mount_config(args, "https://site.example.org/api", Path("/mnt/fw"))
    assert built == dataclasses.replace(
        config.MountConfig(),
        read_only=False,
        uid=built.uid,
        gid=built.gid,
        spool_dir=built.spool_dir,
        cache_dir=built.cache_dir,
    )
    assert built.disk_cache == 0
    assert built.cache_dir is not None
    assert built.cache_dir.parts[-3:] == ("fwfs", "cache", "site.example.org")


def test_the_demo_mounts_with_the_mounts_defaults_but_its_own_flags() -> None:
    parser = build_parser()
    mount = mount_config(parser.parse_args(["mount", "/m"]), "https://s/api", Path("/m"))
    demo = parser.parse_args(["demo", "/m", "--metadata-ttl", "3", "--cache-size", "64M"])
    assert mount_config(demo, "https://s/api", Path("/m")) == dataclasses.replace(
        mount, metadata_ttl=3.0, cache_size=64 << 20
    )


def _flags(parser: argparse.ArgumentParser, command: str) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions = sub.choices[command]._actions
    return {flag for action in actions for flag in action.option_strings} - {"-h", "--help"}


@pytest.mark.parametrize("command", ["mount", "unmount", "doctor"])
def test_every_flag_of_the_command_is_a_row_of_the_table(command: str) -> None:
    rows = {flag for row in OPTIONS if command in row.commands for flag in row.flags}
    assert _flags(build_parser(), command) == rows


def test_a_default_in_a_help_text_is_the_rows_default_not_a_copy() -> None:
    for row in OPTIONS:
        if isinstance(row.default, int | float) and not isinstance(row.default, bool):
            assert "default " not in row.effect or "{default}" in row.effect, row.name
            if "{default}" in row.effect:
                assert row.shown_default in row.help


def test_the_flags_delete_reasons_are_those_the_config_accepts() -> None:
    for reason in options.option("delete_reason").choices or ():
        assert config.MountConfig(delete_reason=reason).delete_reason == reason
    with pytest.raises(InvalidArgument):
        config.MountConfig(delete_reason="because")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256M", 256 << 20),
        ("1G", 1 << 30),
        ("128K", 128 << 10),
        ("4096", 4096),
        ("64MiB", 64 << 20),
    ],
)
def test_sizes_read_and_shown_as_a_person_writes_them(text: str, size: int) -> None:
    assert parse_size(text) == size
    assert parse_size(show_size(size)) == size


def test_a_size_that_is_no_size_is_a_usage_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")
