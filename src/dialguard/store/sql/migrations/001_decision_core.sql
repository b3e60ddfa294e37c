-- The decision core: caller IDs, campaigns, blacklists, the decision log and the decide function.

CREATE TABLE callerids (
    number      text PRIMARY KEY,                 -- E.164
    state       text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'rested', 'retired')),
    reason      text,
    campaign    text,                             -- NULL: usable by every campaign
    created_at  timestamptz NOT NULL DEFAULT now(),
    changed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaigns (
    name          text PRIMARY KEY,
    profile       text NOT NULL DEFAULT 'default',
    overrides     jsonb NOT NULL DEFAULT '{}',
    paused        boolean NOT NULL DEFAULT false,
    pause_reason  text,
    paused_at     timestamptz,
    -- Bumped on every change; a decision made with an older version is retried with the new one,
    -- so a change applies to the very next decision in every process.
    version       integer NOT NULL DEFAULT 1,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Exact numbers as E.164 digits in a bigint: national registries run to hundreds of millions of
-- rows, and eight bytes a key keeps the index small enough to stay in memory.
CREATE TABLE blacklist_numbers (
    number      bigint NOT NULL,
    campaign    text NOT NULL DEFAULT '',         -- '' is global
    source      text NOT NULL DEFAULT 'manual',
    reason      text,
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (number, campaign)
);

CREATE TABLE blacklist_prefixes (
    prefix      text NOT NULL CHECK (prefix ~ '^\+[1-9][0-9]{0,14}$'),
    campaign    text NOT NULL DEFAULT '',
    source      text NOT NULL DEFAULT 'manual',
    reason      text,
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (prefix, campaign)
);

-- Every decision (the audit log); allowed ones are the attempts that every count is made of.
CREATE TABLE decisions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                timestamptz NOT NULL,
    decided_at        timestamptz NOT NULL DEFAULT now(),
    caller_id         text NOT NULL,
    destination       text NOT NULL,
    campaign          text NOT NULL,
    allowed           boolean NOT NULL,
    rule              text,
    facts             jsonb NOT NULL DEFAULT '{}',
    source            text NOT NULL DEFAULT 'api',
    channel_id        text,
    outcome           text,
    outcome_at        timestamptz,
    answered_seconds  integer,
    cause             integer,
    sip_code          integer
);
CREATE INDEX decisions_destination_at ON decisions (destination, at) WHERE allowed;
CREATE INDEX decisions_callerid_at ON decisions (caller_id, at) WHERE allowed;
CREATE INDEX decisions_callerid_up ON decisions (caller_id, at) WHERE allowed AND outcome_at IS NULL;
CREATE INDEX decisions_at ON decisions (at);
CREATE INDEX decisions_channel ON decisions (channel_id) WHERE channel_id IS NOT NULL;

-- When each caller ID was last used by each campaign: counts distinct caller IDs per campaign
-- without scanning a day of the campaign's calls.
CREATE TABLE campaign_callerids (
    campaign      text NOT NULL,
    caller_id     text NOT NULL,
    last_used_at  timestamptz NOT NULL,
    PRIMARY KEY (campaign, caller_id)
);
CREATE INDEX campaign_callerids_recent ON campaign_callerids (campaign, last_used_at);
