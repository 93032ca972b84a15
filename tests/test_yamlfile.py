"""YAML loading for policy and config files: key lines, and the documents it refuses."""

from __future__ import annotations

import time

import pytest

from gateway.yamlfile import MAX_ALIAS_NODES, YamlError, load_text


def alias_bomb(levels: int, width: int = 9) -> str:
    """A "billion laughs": each level lists `width` aliases of the level above."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_the_anchor_before_anything_walks_it() -> None:
    # Six levels is 590,000 nodes once expanded: over a second and 150 MB to walk.
    started = time.perf_counter()
    with pytest.raises(YamlError) as info:
        load_text(alias_bomb(6), "t.yaml")
    assert time.perf_counter() - started < 0.5
    assert str(info.value).startswith("t.yaml:5: aliases expand this document by ")
    assert f"more than the {MAX_ALIAS_NODES} allowed" in str(info.value)


def test_a_hundred_nested_levels_are_refused_as_fast() -> None:
    started = time.perf_counter()
    with pytest.raises(YamlError, match="aliases expand"):
        load_text(alias_bomb(100), "t.yaml")
    assert time.perf_counter() - started < 0.5


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(YamlError, match=r"^t\.yaml:2: an alias refers to the node that "):
        load_text("ok: 1\nloop: &a [1, *a]\n", "t.yaml")


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(YamlError, match=r"^t\.yaml:1: invalid YAML: nested too deeply"):
        load_text("x: " + "[" * 1000 + "]" * 1000 + "\n", "t.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 1\nb: 2\na: 3\n", "t.yaml:3: a: duplicate key (first written on line 1)"),
        ("t:\n  x:\n    k: 1\n    j: 2\n    k: 3\n",
         "t.yaml:5: t.x.k: duplicate key (first written on line 3)"),
        ("t: {k: 1, k: 2}\n", "t.yaml:1: t.k: duplicate key (first written on line 1)"),
        ("- {k: 1}\n- {j: 1, j: 2}\n", "t.yaml:2: 1.j: duplicate key"),
    ],
    ids=["top", "nested", "flow", "in-list"],
)
def test_duplicate_keys_name_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(YamlError) as info:
        load_text(text, "t.yaml")
    assert str(info.value).startswith(expected), str(info.value)


def test_anchors_aliases_and_merge_keys_still_load() -> None:
    text = ("defaults: &defaults {rpm: 5, tpm: 100}\n"
            "extra: &extra {burst: 2}\n"
            "a:\n  <<: *defaults\n  tpm: 200\n"  # an explicit key overrides a merged one
            "b:\n  <<: [*defaults, *extra]\n"
            "c: *defaults\n"
            "list: &l [1, 2]\n"
            "again: *l\n")
    doc = load_text(text, "t.yaml")
    assert doc.data["a"] == {"rpm": 5, "tpm": 200}
    assert doc.data["b"] == {"rpm": 5, "tpm": 100, "burst": 2}
    assert doc.data["c"] == {"rpm": 5, "tpm": 100}
    assert doc.data["again"] == [1, 2]
    assert doc.where(("a", "tpm")) == "t.yaml:5"
    assert doc.where(("b",)) == "t.yaml:6"


def test_many_uses_of_a_small_anchor_are_allowed() -> None:
    # Aliases may add ten times the document's own nodes: a long file of `<<: *defaults`
    # entries is not an alias bomb however long it is.
    count = MAX_ALIAS_NODES // 9 + 1_000  # each alias adds the anchor's 9 nodes
    entries = "".join(f"u{i}: *d\n" for i in range(count))
    doc = load_text("d: &d {rpm: 1, tpm: 2, burst: 3, day: 4}\n" + entries, "t.yaml")
    assert doc.data[f"u{count - 1}"] == {"rpm": 1, "tpm": 2, "burst": 3, "day": 4}


def test_empty_document_is_none() -> None:
    assert load_text("", "t.yaml").data is None
    assert load_text("# only a comment\n", "t.yaml").data is None
