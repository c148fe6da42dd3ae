"""Specimen ids from image names: the default rule (first folder, else the prefix before '_'), custom
patterns, hostile names that yield no id instead of an error, and bad patterns as config errors that
name ``specimen.pattern``."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.config import AgentConfig
from agents.specimen import DEFAULT_PATTERN, MAX_ID_CHARS, SpecimenRule, compile_pattern
from shared.config import ConfigError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("S-2024-0173/field01.png", "S-2024-0173"),
        ("S-2024-0173/sub/field_01.png", "S-2024-0173"),  # the first folder wins over '_'
        ("S_1/field.png", "S_1"),  # a folder name may hold '_'
        ("S-2024-0173_field01.png", "S-2024-0173"),
        ("ACC9_scan_2.tif", "ACC9"),
        ("scan1.png", None),  # neither a folder nor '_': no specimen
        ("_leading.png", None),  # empty prefix
        ("camera-20260601T120000Z-f00000030", None),  # camera frames
        ("  /x.png", None),  # blank folder
        ("Haem\\S77\\f.png", "Haem"),  # an upload named with Windows separators
    ],
)
def test_default_rule(name, expected):
    assert SpecimenRule().specimen_id(name) == expected


def test_paths_are_taken_relative_to_the_watch_folder(tmp_path):
    rule = SpecimenRule(DEFAULT_PATTERN, root=tmp_path / "watch")
    assert rule.specimen_id("f.png", tmp_path / "watch" / "S9" / "f.png") == "S9"
    assert rule.specimen_id("S8_f.png", tmp_path / "watch" / "S8_f.png") == "S8"
    # outside the watch folder only the file name counts: the parent folder is not a specimen
    assert rule.specimen_id("f.png", tmp_path / "elsewhere" / "S7" / "f.png") is None
    assert rule.relative_name("f.png", tmp_path / "watch" / "a" / "b.png") == "a/b.png"


def test_a_custom_pattern_and_none():
    rule = SpecimenRule(r"(?:^|/)ACC-(?P<specimen>\d{6})")
    assert rule.specimen_id("2026/ward3/ACC-004711-field2.png") == "004711"
    assert rule.specimen_id("ACC-12.png") is None
    assert SpecimenRule(None).specimen_id("S1/f.png") is None


def test_ids_a_result_cannot_carry_are_dropped():
    rule = SpecimenRule(r"^(?P<specimen>.*)\.png$")
    assert rule.specimen_id("x" * (MAX_ID_CHARS + 1) + ".png") is None
    assert rule.specimen_id("bad\x07bell.png") is None
    assert rule.specimen_id("ok id.png") == "ok id"


@given(st.text(max_size=3000))
@settings(max_examples=300, deadline=None, database=None)
def test_any_name_gives_an_id_a_result_accepts_or_none(name):
    value = SpecimenRule().specimen_id(name)
    if value is not None:  # the result schema's own bounds: 1-128 characters, no control character
        assert 1 <= len(value) <= MAX_ID_CHARS and value == value.strip()
        assert not any(ord(c) < 32 or ord(c) == 127 for c in value)


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("(unclosed", "not a valid regular expression"),
        (r"^([^/]+)/", "has no named group (?P<specimen>...)"),
        ("x" * 1001, "keep it under 1000"),
    ],
)
def test_bad_patterns_are_config_errors_naming_the_key(tmp_path, pattern, says):
    with pytest.raises(ValueError) as direct:
        compile_pattern(pattern)
    assert says in str(direct.value)
    with pytest.raises(ConfigError) as err:
        AgentConfig.load(None, agent_id="a1", watch_dir=str(tmp_path), specimen={"pattern": pattern})
    assert "specimen.pattern" in str(err.value) and says in str(err.value)


def test_config_default_and_null(tmp_path):
    config = AgentConfig.load(None, agent_id="a1", watch_dir=str(tmp_path))
    assert config.specimen.pattern == DEFAULT_PATTERN
    off = AgentConfig.load(None, agent_id="a1", watch_dir=str(tmp_path), specimen={"pattern": None})
    assert SpecimenRule(off.specimen.pattern, Path(off.watch_dir)).specimen_id("S1/f.png") is None
