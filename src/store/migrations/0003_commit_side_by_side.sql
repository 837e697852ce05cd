-- Gatehouse schema 3: a login commits without waiting on other logins' commits.
--
-- `gatehouse_apply` (schema 2) again, with two changes:
-- 1. An audit entry sent without a number (NULL `num`) is numbered as its row goes in, by
--    the table's sequence (the column's default). The row's number is the entry's (the JSON
--    document keeps 0). A write transaction so needs no round trip of its own to number its
--    entries, and entries are numbered in the order they are written. An entry restored
--    with its number (`gatehouse store copy`) keeps it.
-- 2. Storing a session that did not exist adds no session event and sends no NOTIFY.
--    Replicas follow the events to read again the sessions they hold, and no replica holds
--    a session that was just made. Every transaction that sends a NOTIFY takes one lock,
--    from before its commit until after it (so notifications keep commit order): logins
--    that notified committed one at a time, each with its own WAL flush; now they share
--    flushes.

CREATE OR REPLACE FUNCTION gatehouse_apply(
    origin_name text,
    channel     text,
    op          text[],
    k1          text[],
    k2          text[],
    k3          text[],
    k4          text[],
    k5          text[],
    num         bigint[],
    blob        bytea[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    i       int;
    holder  text;
    events  boolean := false;
BEGIN
    FOR i IN 1 .. coalesce(array_length(op, 1), 0) LOOP
        CASE op[i]
        WHEN 'put_user' THEN
            INSERT INTO users (id, record) VALUES (k1[i], blob[i])
                ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record;
        WHEN 'remove_user' THEN
            DELETE FROM users WHERE id = k1[i];
        WHEN 'put_session' THEN
            -- A new session is news to no other replica (none holds it): no event, and no
            -- NOTIFY, which would make this commit wait for every other notifying one.
            INSERT INTO sessions (sid, record, user_id, connection, subject, idp_sid, expires_at)
                VALUES (k1[i], blob[i], k2[i], k3[i], k4[i], k5[i], num[i])
                ON CONFLICT (sid) DO NOTHING;
            IF NOT FOUND THEN
                INSERT INTO sessions (sid, record, user_id, connection, subject, idp_sid, expires_at)
                    VALUES (k1[i], blob[i], k2[i], k3[i], k4[i], k5[i], num[i])
                    ON CONFLICT (sid) DO UPDATE SET record = EXCLUDED.record,
                        user_id = EXCLUDED.user_id, connection = EXCLUDED.connection,
                        subject = EXCLUDED.subject, idp_sid = EXCLUDED.idp_sid,
                        expires_at = EXCLUDED.expires_at;
                INSERT INTO session_events (sid, origin) VALUES (k1[i], origin_name);
                events := true;
            END IF;
        WHEN 'remove_session' THEN
            DELETE FROM sessions WHERE sid = k1[i];
            IF FOUND THEN
                INSERT INTO session_events (sid, origin) VALUES (k1[i], origin_name);
                events := true;
            END IF;
        WHEN 'claim_email' THEN
            INSERT INTO user_emails (email, user_id) VALUES (k1[i], k2[i])
                ON CONFLICT (email) DO NOTHING;
            IF NOT FOUND THEN
                SELECT user_id INTO holder FROM user_emails WHERE email = k1[i] FOR UPDATE;
                IF NOT FOUND OR (holder <> k2[i] AND holder IS DISTINCT FROM k3[i]) THEN
                    RAISE EXCEPTION 'email entry already held by another account'
                        USING ERRCODE = 'GH409';
                ELSIF holder <> k2[i] THEN
                    UPDATE user_emails SET user_id = k2[i] WHERE email = k1[i];
                END IF;
            END IF;
        WHEN 'claim_username' THEN
            INSERT INTO user_usernames (username, user_id) VALUES (k1[i], k2[i])
                ON CONFLICT (username) DO NOTHING;
            IF NOT FOUND THEN
                SELECT user_id INTO holder FROM user_usernames WHERE username = k1[i] FOR UPDATE;
                IF NOT FOUND OR (holder <> k2[i] AND holder IS DISTINCT FROM k3[i]) THEN
                    RAISE EXCEPTION 'username entry already held by another account'
                        USING ERRCODE = 'GH409';
                ELSIF holder <> k2[i] THEN
                    UPDATE user_usernames SET user_id = k2[i] WHERE username = k1[i];
                END IF;
            END IF;
        WHEN 'release_email' THEN
            DELETE FROM user_emails WHERE email = k1[i] AND user_id = k2[i];
        WHEN 'release_username' THEN
            DELETE FROM user_usernames WHERE username = k1[i] AND user_id = k2[i];
        WHEN 'set_link' THEN
            INSERT INTO user_links (connection, subject, user_id) VALUES (k1[i], k2[i], k3[i])
                ON CONFLICT (connection, subject) DO NOTHING;
            IF NOT FOUND THEN
                SELECT l.user_id INTO holder FROM user_links l
                    WHERE l.connection = k1[i] AND l.subject = k2[i] FOR UPDATE;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'the identity is already linked to another account'
                        USING ERRCODE = 'GH409';
                ELSIF holder <> k3[i] THEN
                    -- A link left naming an account that is gone is taken over.
                    PERFORM 1 FROM users WHERE id = holder FOR UPDATE;
                    IF FOUND THEN
                        RAISE EXCEPTION 'the identity is already linked to another account'
                            USING ERRCODE = 'GH409';
                    END IF;
                    UPDATE user_links SET user_id = k3[i]
                        WHERE connection = k1[i] AND subject = k2[i];
                END IF;
            END IF;
        WHEN 'remove_link' THEN
            DELETE FROM user_links WHERE connection = k1[i] AND subject = k2[i];
        WHEN 'audit' THEN
            IF num[i] IS NULL THEN
                INSERT INTO audit (user_id, entry) VALUES (k1[i], blob[i]);
            ELSE
                INSERT INTO audit (seq, user_id, entry) VALUES (num[i], k1[i], blob[i]);
            END IF;
        ELSE
            RAISE EXCEPTION 'gatehouse_apply: unknown change %', op[i];
        END CASE;
    END LOOP;
    IF events THEN
        PERFORM pg_notify(channel, '');
    END IF;
END;
$$;
