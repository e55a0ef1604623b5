-- Trades recovered after the windows the live stream missed, and what each window's data
-- coverage is.
--
-- After a disconnect, a sequence gap on the trade channel, or a start of tickd, the feed asks
-- the exchange's REST API for the trades of the window and records those it did not have.
--   trades.source    'ws': received live; 'rest': recovered over REST (backfill)
--   feed_events      one 'backfill' row per attempt at a window: its cause, `from_us`,
--                    `to_us`, `markets`, `found`, `new`, `complete` in detail (the counts
--                    cumulative over the window's attempts); `sid`/`expected`/`got` for a
--                    sequence gap
--   gaps()           a new column `recovered`: a completed backfill covers the window; a
--                    new kind `frozen`: a market that stopped updating on a live connection
--   coverage()       per market: time covered live, windows missing and recovered, trades
--                    recovered

ALTER TABLE trades ADD COLUMN source text NOT NULL DEFAULT 'ws' CHECK (source IN ('ws', 'rest'));

-- Whether a completed backfill covers the window (feed, conn, market, kind, started, ended,
-- detail) of gaps(): one of the same connection that asked for every trade from before the
-- window began to after it ended (for a sequence gap: the backfill of that very gap). A
-- backfill of one market covers only that market's windows.
CREATE FUNCTION tickd_backfilled(w_feed text, w_conn integer, w_market text, w_kind text,
                                 w_started timestamptz, w_ended timestamptz, w_detail jsonb)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT w_kind IN ('disconnected', 'seq_gap', 'frozen') AND w_ended IS NOT NULL AND EXISTS (
        SELECT 1 FROM feed_events b
        WHERE b.event = 'backfill' AND b.feed = w_feed AND b.conn = w_conn
          AND (b.market = '' OR b.market = w_market)
          AND (b.detail->>'complete')::boolean
          AND b.ts >= w_started
          AND CASE w_kind
                WHEN 'seq_gap' THEN b.sid = (w_detail->>'sid')::bigint
                                    AND b.expected = (w_detail->>'expected')::bigint
                                    AND b.got = (w_detail->>'got')::bigint
                ELSE (b.detail->>'from_us')::bigint
                         <= (extract(epoch FROM w_started) * 1000000)::bigint
                     AND (b.detail->>'to_us')::bigint
                         >= (extract(epoch FROM w_ended) * 1000000)::bigint
              END)
$$;

-- Where data may be missing in [from_ts, to_ts): one row per window.
--   disconnected  from a connection's disconnect (or failed attempt) until it is live again
--                 (ended NULL: not live again yet). Covers daemon restarts: a clean stop
--                 records a disconnect with reason 'shutdown'.
--   seq_gap       from a sequence gap until the subscription is resynced (or the connection
--                 ends); `sid`, `expected`/`got` in detail.
--   stale         books could not be trusted until resynced: `market` '' for every book of
--                 the connection, else that market's book alone (ended by a `resynced` row of
--                 the same market, the connection's next `live`, or its disconnect).
--   rejected      a frame tickd could not use, at one instant (started = ended); its reason,
--                 error and text in detail.
--   store_loss    ticks received but not kept (spool full while the database was away);
--                 the window and counts come from the record itself.
--   frozen        one market that stopped updating while its connection stayed live
--                 (a `market_frozen` row): from its last trade received to when it was
--                 found frozen (`backfill_from_us`, `backfill_to_us` in detail).
-- `recovered`: the trades of the window were fetched afterwards from the exchange's REST API
-- (see tickd_backfilled); book changes of a window are never recovered, its books are
-- snapshotted again at its end.
DROP FUNCTION gaps(timestamptz, timestamptz);
CREATE FUNCTION gaps(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (feed text, conn integer, market text, kind text, started timestamptz,
               ended timestamptz, detail jsonb, recovered boolean)
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
    SELECT m.feed, m.conn, m.market, m.kind, m.started, m.ended, m.detail,
           tickd_backfilled(m.feed, m.conn, m.market, m.kind, m.started, m.ended, m.detail)
    FROM merged m
    WHERE m.ended IS NULL OR m.ended > from_ts
    UNION ALL
    SELECT e.feed, e.conn, e.market, 'rejected', e.ts, e.ts, e.detail, false
    FROM feed_events e
    WHERE e.event = 'rejected' AND e.ts >= from_ts AND e.ts < to_ts
    UNION ALL
    SELECT l.feed, l.conn, l.market, 'store_loss', l.started, l.ended, l.detail, false
    FROM (
        SELECT e.feed, e.conn, e.market, e.detail,
               timestamptz 'epoch' + (e.detail->>'from_us')::bigint * interval '1 microsecond' AS started,
               timestamptz 'epoch' + (e.detail->>'to_us')::bigint * interval '1 microsecond' AS ended
        FROM feed_events e
        WHERE e.event = 'store_loss'
    ) l
    WHERE l.started < to_ts AND l.ended >= from_ts
    UNION ALL
    SELECT f.feed, f.conn, f.market, 'frozen', f.started, f.ended, f.detail,
           tickd_backfilled(f.feed, f.conn, f.market, 'frozen', f.started, f.ended, f.detail)
    FROM (
        SELECT e.feed, e.conn, e.market, e.detail,
               timestamptz 'epoch' + (e.detail->>'backfill_from_us')::bigint * interval '1 microsecond' AS started,
               timestamptz 'epoch' + (e.detail->>'backfill_to_us')::bigint * interval '1 microsecond' AS ended
        FROM feed_events e
        WHERE e.event = 'market_frozen'
    ) f
    WHERE f.started < to_ts AND f.ended >= from_ts
    ORDER BY 5, 1, 2
$$;

-- How far the trades of markets in [from_ts, to_ts) can be trusted: what a backtest asks
-- first. `coverage(market, from_ts, to_ts)` answers for one market, `coverage(from_ts, to_ts)`
-- for every market tickd knows (the `markets` table), one row each.
-- The windows that count are those in which a market's trades may have been missed (gaps()
-- kinds `disconnected`, `seq_gap` on its connection's trade channel, `store_loss` and
-- `frozen`), of
-- the market's feed: a window of the market itself or of a whole connection of its feed.
-- With several connections per feed, a connection's window counts for every market of the
-- feed, the careful reading, as the ledger does not say which connection carried a market.
--   covered_live       the time in [from_ts, to_ts) outside every such window
--   windows_missing    windows whose trades were not recovered (still missing)
--   windows_recovered  windows whose trades were recovered by a completed backfill
--   missing_time       the time in [from_ts, to_ts) inside windows still missing
--   trades_recovered   the market's trades in [from_ts, to_ts) recorded from the REST API
-- A window still open (not live again yet) counts up to to_ts, or now if sooner.
CREATE FUNCTION tickd_coverage(market_ticker text, from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (market text, feed text, covered_live interval, windows_missing bigint,
               windows_recovered bigint, missing_time interval, trades_recovered bigint)
LANGUAGE sql STABLE AS $$
    WITH m AS (
        SELECT k.market, k.feed FROM markets k
        WHERE market_ticker IS NULL OR k.market = market_ticker
    ),
    g AS (SELECT * FROM gaps(from_ts, to_ts)),
    w AS (
        SELECT m.market,
               greatest(g.started, from_ts) AS a,
               least(coalesce(g.ended, now()), to_ts) AS z,
               g.recovered
        FROM m
        JOIN g ON g.feed = m.feed AND g.market IN ('', m.market)
        WHERE g.kind IN ('disconnected', 'store_loss', 'frozen')
           OR (g.kind = 'seq_gap' AND (
                SELECT s.detail->>'channel' FROM feed_events s
                WHERE s.feed = g.feed AND s.conn = g.conn AND s.event = 'subscribed'
                  AND s.sid = (g.detail->>'sid')::bigint AND s.ts <= g.started
                ORDER BY s.ts DESC LIMIT 1) = 'trade')
    ),
    s AS (
        -- Overlapping windows are merged before their time is added up.
        SELECT w.market,
               count(*) FILTER (WHERE NOT w.recovered) AS missing,
               count(*) FILTER (WHERE w.recovered) AS recovered,
               range_agg(tstzrange(w.a, w.z)) FILTER (WHERE w.z > w.a) AS every,
               range_agg(tstzrange(w.a, w.z)) FILTER (WHERE w.z > w.a AND NOT w.recovered) AS lost
        FROM w
        GROUP BY w.market
    )
    -- justify_interval: 1 day less 2 s reads 23:59:58, not "1 day -00:00:02".
    SELECT m.market, m.feed,
           justify_interval(greatest(to_ts - from_ts, interval '0')
               - coalesce((SELECT sum(upper(x) - lower(x)) FROM unnest(s.every) x), interval '0')),
           coalesce(s.missing, 0),
           coalesce(s.recovered, 0),
           justify_interval(coalesce((SELECT sum(upper(x) - lower(x)) FROM unnest(s.lost) x), interval '0')),
           (SELECT count(*) FROM trades t
            WHERE t.market = m.market AND t.source = 'rest'
              AND t.exch_ts >= from_ts AND t.exch_ts < to_ts)
    FROM m
    LEFT JOIN s ON s.market = m.market
    ORDER BY m.market
$$;

CREATE FUNCTION coverage(market_ticker text, from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (market text, feed text, covered_live interval, windows_missing bigint,
               windows_recovered bigint, missing_time interval, trades_recovered bigint)
LANGUAGE sql STABLE AS $$ SELECT * FROM tickd_coverage(market_ticker, from_ts, to_ts) $$;

CREATE FUNCTION coverage(from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (market text, feed text, covered_live interval, windows_missing bigint,
               windows_recovered bigint, missing_time interval, trades_recovered bigint)
LANGUAGE sql STABLE AS $$ SELECT * FROM tickd_coverage(NULL, from_ts, to_ts) $$;
