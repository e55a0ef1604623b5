-- What the exchange does not send is stored as NULL, never as a made-up zero.
--
-- Kalshi's frames leave out fields its specification calls required (a ticker without its
-- sizes, a trade without its taker side, the block-trade flag of older servers). tickd keeps
-- such a message and records the fields it lacks as NULL:
--   quotes  every size, volume, open interest and notional (prices already were nullable)
--   trades  taker_side, block
-- The columns' meaning is unchanged where a value is given.

ALTER TABLE quotes
    ALTER COLUMN bid_size DROP NOT NULL,
    ALTER COLUMN ask_size DROP NOT NULL,
    ALTER COLUMN last_size DROP NOT NULL,
    ALTER COLUMN volume DROP NOT NULL,
    ALTER COLUMN open_interest DROP NOT NULL,
    ALTER COLUMN dollar_volume DROP NOT NULL,
    ALTER COLUMN dollar_open_interest DROP NOT NULL;

ALTER TABLE trades
    ALTER COLUMN taker_side DROP NOT NULL,
    ALTER COLUMN block DROP NOT NULL;

-- Where data may be missing in [from_ts, to_ts): one row per window.
--   disconnected  from a connection's disconnect (or failed attempt) until it is live again
--                 (ended NULL: not live again yet). Covers daemon restarts: a clean stop
--                 records a disconnect with reason 'shutdown'.
--   seq_gap       from a sequence gap until the subscription is resynced (or the connection
--                 ends); `expected`/`got` in detail.
--   stale         books could not be trusted until resynced: `market` '' for every book of
--                 the connection, else that market's book alone (ended by a `resynced` row of
--                 the same market, the connection's next `live`, or its disconnect).
--   rejected      a frame tickd could not use, at one instant (started = ended); its reason,
--                 error and text in detail.
--   store_loss    ticks received but not kept (spool full while the database was away);
--                 the window and counts come from the record itself.
CREATE OR REPLACE FUNCTION gaps(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (feed text, conn integer, market text, kind text, started timestamptz,
               ended timestamptz, detail jsonb)
LANGUAGE sql STABLE AS $$
    WITH windows AS (
        SELECT e.feed, e.conn, e.market,
               CASE e.event WHEN 'disconnected' THEN 'disconnected'
                            WHEN 'gap' THEN 'seq_gap'
                            ELSE 'stale' END AS kind,
               e.ts AS started,
               (SELECT min(n.ts) FROM feed_events n
                WHERE n.feed = e.feed AND n.conn = e.conn AND n.ts > e.ts
                  AND (n.event = 'live'
                       OR (e.event <> 'disconnected'
                           AND (n.event = 'disconnected'
                                OR (n.event = 'resynced' AND n.market = e.market)))))
                   AS ended,
               e.detail
        FROM feed_events e
        WHERE e.event IN ('disconnected', 'gap', 'stale') AND e.ts < to_ts
    ),
    merged AS (
        -- A failed attempt after a disconnect is part of the same window.
        SELECT w.feed, w.conn, w.market, w.kind, min(w.started) AS started, w.ended,
               (array_agg(w.detail ORDER BY w.started))[1] AS detail
        FROM windows w
        GROUP BY w.feed, w.conn, w.market, w.kind, w.ended
    )
    SELECT m.feed, m.conn, m.market, m.kind, m.started, m.ended, m.detail
    FROM merged m
    WHERE m.ended IS NULL OR m.ended > from_ts
    UNION ALL
    SELECT e.feed, e.conn, e.market, 'rejected', e.ts, e.ts, e.detail
    FROM feed_events e
    WHERE e.event = 'rejected' AND e.ts >= from_ts AND e.ts < to_ts
    UNION ALL
    SELECT l.feed, l.conn, l.market, 'store_loss', l.started, l.ended, l.detail
    FROM (
        SELECT e.feed, e.conn, e.market, e.detail,
               timestamptz 'epoch' + (e.detail->>'from_us')::bigint * interval '1 microsecond' AS started,
               timestamptz 'epoch' + (e.detail->>'to_us')::bigint * interval '1 microsecond' AS ended
        FROM feed_events e
        WHERE e.event = 'store_loss'
    ) l
    WHERE l.started < to_ts AND l.ended >= from_ts
    ORDER BY 5, 1, 2
$$;
