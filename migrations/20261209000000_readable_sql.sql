-- Prices and sizes as a person reads them: dollars with 4 decimals, contracts with 2.
--
-- `tickd_dollars(4800)` printed 0.48000000000000000000 (numeric division keeps 20 digits);
-- it now prints 0.4800, and `tickd_contracts(12345)` prints 123.45. Both take any number
-- (numeric), so that an aggregate converts too: `tickd_contracts(sum(size))`,
-- `tickd_dollars(avg(price))` (rounded to the unit's scale). A bigint column is exact: it has
-- no digits past the unit's scale.
--
-- The bigint versions are dropped rather than kept beside numeric ones: with both, a plain
-- integer literal (`tickd_dollars(4800)`) matches neither better and PostgreSQL refuses the
-- call as ambiguous. A view of your own that calls them must be dropped before this
-- migration and made again after it.

DROP FUNCTION tickd_dollars(bigint);
DROP FUNCTION tickd_contracts(bigint);

CREATE FUNCTION tickd_dollars(price numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT round(price * 0.0001, 4) $$;
CREATE FUNCTION tickd_contracts(size numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$ SELECT round(size * 0.01, 2) $$;

-- OHLCV bars of one market's trades: one row per `bucket` (aligned to the Unix epoch) in
-- [from_ts, to_ts) that had trades. `open`..`close` in dollars (YES price), `volume` in
-- contracts, `trades` a count; the same values as stored integers follow, named `*_int`
-- ($0.0001 and 0.01 contract), for programs that keep integers.
DROP FUNCTION ohlcv(text, interval, timestamptz, timestamptz);

CREATE FUNCTION ohlcv(market_ticker text, bucket interval, from_ts timestamptz, to_ts timestamptz)
RETURNS TABLE (bucket_start timestamptz, open numeric, high numeric, low numeric, close numeric,
               volume numeric, trades bigint, open_int bigint, high_int bigint, low_int bigint,
               close_int bigint, volume_int bigint)
LANGUAGE sql STABLE AS $$
    SELECT b.bucket_start,
           tickd_dollars(b.open_int), tickd_dollars(b.high_int), tickd_dollars(b.low_int),
           tickd_dollars(b.close_int), tickd_contracts(b.volume_int), b.trades,
           b.open_int, b.high_int, b.low_int, b.close_int, b.volume_int
    FROM (
        SELECT date_bin(bucket, exch_ts, timestamptz 'epoch') AS bucket_start,
               (array_agg(price ORDER BY exch_ts, trade_id))[1] AS open_int,
               max(price) AS high_int,
               min(price) AS low_int,
               (array_agg(price ORDER BY exch_ts DESC, trade_id DESC))[1] AS close_int,
               sum(size)::bigint AS volume_int,
               count(*) AS trades
        FROM trades
        WHERE market = market_ticker AND exch_ts >= from_ts AND exch_ts < to_ts
        GROUP BY 1
    ) b
    ORDER BY 1
$$;
