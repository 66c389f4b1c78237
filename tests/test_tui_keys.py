"""Terminal bytes to keys: what a raw-mode terminal sends and what the TUI hears."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from minikvm.tui.keys import FOOTER_PAUSED, HELP_TEXT, Key, parse_keys


def names(data: bytes) -> list[str]:
    return [key.name for key in parse_keys(data)]


def test_letters_are_one_key_each():
    assert names(b"ssnc") == ["s", "s", "n", "c"]


def test_enter_tab_backspace_and_ctrl_keys_have_names():
    assert names(b"\r\t\x7f\x03\x1d") == ["enter", "tab", "backspace", "ctrl-c", "ctrl-]"]


def test_csi_arrow_keys_and_page_keys():
    assert names(b"\x1b[A\x1b[B\x1b[5~\x1b[6~") == ["up", "down", "pageup", "pagedown"]


def test_application_cursor_mode_arrows():
    assert names(b"\x1bOA\x1bOD") == ["up", "left"]


def test_a_lone_escape_is_the_escape_key():
    assert names(b"\x1b") == ["escape"]
    assert names(b"\x1bq") == ["escape", "q"]


def test_utf8_text_is_one_key_per_character():
    assert names("é€".encode()) == ["é", "€"]


def test_each_key_keeps_its_raw_bytes_for_the_guest():
    assert parse_keys(b"\x1b[A")[0] == Key("up", b"\x1b[A")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_no_byte_is_lost_or_invented(data):
    # Console focus forwards key.data to the guest: the split must be exact.
    assert b"".join(key.data for key in parse_keys(data)) == data


def test_footer_and_help_name_every_key_of_the_issue():
    keys = {key for key, _, _ in FOOTER_PAUSED}
    assert {"s", "n", "c", "p", "b", "g", "Tab", "?", "q"} <= keys
    for word in ("step", "next VM exit", "continue", "pause", "breakpoint", "memory",
                 "console", "quit"):
        assert word in HELP_TEXT
