"""Directory entry names for Flywheel labels and file names, and back.

Pure: standard library only, no I/O. Flywheel allows what a POSIX name cannot hold (``/``,
NUL, empty labels, ``.`` and ``..``, more than 255 bytes) and allows duplicate labels, so
every listing goes through :func:`assign_names`. The rules (docs/SEMANTICS.md renders
``EXAMPLES``, and the tests check every one of them):

1. Escaping, reversible for one entry: ``/`` -> ``／`` (U+FF0F), NUL -> ``␀`` (U+2400); a label
   that is exactly ``.`` or ``..`` -> ``．`` or ``．．`` (U+FF0E); an empty label ->
   ``(no label)``. :func:`unescape` reverses the character mapping (for ``mkdir``).
2. Collisions: after escaping, entries are grouped by exact name (no case folding, no Unicode
   normalisation). In a group of two or more, the plain name goes to the entry a site path
   of that name reaches (``fw.lookup``): one whose raw label is the name itself, a container
   before a file, and among those the first by ``rank`` (the resolver's order: the oldest
   container, whose ObjectId sorts first). Every other member gets a suffix derived from its
   identity, never a number that depends on order; an entry without a rank never takes a
   contested name, so a group with no such entry, or two tied ones, is suffixed whole. A name
   equal to a reserved name of the layout (``reserved``) or shaped like an id alias (rule 5)
   is contested too, and nobody keeps it: the reserved name and the alias keep their meaning.
3. Suffixes: containers and analyses get `` (<last 8 characters of the id>)`` at the end, or
   `` (<full id>)`` where two members of a group share the last 8 characters. Files get
   `` (file-<first 8 hex of sha1(raw name, UTF-8)>)`` before their extension, which runs from
   the first ``.`` that is not at position 0 (``T1w.nii.gz`` -> ``T1w (file-…).nii.gz``).
   Files that still collide use the whole sha1. A suffixed name that collides again moves
   one step further, and the last step, ``(key-<sha1 of the key>)``, depends on the key alone.
4. Length: a name over NAME_MAX (255) UTF-8 bytes always gets its suffix and keeps as much
   of its stem as fits, cut between characters; a file keeps its extension when that is at
   most 32 bytes.
5. Id aliases: ``<id:OBJECTID>`` (or a group id) names a container on lookup; it is never
   listed.
6. The names depend only on the set of entries, never on their order; no two entries of one
   directory share a name; no name is empty, ``.`` or ``..``, holds ``/`` or NUL, or exceeds
   255 bytes.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

NAME_MAX = 255
"""POSIX NAME_MAX, in bytes of UTF-8."""
EXT_MAX = 32
"""A longer extension is not worth keeping whole when a name has to be shortened."""
NO_LABEL = "(no label)"

SLASH = "\uff0f"  # ／ FULLWIDTH SOLIDUS: looks like the `/` it stands for
NUL_SIGN = "\u2400"  # ␀ SYMBOL FOR NULL
DOT = "\uff0e"  # ． FULLWIDTH FULL STOP

_ESCAPE = str.maketrans({"/": SLASH, "\x00": NUL_SIGN})
_UNESCAPE = str.maketrans({SLASH: "/", NUL_SIGN: "\x00"})
_DOT_NAMES = {".": DOT, "..": DOT + DOT}
_UNDOT_NAMES = {v: k for k, v in _DOT_NAMES.items()}

# ObjectIds, and group ids (CORE19: lower-case letters, digits, `.`, `@`, `_`, `-`).
_ID_ALIAS = re.compile(r"<id:([A-Za-z0-9_.@-]{1,64})>")
_GROUP_ID = re.compile(r"[a-z0-9@_-][a-z0-9.@_-]{1,63}")

# Escalation steps of one entry (rule 3). Every member of a colliding group moves up one step
# at once, so the outcome depends on the set of entries and never on the order of the listing.
_PLAIN, _SHORT, _FULL, _LAST = range(4)


@dataclass(frozen=True)
class RawEntry:
    """One child of a directory, as Flywheel has it.

    ``key`` identifies the entry within the directory. For a container it is the container
    id, optionally behind a prefix ending in ``:`` (``"a:" + id``): the id shown in a suffix
    is the part after the last ``:``. For a file it is any string unique within the
    directory (``"f:" + name``); a file's suffix comes from ``label``, its raw name, because
    file ids change with every version.

    ``rank`` orders the entries a site path of one name could reach, as the site's resolver
    does (rule 2): a container's id (the resolver picks the oldest, and ObjectIds sort by
    age), any constant for a directory's files (their names are unique). None: the entry
    never keeps a contested name (zip members, which no site path reaches).
    """

    key: str
    label: str
    is_file: bool
    rank: str | None = None


@dataclass(frozen=True)
class Example:
    """One row of the documented examples: these entries in one directory get these names."""

    rule: int
    title: str
    entries: tuple[RawEntry, ...]
    expected: Mapping[str, str]
    reserved: frozenset[str] = field(default_factory=frozenset)


def escape(label: str) -> str:
    """The entry name for one label or file name, before any collision suffix (rule 1)."""
    if label in _DOT_NAMES:
        return _DOT_NAMES[label]
    if not label:
        return NO_LABEL
    return label.translate(_ESCAPE)


def unescape(name: str) -> str:
    """The label a user means by ``name`` (for ``mkdir``): ``／`` is ``/``, ``␀`` is NUL.

    Exact inverse of :func:`escape` on valid names; ``(no label)`` stays as typed, because a
    user who types it means those characters.
    """
    if name in _UNDOT_NAMES:
        return _UNDOT_NAMES[name]
    return name.translate(_UNESCAPE)


def parse_id_alias(name: str) -> str | None:
    """The container id in ``<id:OBJECTID>``, or None when ``name`` is not an id alias."""
    match = _ID_ALIAS.fullmatch(name)
    return match.group(1) if match else None


def could_be_group_id(name: str) -> bool:
    """Whether ``name`` is shaped like a group id (CORE19: lower-case letters, digits, ``.``,
    ``@``, ``_``, ``-``, 2 to 64 of them), taking names that start with a dot (``.Trash``,
    ``.hidden``: what desktops probe for) as not."""
    return _GROUP_ID.fullmatch(name) is not None


def id_alias(cid: str) -> str:
    """The alias name ``<id:cid>``; ValueError for an id that :func:`parse_id_alias` rejects."""
    alias = f"<id:{cid}>"
    if parse_id_alias(alias) != cid:
        raise ValueError(f"not a valid id for an alias: {cid!r}")
    return alias


def assign_names(entries: Iterable[RawEntry], reserved: Collection[str] = ()) -> dict[str, str]:
    """A unique, valid entry name for every entry of one directory, by key (rules 2-6).

    ``reserved`` holds names the layout uses itself (``analyses``, ``files``): they stay
    plain, and an entry that would take one gets a suffix instead.
    """
    by_key: dict[str, RawEntry] = {}
    for entry in entries:
        if by_key.setdefault(entry.key, entry) != entry:
            # The key is left out of the message: for files it is a name, and names can be PHI.
            raise ValueError("two different entries share one key")
    taken = frozenset(reserved)
    escaped = {key: escape(entry.label) for key, entry in by_key.items()}
    level = dict.fromkeys(by_key, _PLAIN)
    names = {key: _name_at(entry, escaped[key], _PLAIN) for key, entry in by_key.items()}
    owners: defaultdict[str, set[str]] = defaultdict(set)
    for key, name in names.items():
        owners[name].add(key)

    pending = set(owners)
    while pending:
        # Decide the whole round from one snapshot, then move: that keeps it order-free. A
        # winner stays plain for good: only plain entries can win, and no entry turns plain.
        bump: set[str] = set()
        for name in pending:
            keys = owners[name]
            if len(keys) > 1 or name in taken or parse_id_alias(name) is not None:
                keep = _winner(name, keys, by_key, level, taken)
                bump.update(key for key in keys if level[key] < _LAST and key != keep)
        pending = set()
        for key in bump:
            owners[names[key]].discard(key)
            level[key] += 1
            name = _name_at(by_key[key], escaped[key], level[key])
            names[key] = name
            owners[name].add(key)
            pending.add(name)
    return names


def _winner(
    name: str,
    keys: Collection[str],
    by_key: Mapping[str, RawEntry],
    level: Mapping[str, int],
    taken: Collection[str],
) -> str | None:
    """The key that keeps the contested ``name`` plain (rule 2), or None."""
    if name in taken or parse_id_alias(name) is not None:
        return None
    ranked: list[tuple[tuple[bool, str], str]] = []
    for key in keys:
        entry = by_key[key]
        if level[key] == _PLAIN and entry.rank is not None and entry.label == name:
            ranked.append(((entry.is_file, entry.rank), key))
    ranked.sort()
    if not ranked or (len(ranked) > 1 and ranked[0][0] == ranked[1][0]):
        return None
    return ranked[0][1]


def _name_at(entry: RawEntry, escaped: str, level: int) -> str:
    if level == _PLAIN:
        if _size(escaped) <= NAME_MAX:
            return escaped
        # Rule 4: a shortened name always carries its suffix, so that two long names with
        # the same beginning stay apart.
        level = _SHORT
    if level == _LAST:
        # Still the stem and extension (duplicate zip members reach this step routinely),
        # told apart by the key; the bare form only when nothing else fits.
        stem, ext = _split_ext(escaped) if entry.is_file else (escaped, "")
        bare = f"(key-{_sha1(entry.key)})"
        return _fit(stem, " " + bare, ext) or bare
    if entry.is_file:
        stem, ext = _split_ext(escaped)
        tag = _sha1(entry.label)
        suffix = f" (file-{tag[:8] if level == _SHORT else tag})"
    else:
        stem, ext = escaped, ""
        cid = entry.key.rpartition(":")[2]
        suffix = f" ({(cid[-8:] if level == _SHORT else cid).translate(_ESCAPE)})"
    fitted = _fit(stem, suffix, ext)
    # An id too long to fit in a name at all leaves only the key's hash to tell entries apart.
    return fitted if fitted is not None else _name_at(entry, escaped, _LAST)


def _split_ext(name: str) -> tuple[str, str]:
    # From the first dot, so `.nii.gz` stays whole; a leading dot starts a hidden name, not an
    # extension.
    dot = name.find(".", 1)
    return (name, "") if dot < 0 else (name[:dot], name[dot:])


def _fit(stem: str, suffix: str, ext: str) -> str | None:
    name = stem + suffix + ext
    if _size(name) <= NAME_MAX:
        return name
    if _size(ext) > EXT_MAX:
        stem, ext = stem + ext, ""
    budget = NAME_MAX - _size(suffix) - _size(ext)
    if budget < 0:
        return None
    return _cut(stem, budget) + suffix + ext


def _cut(text: str, budget: int) -> str:
    """The longest prefix of ``text`` that fits ``budget`` UTF-8 bytes, whole characters only."""
    data = _utf8(text)
    end = min(budget, len(data))
    # Back off continuation bytes (0b10xxxxxx) so that no UTF-8 sequence is split.
    while end < len(data) and data[end] & 0xC0 == 0x80:
        end -= 1
    return data[:end].decode("utf-8", "surrogatepass")


def _utf8(text: str) -> bytes:
    # surrogatepass: a label decoded from JSON may hold a lone surrogate, and naming an entry
    # must not fail on it.
    return text.encode("utf-8", "surrogatepass")


def _size(text: str) -> int:
    return len(_utf8(text))


def _sha1(text: str) -> str:
    return hashlib.sha1(_utf8(text)).hexdigest()


def render_examples() -> str:
    """``EXAMPLES`` as a Markdown table, for docs/SEMANTICS.md."""
    rows = ["| Rule | Case | Entries in one directory | Names |", "|---|---|---|---|"]
    for example in EXAMPLES:
        inputs = "<br>".join(_describe(entry) for entry in example.entries)
        if example.reserved:
            inputs += "<br>reserved: " + ", ".join(f"`{n}`" for n in sorted(example.reserved))
        outputs = "<br>".join(_shown(example.expected[entry.key]) for entry in example.entries)
        rows.append(f"| {example.rule} | {example.title} | {inputs} | {outputs} |")
    return "\n".join(rows) + "\n"


def _describe(entry: RawEntry) -> str:
    if entry.is_file:
        return f"file {_shown(entry.label, quote=True)}"
    return f"container {_shown(entry.label, quote=True)}, id `{entry.key.rpartition(':')[2]}`"


def _shown(text: str, quote: bool = False) -> str:
    # Labels are shown as Python literals so that NUL and the look-alike characters stay
    # visible; a 300-byte label would drown the table, so long ones show both ends only.
    body = repr(text) if quote else text
    if len(text) > 40:
        body = f"{body[:8]}…{body[-24:]}"
        return f"`{body}` ({len(_utf8(text))} bytes)"
    return f"`{body}`"


def _c(cid: str, label: str) -> RawEntry:
    return RawEntry(key=cid, label=label, is_file=False, rank=cid)


def _f(name: str) -> RawEntry:
    return RawEntry(key="f:" + name, label=name, is_file=True, rank="")


def _example(
    rule: int,
    title: str,
    pairs: Iterable[tuple[RawEntry, str]],
    reserved: Iterable[str] = (),
) -> Example:
    pairs = tuple(pairs)
    return Example(
        rule=rule,
        title=title,
        entries=tuple(entry for entry, _ in pairs),
        expected=MappingProxyType({entry.key: name for entry, name in pairs}),
        reserved=frozenset(reserved),
    )


_KANJI = "\u8133"  # 脳 "brain": three bytes of UTF-8, so a 255-byte cut falls inside one

# The ids look like Flywheel's (24 hex digits); only their last 8 characters show in suffixes.
EXAMPLES: tuple[Example, ...] = (
    _example(
        1,
        "`/` and NUL in a label",
        [
            (_c("5c0d2e4fc4a2b1001a8f4107", "T2/FLAIR"), "T2\uff0fFLAIR"),
            (_c("5c0d2e4fc4a2b1001a8f4108", "a\x00b"), "a\u2400b"),
        ],
    ),
    _example(
        1,
        "Names POSIX reserves, and no label",
        [
            (_c("5c0d2e4fc4a2b1001a8f4111", "."), "\uff0e"),
            (_c("5c0d2e4fc4a2b1001a8f4112", ".."), "\uff0e\uff0e"),
            (_c("5c0d2e4fc4a2b1001a8f4113", ""), "(no label)"),
            (_c("5c0d2e4fc4a2b1001a8f4114", "..."), "..."),
        ],
    ),
    _example(
        2,
        "Two sessions with one label: the oldest keeps it (demo: sub-03)",
        [
            (_c("5bb1a5e0c4a2b1001a8f3e21", "ses-baseline"), "ses-baseline"),
            (_c("5bb1e670c4a2b1001a8f3e5c", "ses-baseline"), "ses-baseline (1a8f3e5c)"),
        ],
    ),
    _example(
        2,
        "An acquisition and a file with one name: the container keeps it (demo)",
        [
            (_c("5b9655a4c4a2b1001a8f3d02", "T1w"), "T1w"),
            (_c("5b9655a4c4a2b1001a8f3d0a", "fMRI rest"), "fMRI rest"),
            (_c("5b9655a4c4a2b1001a8f3d11", "DWI"), "DWI"),
            (_f("T1w"), "T1w (file-5b6cf69b)"),
            (_f("scan_notes.txt"), "scan_notes.txt"),
        ],
    ),
    _example(
        2,
        "Two labels that escape to one name: the one spelled so keeps it",
        [
            (_c("5c0d2e4fc4a2b1001a8f4107", "T2/FLAIR"), "T2\uff0fFLAIR (1a8f4107)"),
            (_c("5c0d2e4fc4a2b1001a8f4190", "T2\uff0fFLAIR"), "T2\uff0fFLAIR"),
        ],
    ),
    _example(
        2,
        "Empty labels, and a label that reads `(no label)`",
        [
            (_c("5c0d2e4fc4a2b1001a8f4801", ""), "(no label) (1a8f4801)"),
            (_c("5c0d2e4fc4a2b1001a8f4802", ""), "(no label) (1a8f4802)"),
            (_c("5c0d2e4fc4a2b1001a8f4803", "(no label)"), "(no label)"),
        ],
    ),
    _example(
        2,
        "A label equal to a reserved name of the layout",
        [
            (_c("5c0d2e4fc4a2b1001a8f4301", "analyses"), "analyses (1a8f4301)"),
            (_f("analyses"), "analyses (file-50daf91e)"),
            (_c("5c0d2e4fc4a2b1001a8f4302", "files"), "files"),
        ],
        reserved={"analyses"},
    ),
    _example(
        2,
        "Labels that differ only in case are different names",
        [
            (_c("5c0d2e4fc4a2b1001a8f4401", "Sub-01"), "Sub-01"),
            (_c("5c0d2e4fc4a2b1001a8f4402", "sub-01"), "sub-01"),
        ],
    ),
    _example(
        3,
        "A container and a file with one name: the file keeps its extension",
        [
            (_c("5c0d2e4fc4a2b1001a8f4222", "scan.nii.gz"), "scan.nii.gz"),
            (_f("scan.nii.gz"), "scan (file-e35d6579).nii.gz"),
        ],
    ),
    _example(
        3,
        "A leading dot starts no extension",
        [
            (_c("5c0d2e4fc4a2b1001a8f4701", ".hidden"), ".hidden"),
            (_f(".hidden"), ".hidden (file-92f73832)"),
        ],
    ),
    _example(
        3,
        "Ids that end alike: those two show the full id",
        [
            (_c("64b0c1d2e3f4a5b6c7d8e9f0", "run"), "run (64b0c1d2e3f4a5b6c7d8e9f0)"),
            (_c("64b0c1d2aaaaaaaac7d8e9f0", "run"), "run (64b0c1d2aaaaaaaac7d8e9f0)"),
            (_c("64b0c1d2e3f4a5b6c7d80001", "run"), "run (c7d80001)"),
            (_c("64b0c1d200000000c7d80002", "run"), "run"),
        ],
    ),
    _example(
        3,
        "A suffixed name that meets a label moves one step further; the label keeps it",
        [
            (_c("5c0d2e4fc4a2b1001a8f4901", "rest"), "rest"),
            (_c("5c0d2e4fc4a2b1001a8f4902", "rest"), "rest (5c0d2e4fc4a2b1001a8f4902)"),
            (_c("5c0d2e4fc4a2b1001a8f4903", "rest (1a8f4902)"), "rest (1a8f4902)"),
        ],
    ),
    _example(
        4,
        "Labels of 300 and 301 bytes: cut between characters, suffix always added",
        [
            (_c("5c0d2e4fc4a2b1001a8f4501", _KANJI * 100), _KANJI * 81 + " (1a8f4501)"),
            (_c("5c0d2e4fc4a2b1001a8f4502", _KANJI * 100 + "2"), _KANJI * 81 + " (1a8f4502)"),
            (_f(_KANJI * 100 + ".nii.gz"), _KANJI * 77 + " (file-305a6464).nii.gz"),
        ],
    ),
    _example(
        5,
        "A label shaped like an id alias is never listed as one",
        [
            (
                _c("5c0d2e4fc4a2b1001a8f4601", "<id:5c0d2e4fc4a2b1001a8f4601>"),
                "<id:5c0d2e4fc4a2b1001a8f4601> (1a8f4601)",
            ),
        ],
    ),
)
