"""Tests for fwfs.paths: entry names for Flywheel labels (the rules in its docstring).

The EXAMPLES table is what docs/SEMANTICS.md shows, so every row is checked verbatim; the
hypothesis properties cover rule 6 over labels built to collide.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwfs.paths import (
    DOT,
    EXAMPLES,
    NAME_MAX,
    NO_LABEL,
    NUL_SIGN,
    SLASH,
    Example,
    RawEntry,
    assign_names,
    escape,
    id_alias,
    parse_id_alias,
    render_examples,
    unescape,
)


def container(cid: str, label: str, *, ranked: bool = True) -> RawEntry:
    # Ranked as the tree ranks containers: by id, the resolver's "oldest first".
    rank = cid.rpartition(":")[2] if ranked else None
    return RawEntry(key=cid, label=label, is_file=False, rank=rank)


def file(name: str, *, ranked: bool = True) -> RawEntry:
    return RawEntry(key="f:" + name, label=name, is_file=True, rank="" if ranked else None)


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def nbytes(name: str) -> int:
    return len(name.encode("utf-8", "surrogatepass"))


def assert_valid_name(name: str) -> None:
    assert name not in ("", ".", "..")
    assert "/" not in name
    assert "\x00" not in name
    assert nbytes(name) <= NAME_MAX


# ---- the documented examples ----------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.title for e in EXAMPLES])
def test_example(example: Example) -> None:
    assert assign_names(example.entries, example.reserved) == dict(example.expected)
    # Listing order must not matter (rule 6), so the reversed listing names alike.
    reversed_entries = list(reversed(example.entries))
    assert assign_names(reversed_entries, example.reserved) == dict(example.expected)
    assert set(example.expected) == {entry.key for entry in example.entries}


def covers(pred_entries: list[tuple[str, bool]], reserved: set[str] | None = None) -> bool:
    """True when some example holds all of these (label, is_file) entries."""
    for example in EXAMPLES:
        labels = [(entry.label, entry.is_file) for entry in example.entries]
        if all(labels.count(p) >= pred_entries.count(p) for p in pred_entries) and (
            reserved is None or reserved <= example.reserved
        ):
            return True
    return False


def test_examples_cover_the_required_cases() -> None:
    # The docs promise these cases; a trimmed table must not drop one silently.
    long_label = any(
        nbytes(entry.label) == 300 and any(ord(ch) > 0x7F for ch in entry.label)
        for example in EXAMPLES
        for entry in example.entries
    )
    assert long_label
    assert covers([("ses-baseline", False), ("ses-baseline", False)])
    assert covers([("T1w", False), ("T1w", True)])
    assert covers([("T2/FLAIR", False)])
    assert covers([("T2/FLAIR", False), (f"T2{SLASH}FLAIR", False)])
    assert covers([(".", False), ("..", False), ("", False)])
    assert covers([("scan.nii.gz", False), ("scan.nii.gz", True)])
    assert covers([("analyses", False)], reserved={"analyses"})
    assert covers([("Sub-01", False), ("sub-01", False)])


def test_demo_examples_by_name() -> None:
    # Spelled out once, so a reader sees the headline cases without the table.
    by_title = {example.title: example for example in EXAMPLES}
    sessions = by_title["Two sessions with one label: the oldest keeps it (demo: sub-03)"]
    assert sorted(sessions.expected.values()) == ["ses-baseline", "ses-baseline (1a8f3e5c)"]
    # The path a user copies from the SDK or the web UI is in the mount: the acquisition's.
    t1w = by_title["An acquisition and a file with one name: the container keeps it (demo)"]
    assert t1w.expected["5b9655a4c4a2b1001a8f3d02"] == "T1w"
    assert assign_names([container("5c0d2e4fc4a2b1001a8f4107", "T2/FLAIR")]) == {
        "5c0d2e4fc4a2b1001a8f4107": "T2／FLAIR"
    }


def test_render_examples_is_a_table_of_every_example() -> None:
    table = render_examples()
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(EXAMPLES)
    for example in EXAMPLES:
        assert example.title in table
        for name in example.expected.values():
            if len(name) <= 40:
                assert f"`{name}`" in table
    assert "(300 bytes)" in table


# ---- rule 1: escaping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("T2/FLAIR", "T2／FLAIR"),
        ("a\x00b", "a␀b"),
        ("/", SLASH),
        (".", DOT),
        ("..", DOT + DOT),
        ("...", "..."),
        (".hidden", ".hidden"),
        ("", NO_LABEL),
        ("Zoë", "Zoë"),
    ],
)
def test_escape(label: str, name: str) -> None:
    assert escape(label) == name
    assert unescape(name) == (label if label else NO_LABEL)


def test_unescape_maps_dots_only_as_the_whole_name() -> None:
    assert unescape(DOT) == "."
    assert unescape(DOT + DOT) == ".."
    assert unescape("a" + DOT) == "a" + DOT
    assert unescape(DOT * 3) == DOT * 3
    # A user who types `／` means `/` (mkdir of "T2／FLAIR" creates the label "T2/FLAIR").
    assert unescape("T2／FLAIR") == "T2/FLAIR"
    assert unescape("(no label)") == "(no label)"


# ---- rules 2 and 3: collisions and suffixes ------------------------------------------------


def test_suffixes_do_not_depend_on_the_other_members() -> None:
    a = container("5bb1a5e0c4a2b1001a8f3e21", "ses-baseline")
    b = container("5bb1e670c4a2b1001a8f3e5c", "ses-baseline")
    c = container("5bb1f000c4a2b1001a8f3f00", "ses-baseline")
    two = assign_names([a, b])
    three = assign_names([c, b, a])
    assert two == {key: three[key] for key in two}
    assert three[c.key] == "ses-baseline (1a8f3f00)"


def test_reserved_names_accept_any_collection() -> None:
    entries = [container("5c0d2e4fc4a2b1001a8f4301", "analyses")]
    expected = {"5c0d2e4fc4a2b1001a8f4301": "analyses (1a8f4301)"}
    assert assign_names(entries, ["analyses"]) == expected
    assert assign_names(entries, frozenset({"analyses", "files"})) == expected
    assert assign_names(entries) == {"5c0d2e4fc4a2b1001a8f4301": "analyses"}


def test_a_prefix_on_container_keys_stays_out_of_the_suffix() -> None:
    names = assign_names(
        [
            container("a:64b0c1d2e3f4a5b6c7d8e9f0", "run", ranked=False),
            container("64b0c1d2aaaaaaaac7d8e9f0", "run", ranked=False),
        ]
    )
    assert names == {
        "a:64b0c1d2e3f4a5b6c7d8e9f0": "run (64b0c1d2e3f4a5b6c7d8e9f0)",
        "64b0c1d2aaaaaaaac7d8e9f0": "run (64b0c1d2aaaaaaaac7d8e9f0)",
    }


def test_one_id_twice_falls_back_to_the_key_hash() -> None:
    # Two keys naming one id cannot be told apart by the id; only the key is left.
    names = assign_names([container("a:1", "s"), container("b:1", "s")])
    assert names == {"a:1": f"s (key-{sha1('a:1')})", "b:1": f"s (key-{sha1('b:1')})"}


def test_short_ids_whose_tail_is_the_whole_id() -> None:
    entries = [container("1", "s"), container("2", "s"), container("3", "s (2)")]
    # "2" meets the label "s (2)" at its short and its full id alike: only its key is left.
    assert assign_names(entries) == {"1": "s", "2": f"s (key-{sha1('2')})", "3": "s (2)"}


def test_unranked_entries_never_keep_a_contested_name() -> None:
    # Zip members: no site path reaches them, so a duplicate name is suffixed whole.
    a, b = file("x.txt", ranked=False), container("d:1", "x.txt", ranked=False)
    assert assign_names([a, b]) == {a.key: f"x (file-{sha1('x.txt')[:8]}).txt", b.key: "x.txt (1)"}
    # A ranked container still wins over an unranked one, and a tie leaves nobody plain.
    c = container("5", "x.txt")
    assert assign_names([a, b, c])[c.key] == "x.txt"
    tied = [container("a:7", "y"), container("b:7", "y")]
    assert "y" not in assign_names(tied).values()


def test_files_whose_short_hash_is_taken_use_the_whole_hash() -> None:
    a = file("T1w.nii.gz")
    tag = sha1("T1w.nii.gz")
    # A label spelling out the file's short-hash name pushes the file to the whole hash.
    squatter = container("5c0d2e4fc4a2b1001a8f4a01", f"T1w (file-{tag[:8]}).nii.gz")
    twin = container("5c0d2e4fc4a2b1001a8f4a02", "T1w.nii.gz")
    names = assign_names([a, squatter, twin])
    assert names[a.key] == f"T1w (file-{tag}).nii.gz"
    # Both labels are what a site path of that name reaches, so both stay plain.
    assert names[squatter.key] == f"T1w (file-{tag[:8]}).nii.gz"
    assert names[twin.key] == "T1w.nii.gz"


def test_ids_are_escaped_in_suffixes() -> None:
    entries = [container("ab/cd", "x", ranked=False), container("ab\x00cd", "x", ranked=False)]
    names = assign_names(entries)
    assert names == {"ab/cd": f"x (ab{SLASH}cd)", "ab\x00cd": f"x (ab{NUL_SIGN}cd)"}


def test_an_id_too_long_for_a_name_falls_back_to_the_key_hash() -> None:
    a = container("a" * 300, "x", ranked=False)
    b = container("b" + "a" * 299, "x", ranked=False)  # the same last 8 characters
    names = assign_names([a, b])
    assert names == {a.key: f"x (key-{sha1(a.key)})", b.key: f"x (key-{sha1(b.key)})"}


def test_identical_entries_twice_are_one_entry() -> None:
    entry = container("5c0d2e4fc4a2b1001a8f4b01", "T1w")
    assert assign_names([entry, entry]) == {entry.key: "T1w"}


def test_two_entries_with_one_key_are_refused() -> None:
    with pytest.raises(ValueError, match="share one key"):
        assign_names([container("1", "a"), container("1", "b")])


# ---- rule 4: length ------------------------------------------------------------------------


def test_a_long_extension_is_not_kept() -> None:
    name = "a" * 300 + "." + "x" * 40
    result = assign_names([file(name)])["f:" + name]
    assert result == "a" * (NAME_MAX - 16) + f" (file-{sha1(name)[:8]})"


def test_a_long_name_with_a_short_extension_keeps_it() -> None:
    name = "a" * 300 + ".nii.gz"
    result = assign_names([file(name)])["f:" + name]
    assert result == "a" * (NAME_MAX - 16 - 7) + f" (file-{sha1(name)[:8]}).nii.gz"
    assert nbytes(result) == NAME_MAX


def test_a_name_of_exactly_255_bytes_stays_plain() -> None:
    assert assign_names([container("1", "é" * 127 + "a")]) == {"1": "é" * 127 + "a"}
    long = "é" * 128
    assert assign_names([container("5c0d2e4fc4a2b1001a8f4c01", long)]) == {
        "5c0d2e4fc4a2b1001a8f4c01": "é" * 122 + " (1a8f4c01)"
    }


@pytest.mark.parametrize("char", ["é", "脳", "😀", "\ud800"])
def test_cuts_fall_between_characters(char: str) -> None:
    label = "x" + char * 200
    name = assign_names([container("5c0d2e4fc4a2b1001a8f4d01", label)])["5c0d2e4fc4a2b1001a8f4d01"]
    stem = name.removesuffix(" (1a8f4d01)")
    assert stem != name
    assert label.startswith(stem)
    assert NAME_MAX - len(char.encode("utf-8", "surrogatepass")) < nbytes(name) <= NAME_MAX


# ---- rule 5: id aliases --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cid"),
    [
        ("<id:5c0d2e4fc4a2b1001a8f4601>", "5c0d2e4fc4a2b1001a8f4601"),
        ("<id:flywheel>", "flywheel"),
        ("<id:A-z_9>", "A-z_9"),
        ("<id:" + "a" * 64 + ">", "a" * 64),
        ("<id:" + "a" * 65 + ">", None),
        ("<id:>", None),
        ("<id:a/b>", None),
        ("<id:a.b>", "a.b"),
        ("<id:grace@fwfs.example>", "grace@fwfs.example"),
        ("<id:a b>", None),
        ("<id:é>", None),
        ("<id:abc>\n", None),
        (" <id:abc>", None),
        ("<ID:abc>", None),
        ("id:abc", None),
        ("<id:abc> (1a8f4601)", None),
    ],
)
def test_parse_id_alias(name: str, cid: str | None) -> None:
    assert parse_id_alias(name) == cid


def test_id_alias_round_trips_and_refuses_what_cannot_parse() -> None:
    assert id_alias("5c0d2e4fc4a2b1001a8f4601") == "<id:5c0d2e4fc4a2b1001a8f4601>"
    assert parse_id_alias(id_alias("flywheel")) == "flywheel"
    assert parse_id_alias(id_alias("ada@lab.example")) == "ada@lab.example"
    for bad in ["", "a b", "a/b", "x" * 65]:
        with pytest.raises(ValueError):
            id_alias(bad)


# ---- rule 6: properties --------------------------------------------------------------------

TRICKY = [*"/\x00. ab()<>", SLASH, NUL_SIGN, DOT, "é", "脳", "😀"]
FRAGMENTS = [
    ".",
    "..",
    "",
    "analyses",
    NO_LABEL,
    "<id:ab>",
    "s (1)",
    "s (2)",
    "s (file-",
    "a.nii.gz",
    ".hidden",
    DOT,
]

labels = st.one_of(
    st.text(st.sampled_from(TRICKY), max_size=10),
    st.text(max_size=10),
    st.sampled_from(FRAGMENTS),
    # Long labels: 3- and 4-byte characters put the 255-byte cut inside a character.
    st.builds(
        lambda char, count, ext: char * count + ext,
        st.sampled_from(["a", "é", "脳", "😀", "/"]),
        st.integers(60, 300),
        st.sampled_from(["", ".nii.gz", "." + "x" * 40, " (1)"]),
    ),
)
# Short ids and shared tails make the tail, the full id and the key-hash steps all happen.
container_ids = st.one_of(
    st.text(st.sampled_from("0123456789abcdef"), min_size=1, max_size=24),
    st.sampled_from(["1", "2", "a:1", "b:1", "00000001", "ff00000001", "ee00000001", "x/1"]),
)


@st.composite
def directories(draw: st.DrawFn) -> tuple[list[RawEntry], frozenset[str]]:
    # Labels come from a small pool so that duplicates are common, not lucky.
    pool = draw(st.lists(labels, min_size=1, max_size=6))
    pick = st.sampled_from(pool)
    containers = draw(
        st.lists(st.tuples(container_ids, pick), max_size=8, unique_by=lambda t: t[0])
    )
    files = draw(st.lists(pick, max_size=6, unique=True))
    entries = [container(cid, label) for cid, label in containers] + [file(n) for n in files]
    reserved = draw(st.frozensets(st.one_of(pick.map(escape), st.just("analyses")), max_size=3))
    return entries, reserved


def markers(entry: RawEntry) -> list[str]:
    """Substrings one of which a suffixed name must hold: the entry's identity (rule 3)."""
    found = [f"(key-{sha1(entry.key)})"]
    if entry.is_file:
        tag = sha1(entry.label)
        found += [f" (file-{tag[:8]})", f" (file-{tag})"]
    else:
        cid = entry.key.rpartition(":")[2].replace("/", SLASH).replace("\x00", NUL_SIGN)
        found += [f" ({cid[-8:]})", f" ({cid})"]
    return found


