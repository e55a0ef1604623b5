-- tickd's tick store: one table per tick kind plus the gap ledger, partitioned by day.
--
-- Units: prices are integers in $0.0001 (4 decimal places of a dollar, YES scale unless the
-- column says otherwise), sizes integers in 0.01 contracts. Times are timestamptz with
-- microseconds: `exch_ts` is the exchange's time (NULL when the frame carried none),
-- `recv_ts` tickd's receive time, strictly increasing within one tickd process.
--
-- Partitions are daily (UTC) and made by tickd itself (`tickd_create_partitions`) ahead of
-- time and on demand; there is deliberately no DEFAULT partition, which would block creating
-- a later one over rows it already holds. Retention drops whole partitions
-- (`tickd_drop_partitions_before`).
--
-- Idempotence: every table has a primary key that a tick written twice (reconnect overlap,
-- spool replay, a retried batch) hits, and tickd inserts with ON CONFLICT DO NOTHING.
--   trades            (trade_id, exch_ts)          the exchange's trade id
--   other data tables (market, recv_ts, feed)      one frame, one market, one receive time
--   feed_events       (ts, feed, conn, event, market)

-- Public trades. Partitioned by exchange time so that one trade always lands in one place.
CREATE TABLE trades (
    feed        text        NOT NULL,
    market      text        NOT NULL,
    trade_id    text        NOT NULL,
    exch_ts     timestamptz NOT NULL,
    recv_ts     timestamptz NOT NULL,
    price       bigint      NOT NULL,
    size        bigint      NOT NULL,
    taker_side  text        NOT NULL CHECK (taker_side IN ('yes', 'no')),
    block       boolean     NOT NULL,
    PRIMARY KEY (trade_id, exch_ts)
) PARTITION BY RANGE (exch_ts);
CREATE INDEX trades_market_time ON trades (market, exch_ts);
CREATE INDEX trades_time_brin ON trades USING brin (exch_ts);

-- Top of book and statistics (Kalshi's ticker channel). NULL price: no such level.
CREATE TABLE quotes (
    feed                  text        NOT NULL,
    market                text        NOT NULL,
    exch_ts               timestamptz,
    recv_ts               timestamptz NOT NULL,
    last                  bigint,
    bid                   bigint,
    ask                   bigint,
    bid_size              bigint      NOT NULL,
    ask_size              bigint      NOT NULL,
    last_size             bigint      NOT NULL,
    volume                bigint      NOT NULL,
    open_interest         bigint      NOT NULL,
    dollar_volume         bigint      NOT NULL,
    dollar_open_interest  bigint      NOT NULL,
    PRIMARY KEY (market, recv_ts, feed)
) PARTITION BY RANGE (recv_ts);
CREATE INDEX quotes_time_brin ON quotes USING brin (recv_ts);

-- Full books. `yes` and `no` are JSON arrays of [price, size] bid levels, ascending, each
-- side priced in its own contract (a NO level at 3000 is a $0.30 bid for NO).
CREATE TABLE book_snapshots (
    feed     text        NOT NULL,
    market   text        NOT NULL,
    exch_ts  timestamptz,
    recv_ts  timestamptz NOT NULL,
    yes      jsonb       NOT NULL,
    no       jsonb       NOT NULL,
    PRIMARY KEY (market, recv_ts, feed)
) PARTITION BY RANGE (recv_ts);
CREATE INDEX book_snapshots_time_brin ON book_snapshots USING brin (recv_ts);

-- Changes of resting size at one level: `delta` contracts (signed) at `price` on `side`,
-- priced in that side's own contract.
CREATE TABLE book_deltas (
    feed     text        NOT NULL,
    market   text        NOT NULL,
    exch_ts  timestamptz,
    recv_ts  timestamptz NOT NULL,
    side     text        NOT NULL CHECK (side IN ('yes', 'no')),
    price    bigint      NOT NULL,
    delta    bigint      NOT NULL,
    PRIMARY KEY (market, recv_ts, feed)
) PARTITION BY RANGE (recv_ts);
CREATE INDEX book_deltas_time_brin ON book_deltas USING brin (recv_ts);

-- Market and event lifecycle: `market` is a market ticker or, for scope 'event', an event
-- ticker. `detail` is the exchange's message body as sent.
CREATE TABLE lifecycle_events (
    feed     text        NOT NULL,
    market   text        NOT NULL,
    exch_ts  timestamptz,
    recv_ts  timestamptz NOT NULL,
    scope    text        NOT NULL CHECK (scope IN ('market', 'event')),
    event    text        NOT NULL,
    detail   jsonb       NOT NULL,
    PRIMARY KEY (market, recv_ts, feed, event)
) PARTITION BY RANGE (recv_ts);
CREATE INDEX lifecycle_events_time_brin ON lifecycle_events USING brin (recv_ts);

-- The gap ledger: every state change of every feed connection (connecting, connected,
-- subscribed, live, disconnected with its reason, backing_off, gap with sid/expected/got,
-- stale, resynced, alert, given_up) and the store's own records (store_loss: ticks that could
-- not be kept). `ts` is tickd's local time of the event; `conn` the feed's connection index;
-- `market` is '' for connection-wide events. `detail` holds the whole event.
CREATE TABLE feed_events (
    ts        timestamptz NOT NULL,
    feed      text        NOT NULL,
    conn      integer     NOT NULL,
    market    text        NOT NULL,
    event     text        NOT NULL,
    reason    text,
    sid       bigint,
    expected  bigint,
    got       bigint,
    detail    jsonb       NOT NULL,
    PRIMARY KEY (ts, feed, conn, event, market)
) PARTITION BY RANGE (ts);
CREATE INDEX feed_events_feed_time ON feed_events (feed, conn, ts);
CREATE INDEX feed_events_event_time ON feed_events (event, ts);

