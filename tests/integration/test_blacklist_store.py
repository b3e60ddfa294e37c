"""The blacklist store on a real PostgreSQL: upserts, imports, campaigns, export order, expiry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from dialguard.blacklist_csv import StageRow, read_rows
from dialguard.decider import Decider
from dialguard.policy.codes import Rule
from dialguard.policy.model import Decision, DecisionRequest
from dialguard.store.blacklist import GLOBAL, BlacklistStore, number_key
from dialguard.store.callerids import CallerIdStore
from dialguard.store.errors import InvalidValue
from tests.support import NOON_NY, make_decider

CID = "+12125550100"
EXPIRES = datetime(2037, 1, 1, tzinfo=UTC)
# Noon in New York on a day still to come: an expiry around it may be set now.
FUTURE_NOON_NY = NOON_NY.replace(year=2036)


@pytest.fixture
def store(pool: asyncpg.Pool) -> BlacklistStore:
    return BlacklistStore(pool)


@pytest.fixture
async def decider(pool: asyncpg.Pool) -> Decider:
    await CallerIdStore(pool).add(CID, None)
    return make_decider(pool)


async def rule_for(
    decider: Decider, destination: str, campaign: str | None = None, at: datetime = NOON_NY
) -> Rule | None:
    decision = await decider.decide(
        DecisionRequest(
            caller_id=CID, destination=destination, campaign=campaign, at=at, record=False
        )
    )
    return decision.rule


async def export(store: BlacklistStore) -> list[tuple[str, str, str, str | None]]:
    return [(r["value"], r["campaign"], r["source"], r["reason"]) async for r in store.export()]


def test_numbers_are_keyed_by_their_e164_digits() -> None:
    assert number_key("+12122641234") == 12122641234


async def test_adding_a_number_twice_updates_it_in_place(store: BlacklistStore) -> None:
    await store.add_number("+12122641234", source="dnc", reason="asked")
    row = await store.add_number("+12122641234", source="crm", reason=None, expires_at=EXPIRES)
    assert row["number"] == "+12122641234"
    # An entry that never expired keeps never expiring: an expiry would shorten it.
    assert (row["source"], row["reason"], row["expires_at"]) == ("crm", None, None)
    assert await export(store) == [("+12122641234", GLOBAL, "crm", None)]


async def test_a_number_is_global_or_per_campaign_and_removed_per_scope(
    store: BlacklistStore,
) -> None:
    await store.add_number("+12122641234")
    await store.add_number("+12122641234", campaign="spring")
    assert await store.get_number("+12122641234") is not None
    assert await store.get_number("+12122641234", "spring") is not None
    assert await store.get_number("+12122641234", "summer") is None
    assert await store.remove_number("+12122641234", "spring")
    assert not await store.remove_number("+12122641234", "spring")
    assert await store.get_number("+12122641234") is not None


async def test_prefixes_are_global_or_per_campaign(store: BlacklistStore) -> None:
    row = await store.add_prefix("+1718264", campaign="spring", source="regulator")
    assert (row["prefix"], row["campaign"], row["source"]) == ("+1718264", "spring", "regulator")
    assert await store.get_prefix("+1718264") is None
    assert await store.get_prefix("+1718264", "spring") is not None
    assert not await store.remove_prefix("+1718264")
    assert await store.remove_prefix("+1718264", "spring")
    assert await store.get_prefix("+1718264", "spring") is None


async def test_a_prefix_not_in_e164_form_is_refused_by_the_database(store: BlacklistStore) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await store.add_prefix("1718264")


async def test_an_import_chunk_adds_every_row(store: BlacklistStore) -> None:
    rows: list[StageRow] = [
        (12122641234, "", "dnc", None, None),
        (12122641235, "spring", "dnc", "asked", EXPIRES),
    ]
    assert await store.import_chunk(rows) == 2
    assert await store.get_number("+12122641234") is not None
    second = await store.get_number("+12122641235", "spring")
    assert second is not None and second["reason"] == "asked" and second["expires_at"] == EXPIRES


async def test_an_import_overwrites_existing_entries_of_the_same_key(store: BlacklistStore) -> None:
    await store.add_number("+12122641234", source="manual", reason="old", expires_at=EXPIRES)
    await store.import_chunk([(12122641234, "", "registry", None, None)])
    row = await store.get_number("+12122641234")
    assert row is not None
    assert (row["source"], row["reason"], row["expires_at"]) == ("registry", None, None)


async def test_a_later_chunk_wins_over_an_earlier_one(store: BlacklistStore) -> None:
    await store.import_chunk([(12122641234, "", "dnc", "first", None)])
    await store.import_chunk([(12122641234, "", "dnc", "second", None)])
    row = await store.get_number("+12122641234")
    assert row is not None and row["reason"] == "second"


async def test_the_same_number_for_two_campaigns_in_one_chunk_is_two_entries(
    store: BlacklistStore,
) -> None:
    await store.import_chunk(
        [(12122641234, "", "dnc", None, None), (12122641234, "spring", "dnc", None, None)]
    )
    assert [(v, c) for v, c, _, _ in await export(store)] == [
        ("+12122641234", ""),
        ("+12122641234", "spring"),
    ]


async def test_within_one_chunk_the_last_row_of_a_key_wins(store: BlacklistStore) -> None:
    await store.import_chunk(
        [
            (12122641234, "", "dnc", "first", None),
            (12122641234, "", "dnc", "second", None),
            (12122641234, "", "dnc", "last", None),
        ]
    )
    row = await store.get_number("+12122641234")
    assert row is not None and row["reason"] == "last"


async def test_export_lists_numbers_in_order_then_prefixes_in_order(
    store: BlacklistStore,
) -> None:
    await store.add_prefix("+44", reason="country")
    await store.add_number("+442079460018", campaign="spring")
    await store.add_prefix("+1718264", campaign="spring")
    await store.add_number("+12122641235")
    await store.add_number("+442079460018")
    await store.add_number("+12122641234", source="crm")
    await store.add_prefix("+1718")
    assert await export(store) == [
        ("+12122641234", "", "crm", None),
        ("+12122641235", "", "manual", None),
        ("+442079460018", "", "manual", None),
        ("+442079460018", "spring", "manual", None),
        ("+1718", "", "manual", None),
        ("+1718264", "spring", "manual", None),
        ("+44", "", "manual", "country"),
    ]


async def test_export_streams_more_rows_than_one_cursor_batch(store: BlacklistStore) -> None:
    rows: list[StageRow] = [(12122640000 + i, "", "registry", None, None) for i in range(6000)]
    await store.import_chunk(rows)
    values = [r["value"] async for r in store.export()]
    assert len(values) == 6000
    assert values == sorted(values) and values[0] == "+12122640000"


async def test_imported_rows_from_a_csv_blacklist_their_destinations(
    store: BlacklistStore, decider: Decider
) -> None:
    lines = [
        "number,campaign,source,expires_at\n",
        "(212) 264-1234,,dnc,\n",
        "+12122641235,spring,crm,\n",
        f"+12122641236,,dnc,{(NOON_NY + timedelta(hours=1)).isoformat()}\n",
    ]
    for rows, errors in read_rows(lines, region="US"):
        assert errors == []
        await store.import_chunk(rows)
    assert await rule_for(decider, "+12122641234") is Rule.BLACKLISTED
    assert await rule_for(decider, "+12122641235", "spring") is Rule.BLACKLISTED
    assert await rule_for(decider, "+12122641235", "summer") is None
    assert await rule_for(decider, "+12122641235") is None
    assert await rule_for(decider, "+12122641236") is Rule.BLACKLISTED
    later = NOON_NY + timedelta(hours=1)
    assert await rule_for(decider, "+12122641236", at=later) is None


async def test_an_entry_holds_until_one_second_before_it_expires(
    store: BlacklistStore, decider: Decider
) -> None:
    expires = FUTURE_NOON_NY + timedelta(minutes=30)
    await store.add_number("+12122641234", expires_at=expires)
    await store.add_prefix("+1718264", campaign="spring", expires_at=expires)
    second = timedelta(seconds=1)
    assert await rule_for(decider, "+12122641234", at=expires - second) is Rule.BLACKLISTED
    assert await rule_for(decider, "+12122641234", at=expires) is None
    spring_before = await rule_for(decider, "+17182641234", "spring", at=expires - second)
    assert spring_before is Rule.BLACKLISTED
    assert await rule_for(decider, "+17182641234", "spring", at=expires) is None


async def test_an_expiry_already_past_is_refused_and_nothing_changes(
    store: BlacklistStore,
) -> None:
    await store.add_prefix("+1718264", expires_at=EXPIRES)
    past = datetime.now(UTC) - timedelta(days=1)
    for add, value in ((store.add_number, "+12122641234"), (store.add_prefix, "+1718264")):
        with pytest.raises(InvalidValue, match="already past"):
            await add(value, expires_at=past)
        with pytest.raises(InvalidValue):
            await add(value, expires_at=past, replace=True)
    assert await store.get_number("+12122641234") is None
    row = await store.get_prefix("+1718264")
    assert row is not None and row["expires_at"] == EXPIRES


async def test_adding_an_entry_again_never_shortens_its_life_unless_asked(
    store: BlacklistStore,
) -> None:
    sooner = EXPIRES - timedelta(days=100)
    for add, get, value in (
        (store.add_number, store.get_number, "+12122641234"),
        (store.add_prefix, store.get_prefix, "+1718264"),
    ):
        await add(value, expires_at=EXPIRES)
        kept = await add(value, reason="typo", expires_at=sooner)
        assert (kept["reason"], kept["expires_at"]) == ("typo", EXPIRES)
        longer = await add(value, expires_at=EXPIRES + timedelta(days=1))
        assert longer["expires_at"] == EXPIRES + timedelta(days=1)
        forever = await add(value)
        assert forever["expires_at"] is None
        still = await add(value, expires_at=EXPIRES)
        assert still["expires_at"] is None, "no expiry outlives any"
        replaced = await add(value, expires_at=sooner, replace=True)
        assert replaced["expires_at"] == sooner
        row = await get(value)
        assert row is not None and row["expires_at"] == sooner


async def test_an_import_never_shortens_an_entry_either(store: BlacklistStore) -> None:
    await store.add_number("+12122641234", expires_at=EXPIRES)
    await store.import_chunk([(12122641234, "", "registry", None, EXPIRES - timedelta(days=1))])
    row = await store.get_number("+12122641234")
    assert row is not None and (row["source"], row["expires_at"]) == ("registry", EXPIRES)


async def checked(decider: Decider, destination: str, campaign: str | None = None) -> Decision:
    """A call to ``destination`` at noon in New York, checked and not recorded."""
    return await decider.decide(
        DecisionRequest(
            caller_id=CID, destination=destination, campaign=campaign, at=NOON_NY, record=False
        )
    )


@pytest.mark.parametrize(
    ("prefixes", "numbers", "evidence"),
    [
        pytest.param(
            [("+1718", "short"), ("+1718264", "long")],
            [],
            {"match": "prefix", "value": "+1718264", "scope": "global", "source": "long"},
            id="the longest listed prefix",
        ),
        pytest.param(
            [("+1718264", "prefix-list")],
            [("+17182641234", "number-list")],
            {"match": "number", "value": "+17182641234", "source": "number-list"},
            id="the number itself before a listed prefix",
        ),
    ],
)
async def test_the_evidence_is_the_closest_entry(
    store: BlacklistStore,
    decider: Decider,
    prefixes: list[tuple[str, str]],
    numbers: list[tuple[str, str]],
    evidence: dict[str, str],
) -> None:
    for prefix, source in prefixes:
        await store.add_prefix(prefix, source=source)
    for number, source in numbers:
        await store.add_number(number, source=source)
    decision = await checked(decider, "+17182641234")
    assert decision.rule is Rule.BLACKLISTED
    assert {key: decision.facts[key] for key in evidence} == evidence
    assert decision.facts["expires_at"] is None


async def test_a_campaign_entry_is_the_evidence_when_both_scopes_list_a_number(
    store: BlacklistStore, decider: Decider
) -> None:
    await store.add_number("+12122641234", source="global-list")
    await store.add_number("+12122641234", campaign="spring", source="spring-list")
    decision = await checked(decider, "+12122641234", campaign="spring")
    assert decision.facts["scope"] == "campaign" and decision.facts["source"] == "spring-list"
    assert "campaign blacklist (source spring-list)" in decision.evidence


async def prefix_lengths(pool: asyncpg.Pool) -> list[int]:
    return list(await pool.fetchval("SELECT lengths FROM dg_prefix_lengths"))


async def test_decisions_probe_the_lengths_the_listed_prefixes_have(
    store: BlacklistStore, decider: Decider, pool: asyncpg.Pool
) -> None:
    assert await prefix_lengths(pool) == []
    assert await rule_for(decider, "+17182641234") is None
    await store.add_prefix("+1718264")
    await store.import_prefixes([("+4420", GLOBAL, "import", None, None)])
    # A prefix as long as the whole number lists that number.
    await store.add_prefix("+12122641234", campaign="spring")
    assert await prefix_lengths(pool) == [5, 8, 12]
    assert await rule_for(decider, "+17182641234") is Rule.BLACKLISTED
    assert await rule_for(decider, "+442071234567") is Rule.BLACKLISTED
    assert await rule_for(decider, "+12122641234", campaign="spring") is Rule.BLACKLISTED
    assert await rule_for(decider, "+12122641234", campaign="autumn") is None
    # Removing the only prefix of a length drops the length; the others still deny.
    assert await store.remove_prefix("+4420")
    assert await prefix_lengths(pool) == [8, 12]
    assert await rule_for(decider, "+442071234567") is None
    assert await rule_for(decider, "+17182641234") is Rule.BLACKLISTED


ADD_4420 = "INSERT INTO blacklist_prefixes (prefix, campaign) VALUES ('+4420', '')"
REMOVE_331 = "DELETE FROM blacklist_prefixes WHERE prefix = '+331'"


@pytest.mark.parametrize("first", [ADD_4420, REMOVE_331], ids=["add first", "remove first"])
async def test_prefixes_changed_in_concurrent_transactions_keep_every_length(
    store: BlacklistStore, decider: Decider, pool: asyncpg.Pool, first: str
) -> None:
    """Two transactions change the prefix list at once, one adding, one removing (which
    recounts from the table). Whichever refreshes the lengths second waits for the first to
    commit and then includes its change: the new length is never lost."""
    second = REMOVE_331 if first == ADD_4420 else ADD_4420
    await store.add_prefix("+331")
    async with pool.acquire() as one, pool.acquire() as two:
        tx_one, tx_two = one.transaction(), two.transaction()
        await tx_one.start()
        await tx_two.start()
        await one.execute(first)
        waiting = asyncio.create_task(two.execute(second))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "the second refresh waits for the first transaction"
        await tx_one.commit()
        await waiting
        await tx_two.commit()
    assert await prefix_lengths(pool) == [5]
    assert await rule_for(decider, "+442071234567") is Rule.BLACKLISTED
    assert await rule_for(decider, "+33123456789") is None


async def test_without_its_lengths_row_every_prefix_length_is_probed(
    store: BlacklistStore, decider: Decider, pool: asyncpg.Pool
) -> None:
    await store.add_prefix("+1718264")
    await pool.execute("DELETE FROM dg_prefix_lengths")
    assert await rule_for(decider, "+17182641234") is Rule.BLACKLISTED