@settings(max_examples=400)
@given(directories())
def test_names_are_valid_unique_and_identity_derived(
    directory: tuple[list[RawEntry], frozenset[str]],
) -> None:
    entries, reserved = directory
    names = assign_names(entries, reserved)
    assert set(names) == {entry.key for entry in entries}
    assert len(set(names.values())) == len(names), "two entries share a name"
    escaped = [escape(entry.label) for entry in entries]
    winners = expected_winners(entries, reserved)
    for entry in entries:
        name = names[entry.key]
        assert_valid_name(name)
        assert name not in reserved
        assert parse_id_alias(name) is None
        plain = escape(entry.label)
        if entry.key == winners.get(plain):
            # The entry a site path of this name reaches keeps it (rule 2).
            assert name == plain
            continue
        must_suffix = (
            escaped.count(plain) > 1
            or plain in reserved
            or parse_id_alias(plain) is not None
            or nbytes(plain) > NAME_MAX
        )
        if must_suffix:
            assert name != plain
        if name != plain:
            assert any(marker in name for marker in markers(entry)), (name, markers(entry))


def expected_winners(entries: list[RawEntry], reserved: frozenset[str]) -> dict[str, str]:
    """Per contested plain name, the key that keeps it: rule 2 restated independently."""
    out: dict[str, str] = {}
    for plain in {escape(entry.label) for entry in entries}:
        if plain in reserved or parse_id_alias(plain) is not None or nbytes(plain) > NAME_MAX:
            continue
        ranked = sorted(
            ((e.is_file, e.rank), e.key) for e in entries if e.label == plain and e.rank is not None
        )
        if ranked and (len(ranked) == 1 or ranked[0][0] != ranked[1][0]):
            out[plain] = ranked[0][1]
    return out


