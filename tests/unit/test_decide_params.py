"""The look-back windows a decision hands the database: long enough for every rule that is on."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from dialguard.store.decisions import batch_rows
from tests.support import RULES_ALL_OFF as OFF
from tests.support import params_all_off


def test_with_every_rule_off_no_history_is_read() -> None:
    assert OFF.destination_window_s == 0
    assert OFF.callerid_window_s is None


def test_the_destination_window_is_the_longest_rule_that_is_on() -> None:
    p = replace(OFF, interval_s=14400, dest_cap_limits=(3, 7), dest_cap_windows=(86400, 604800))
    assert p.destination_window_s == 604800
    assert replace(p, rotation_window_s=2592000).destination_window_s == 2592000


def test_a_cooldown_reaches_back_over_the_longest_call_before_it() -> None:
    # A conversation that ended inside the cool-down may have begun a whole call earlier, and
    # calls are taken to last up to a day at least.
    p = replace(OFF, cooldown_s=604800, conversation_min_s=30)
    assert p.destination_window_s == 604800 + 86400
    assert replace(p, max_call_s=172800).destination_window_s == 604800 + 172800
    # A cool-down without its minimum conversation is off.
    assert replace(OFF, cooldown_s=604800).destination_window_s == 0


def test_the_caller_id_window_covers_its_caps_and_its_calls_still_up() -> None:
    assert replace(OFF, cid_max_concurrent=10).callerid_window_s == 7200
    caps = replace(OFF, cid_cap_limits=(5, 60), cid_cap_windows=(60, 3600))
    assert caps.callerid_window_s == 3600
    assert replace(caps, cid_max_concurrent=10).callerid_window_s == 7200
    assert replace(caps, cid_cap_windows=(60, 86400), cid_max_concurrent=10).callerid_window_s == (
        86400
    )


def test_a_batch_sends_each_rules_once_and_each_item_names_its_own() -> None:
    strict = replace(OFF, interval_s=14400)
    items = [
        params_all_off("+12122640001"),
        replace(params_all_off("+12122640002"), rules=strict),
        params_all_off("+12122640003"),
    ]
    attempts, rules = batch_rows(items)
    assert rules == "{" + OFF.literal + "," + strict.literal + "}"
    assert [a[-1] for a in attempts] == [1, 2, 1]
    assert [a[4] for a in attempts] == ["+12122640001", "+12122640002", "+12122640003"]


def test_an_attempt_carries_its_deadline_and_origin() -> None:
    deadline = datetime(2026, 3, 10, 15, 0, 1, tzinfo=UTC)
    live = replace(params_all_off(), live=True, deadline=deadline, origin="02:00:00:00:00:01/dg")
    attempt = live.attempt(1)
    assert attempt[1:3] == (True, deadline)
    assert attempt[-2:] == ("02:00:00:00:00:01/dg", 1)
    # A decision nobody waits on (an audit) has no deadline.
    assert params_all_off().attempt(1)[1:3] == (False, None)
