-- The dialguard instances that gate one Asterisk together (gate.mode = "broadcast").
--
-- Each instance keeps a row and holds, on a connection of its own, a session-level advisory
-- lock on the row's lease (dg_instance_beat in functions/instances.sql). The lock lives exactly
-- as long as that session: when the process dies, PostgreSQL ends the session and drops the
-- lock, and the others see it gone. seen_at is the last heartbeat, by the database's clock.
-- profiles_hash is a digest of the instance's profiles: every instance must decide with the
-- same ones.
CREATE TABLE IF NOT EXISTS dg_instances (
    instance_id   text PRIMARY KEY,
    app           text NOT NULL,
    lease         integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    profiles_hash text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    seen_at       timestamptz NOT NULL DEFAULT now()
);