@given(directories(), st.randoms(use_true_random=False))
def test_names_do_not_depend_on_the_listing_order(
    directory: tuple[list[RawEntry], frozenset[str]], rnd: random.Random
) -> None:
    entries, reserved = directory
    shuffled = list(entries)
    rnd.shuffle(shuffled)
    assert assign_names(shuffled, reserved) == assign_names(entries, reserved)
    assert assign_names(iter(entries + entries), reserved) == assign_names(entries, reserved)


@given(labels, st.booleans())
def test_an_entry_alone_is_its_escaped_label(label: str, is_file: bool) -> None:
    entry = file(label) if is_file else container("5c0d2e4fc4a2b1001a8f4e01", label)
    name = assign_names([entry])[entry.key]
    plain = escape(label)
    if nbytes(plain) <= NAME_MAX and parse_id_alias(plain) is None:
        assert name == plain
    assert_valid_name(name)


@given(labels)
def test_escape_round_trips(label: str) -> None:
    name = escape(label)
    assert "/" not in name and "\x00" not in name and name not in ("", ".", "..")
    # The only lossy inputs: the substitute characters themselves, and the empty label.
    lossy = label == "" or label in (DOT, DOT + DOT) or SLASH in label or NUL_SIGN in label
    if not lossy:
        assert unescape(name) == label


@given(st.text(st.sampled_from(TRICKY), min_size=1, max_size=10) | st.text(min_size=1))
def test_unescape_then_escape_is_identity_on_valid_names(name: str) -> None:
    if "/" in name or "\x00" in name or name in (".", ".."):
        return
    assert escape(unescape(name)) == name
