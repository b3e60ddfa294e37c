-- Live decisions ordered by the database, and the functions moved out of the migrations.
--
-- From here on the current functions live in sql/functions/*.sql, re-applied by the migrator
-- whenever a file changes; migrations hold schema changes only. This one adds what the new
-- decision function takes. The previous release's dg_decide_batch(dg_decide_attempt[],
-- dg_decide_rules[], boolean) and the helpers it calls (dg_destination_history,
-- dg_callerid_counts, dg_record_decisions) stay, untouched, so instances still running that release keep deciding
-- through a rolling upgrade; the next migration drops them.

-- One call attempt, as dg_decide takes it.
--   live: a call placed now. Its time is the database's clock, read once the locks are held,
--         and every allowed attempt committed before counts for it, whatever time it carries.
--         at is then the caller's estimate of that clock (the pure checks used it).
--   otherwise at is the decision's time "as of" (an audit replay): the attempts at or before it.
--   deadline: when its caller stops waiting, on the database's clock as the caller estimates
--         it; an item still waiting for its locks then is not recorded (NULL: no limit).
--   origin: the Asterisk and application that gated the call (see decisions.origin).
--   attempt_id: in fail-open mode, the id the call is spooled under should its caller give up
--         before the answer comes: recorded in decisions.spool_id, so that the decision and its
--         spooled copy count once.
CREATE TYPE dg_attempt AS (
    at               timestamptz,
    live             boolean,
    deadline         timestamptz,
    caller           text,
    dest             text,
    campaign         text,
    campaign_version integer,
    source           text,
    channel_id       text,
    pre_rule         text,
    pre_facts        text,
    hours_facts      text,
    attempt_id       uuid,
    origin           text,
    rules            integer
);

-- One decision to record, as dg_decide writes it.
CREATE TYPE dg_decision_row AS (
    id           bigint,
    at           timestamptz,
    caller_id    text,
    destination  text,
    campaign     text,
    allowed      boolean,
    rule         text,
    facts        jsonb,
    source       text,
    channel_id   text,
    spool_id     uuid,
    origin       text
);

-- Which Asterisk (its entity id) and ARI application gated a call: the instance that gated it
-- finds the calls it left up again after a restart, and records the end of those that ended
-- meanwhile, unheard. NULL for decisions no gate made.
ALTER TABLE decisions ADD COLUMN origin text;
