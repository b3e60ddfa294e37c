-- The instances of gate.mode = "broadcast": leases, the instances seen alive, and the takeover
-- of a dead instance's calls. Re-applied by the migrator whenever this file changes.
--
-- Advisory-lock keys use the two-integer form, so they never meet the decisions' one-key locks
-- (dg_lock): 17017 is an instance's lease, held by its own session for its whole life; 17018 is
-- the takeover of a dead instance, held by the one survivor that decides its parked calls.

-- dg_instance_beat: the heartbeat. Creates or refreshes the instance's row (app, profiles,
-- seen_at) and makes sure this session holds its lease. Returns the lease, or NULL when another
-- session holds it (another live process runs under the same instance id).
CREATE OR REPLACE FUNCTION dg_instance_beat(p_id text, p_app text, p_hash text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_lease integer;
BEGIN
    INSERT INTO dg_instances AS i (instance_id, app, profiles_hash)
    VALUES (p_id, p_app, p_hash)
    ON CONFLICT (instance_id) DO UPDATE
        SET app = excluded.app, profiles_hash = excluded.profiles_hash, seen_at = now()
    RETURNING i.lease INTO v_lease;
    IF EXISTS (
        SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND classid = 17017 AND objid = v_lease::oid
          AND objsubid = 2 AND pid = pg_backend_pid() AND granted
    ) THEN
        RETURN v_lease;
    END IF;
    IF pg_try_advisory_lock(17017, v_lease) THEN
        RETURN v_lease;
    END IF;
    RETURN NULL;
END;
$$;

-- dg_instance_alive: whether an instance counts as alive: its lease is held by some session, or
-- its last heartbeat is more recent than p_grace_ms (an instance whose database connection broke
-- gets that long to take its lease again, so a restart of PostgreSQL declares nobody dead).
CREATE OR REPLACE FUNCTION dg_instance_alive(p_lease integer, p_seen timestamptz, p_grace_ms integer)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT p_seen > now() - make_interval(secs => p_grace_ms / 1000.0)
        OR EXISTS (
            SELECT 1 FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.classid = 17017 AND l.objid = p_lease::oid
              AND l.objsubid = 2 AND l.granted
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        )
$$;

-- dg_instances_seen: every instance with a row, and whether it is alive.
CREATE OR REPLACE FUNCTION dg_instances_seen(p_grace_ms integer)
RETURNS TABLE (instance_id text, app text, profiles_hash text, started_at timestamptz,
               seen_at timestamptz, alive boolean)
LANGUAGE sql STABLE AS $$
    SELECT i.instance_id, i.app, i.profiles_hash, i.started_at, i.seen_at,
           dg_instance_alive(i.lease, i.seen_at, p_grace_ms)
    FROM dg_instances i
    ORDER BY i.started_at, i.instance_id
$$;

-- dg_instance_takeover: claim the takeover of a dead instance for this session. Returns the dead
-- instance's app name when this session now holds the takeover lock and the instance is still
-- dead; NULL when it is alive again, gone, or another survivor holds its takeover. The lock is
-- the session's until dg_instance_taken_over releases it, or until the session ends: a survivor
-- that dies mid-takeover leaves the takeover to the next one.
CREATE OR REPLACE FUNCTION dg_instance_takeover(p_id text, p_grace_ms integer)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_row dg_instances%ROWTYPE;
BEGIN
    SELECT * INTO v_row FROM dg_instances WHERE instance_id = p_id;
    IF NOT FOUND OR dg_instance_alive(v_row.lease, v_row.seen_at, p_grace_ms) THEN
        RETURN NULL;
    END IF;
    IF NOT pg_try_advisory_lock(17018, v_row.lease) THEN
        RETURN NULL;
    END IF;
    -- Checked again under the lock: the instance may have come back meanwhile.
    IF dg_instance_alive(v_row.lease, v_row.seen_at, p_grace_ms) THEN
        PERFORM pg_advisory_unlock(17018, v_row.lease);
        RETURN NULL;
    END IF;
    RETURN v_row.app;
END;
$$;

-- dg_instance_taken_over: end a takeover: forget the dead instance when every call it left was
-- handled (p_done), and release the takeover lock either way.
CREATE OR REPLACE FUNCTION dg_instance_taken_over(p_id text, p_done boolean)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_lease integer;
BEGIN
    SELECT lease INTO v_lease FROM dg_instances WHERE instance_id = p_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_done THEN
        DELETE FROM dg_instances WHERE instance_id = p_id;
    END IF;
    PERFORM pg_advisory_unlock(17018, v_lease);
END;
$$;

-- dg_decisions_running: decision statements (dg_decide) of any session but this one that started
-- before p_since (now() when NULL) and still run, with the time counted from. A dead instance's
-- decision still running on the server commits or rolls back when it ends; once none is left,
-- the decisions table says all that instance decided. Sessions of other roles show their
-- statements only to roles with pg_read_all_stats: give it to dialguard's role if they differ.
CREATE OR REPLACE FUNCTION dg_decisions_running(p_since timestamptz)
RETURNS TABLE (running integer, since timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT count(*)::integer, coalesce(p_since, now())
    FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
      AND a.state = 'active' AND a.query_start < coalesce(p_since, now())
      AND a.query LIKE '%dg\_decide%'
$$;

-- dg_instance_reclaim: an instance back under its own id (a restart, a new ARI connection) holds
-- its own takeover lock while it decides the calls left in its application, so that it and a
-- survivor taking it over never decide the same calls: whichever comes second waits for, or
-- skips, the other. Returns the lease now locked, 0 when the instance has no row yet (nothing to
-- share), NULL while another session holds the lock (a survivor mid-takeover). Released with
-- pg_advisory_unlock(17018, lease).
CREATE OR REPLACE FUNCTION dg_instance_reclaim(p_id text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_lease integer;
BEGIN
    SELECT lease INTO v_lease FROM dg_instances WHERE instance_id = p_id;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    IF pg_try_advisory_lock(17018, v_lease) THEN
        RETURN v_lease;
    END IF;
    RETURN NULL;
END;
$$;