-- Every market tickd has recorded, with the first and last time it saw it. Small; kept up to
-- date with every batch so "latest per market" queries need not scan history.
CREATE TABLE markets (
    market      text        PRIMARY KEY,
    feed        text        NOT NULL,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL
);

-- The tables that tickd partitions by day.
CREATE FUNCTION tickd_partitioned_tables() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['trades', 'quotes', 'book_snapshots', 'book_deltas', 'lifecycle_events', 'feed_events']
$$;

-- Creates the partitions of every tick table for one UTC day, if missing. Named
-- `<table>_YYYYMMDD`. Returns how many it created.
CREATE FUNCTION tickd_create_partitions(day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    parent  text;
    child   text;
    lo      timestamptz := day::timestamp AT TIME ZONE 'UTC';
    made    integer := 0;
BEGIN
    FOREACH parent IN ARRAY tickd_partitioned_tables() LOOP
        child := parent || '_' || to_char(day, 'YYYYMMDD');
        IF to_regclass(quote_ident(child)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           child, parent, lo, lo + interval '1 day');
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END
$$;

-- Drops every daily partition of the tick tables for days before `cutoff` (UTC). Returns the
-- names of the dropped tables.
CREATE FUNCTION tickd_drop_partitions_before(cutoff date) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = ANY (tickd_partitioned_tables())
          AND c.relname ~ '_[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        RETURN NEXT part.relname;
    END LOOP;
END
$$;

-- Prices and sizes as numbers a person reads: dollars and contracts.
CREATE FUNCTION tickd_dollars(price bigint) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT price / 10000.0 $$;
CREATE FUNCTION tickd_contracts(size bigint) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT size / 100.0 $$;

-- The most recent quote of every market.
CREATE VIEW latest_quotes AS
SELECT q.*
FROM markets m
CROSS JOIN LATERAL (
    SELECT * FROM quotes
    WHERE quotes.market = m.market
    ORDER BY recv_ts DESC
    LIMIT 1
) q;

-- Trades of one market in [from_ts, to_ts), oldest first.
CREATE FUNCTION trades_in(market_ticker text, from_ts timestamptz, to_ts timestamptz)
RETURNS SETOF trades
LANGUAGE sql STABLE AS $$
    SELECT * FROM trades
    WHERE market = market_ticker AND exch_ts >= from_ts AND exch_ts < to_ts
    ORDER BY exch_ts, trade_id
$$;

-- OHLCV bars of one market's trades: one row per `bucket` (aligned to the Unix epoch) in
-- [from_ts, to_ts) that had trades. Prices in $0.0001, volume in 0.01 contracts.
CREATE FUNCTION ohlcv(market_ticker text, bucket interval, from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (bucket_start timestamptz, open bigint, high bigint, low bigint, close bigint,
               volume bigint, trades bigint)
LANGUAGE sql STABLE AS $$
    SELECT date_bin(bucket, exch_ts, timestamptz 'epoch') AS bucket_start,
           (array_agg(price ORDER BY exch_ts, trade_id))[1],
           max(price),
           min(price),
           (array_agg(price ORDER BY exch_ts DESC, trade_id DESC))[1],
           sum(size)::bigint,
           count(*)
    FROM trades
    WHERE market = market_ticker AND exch_ts >= from_ts AND exch_ts < to_ts
    GROUP BY 1
    ORDER BY 1
$$;

-- Where data may be missing in [from_ts, to_ts): one row per window.
--   disconnected  from a connection's disconnect (or failed attempt) until it is live again
--                 (ended NULL: not live again yet). Covers daemon restarts: a clean stop
--                 records a disconnect with reason 'shutdown'.
--   seq_gap       from a sequence gap until the subscription is resynced (or the connection
--                 ends); `expected`/`got` in detail.
--   stale         a market's book could not be trusted until resynced.
--   store_loss    ticks received but not kept (spool full while the database was away);
--                 the window and counts come from the record itself.
CREATE FUNCTION gaps(from_ts timestamptz, to_ts timestamptz)
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
                       OR (e.event <> 'disconnected' AND n.event IN ('resynced', 'disconnected'))))
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
