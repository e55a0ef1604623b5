-- What each market is, so SQL users can join ticks with it: its event and series, title,
-- status and trading times, as the exchange's REST listing and lifecycle messages tell them,
-- and whether tickd follows it now. Every column is NULL until the exchange has said.
--
--   SELECT t.*, m.title FROM trades t JOIN markets m USING (market)
--   WHERE m.series_ticker = 'KXBTCD';
ALTER TABLE markets
    ADD COLUMN event_ticker  text,
    ADD COLUMN series_ticker text,
    ADD COLUMN title         text,
    ADD COLUMN status        text,
    ADD COLUMN open_time     timestamptz,
    ADD COLUMN close_time    timestamptz,
    ADD COLUMN followed      boolean,
    ADD COLUMN info_updated  timestamptz;

CREATE INDEX markets_series ON markets (series_ticker, market);
CREATE INDEX markets_event ON markets (event_ticker, market);
