//! Parse and normalize: tickd's tape walker against a plain serde_json baseline.
//!
//! Both sides get the same recorded-style mix (built from `tests/fixtures/kalshi/`): about 80%
//! book deltas, 10% tickers, 8% trades and 2% twenty-level snapshots. Each frame is first copied
//! into a reused `Vec<u8>`, as the feed receives it as an owned buffer, then parsed into exact
//! integer prices and sizes. The baseline is what one would write without tickd's parser:
//! `serde_json::from_slice` into `#[derive(Deserialize)]` structs, an enum tagged on `type`, and
//! the same fixed-point parsing of the strings.
//!
//! Run with `cargo bench --bench parse`; `BENCHMARKS.md` records the numbers.

use std::borrow::Cow;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;
use tickd::kalshi::wire::{Frame, Parser};
use tickd::tick::{Price, Qty, Side};

/// Frames in one pass over the mix: 50 kinds-of-slot × 20.
const MIX_LEN: usize = 1000;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kalshi").join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim_end().to_owned(),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// A deterministic recorded-style mix: per 50 frames, 40 deltas, 5 tickers, 4 trades and one
/// snapshot, with prices, sizes, sides and sequence numbers varying as on a live book.
fn frame_mix() -> Vec<Vec<u8>> {
    let delta = fixture("orderbook_delta.json");
    let ticker = fixture("ticker.json");
    let trade = fixture("trade.json");
    let snapshot = fixture("orderbook_snapshot.json");
    (0..MIX_LEN)
        .map(|i| {
            let n = i as i64;
            let price = Price(1 + (n * 37) % 9999).to_string();
            let text = match i % 50 {
                0..40 => delta
                    .replace("\"seq\":3", &format!("\"seq\":{}", i + 3))
                    .replace("\"0.9600\"", &format!("\"{price}\""))
                    .replace("\"-54.00\"", &format!("\"{}\"", Qty((n % 7 - 3) * 1250 + 1)))
                    .replace(
                        "\"side\":\"yes\"",
                        if i % 2 == 0 { "\"side\":\"yes\"" } else { "\"side\":\"no\"" },
                    ),
                40..45 => ticker.replace("\"0.4800\"", &format!("\"{price}\"")),
                45..49 => trade.replace("\"0.3600\"", &format!("\"{price}\"")),
                _ => snapshot.clone(),
            };
            text.into_bytes()
        })
        .collect()
}

fn deltas_only(mix: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let deltas: Vec<_> =
        mix.iter().filter(|f| f.starts_with(b"{\"type\":\"orderbook_delta\"")).cloned().collect();
    deltas.iter().cycle().take(MIX_LEN).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Baseline: serde_json into typed structs.

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire<'a> {
    OrderbookDelta {
        sid: u64,
        seq: Option<u64>,
        #[serde(borrow)]
        msg: DeltaMsg<'a>,
        sending_ts_ms: Option<i64>,
    },
    OrderbookSnapshot {
        id: Option<u64>,
        sid: u64,
        seq: Option<u64>,
        #[serde(borrow)]
        msg: SnapshotMsg<'a>,
        sending_ts_ms: Option<i64>,
    },
    Ticker {
        sid: u64,
        #[serde(borrow)]
        msg: TickerMsg<'a>,
    },
    Trade {
        sid: u64,
        seq: Option<u64>,
        #[serde(borrow)]
        msg: TradeMsg<'a>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct DeltaMsg<'a> {
    #[serde(borrow)]
    market_ticker: Cow<'a, str>,
    #[serde(borrow)]
    price_dollars: Cow<'a, str>,
    #[serde(borrow)]
    delta_fp: Cow<'a, str>,
    #[serde(borrow)]
    side: Cow<'a, str>,
    ts_ms: Option<i64>,
}

#[derive(Deserialize)]
struct SnapshotMsg<'a> {
    #[serde(borrow)]
    market_ticker: Cow<'a, str>,
    #[serde(borrow, default)]
    yes_dollars_fp: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(borrow, default)]
    no_dollars_fp: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

#[derive(Deserialize)]
struct TickerMsg<'a> {
    #[serde(borrow)]
    market_ticker: Cow<'a, str>,
    #[serde(borrow)]
    price_dollars: Option<Cow<'a, str>>,
    #[serde(borrow)]
    yes_bid_dollars: Option<Cow<'a, str>>,
    #[serde(borrow)]
    yes_ask_dollars: Option<Cow<'a, str>>,
    #[serde(borrow)]
    yes_bid_size_fp: Cow<'a, str>,
    #[serde(borrow)]
    yes_ask_size_fp: Cow<'a, str>,
    #[serde(borrow)]
    last_trade_size_fp: Cow<'a, str>,
    #[serde(borrow)]
    volume_fp: Cow<'a, str>,
    #[serde(borrow)]
    open_interest_fp: Cow<'a, str>,
    dollar_volume: i64,
    dollar_open_interest: i64,
    ts_ms: Option<i64>,
    ts: Option<i64>,
}

#[derive(Deserialize)]
struct TradeMsg<'a> {
    #[serde(borrow)]
    trade_id: Cow<'a, str>,
    #[serde(borrow)]
    market_ticker: Cow<'a, str>,
    #[serde(borrow)]
    yes_price_dollars: Cow<'a, str>,
    #[serde(borrow)]
    count_fp: Cow<'a, str>,
    #[serde(borrow)]
    taker_outcome_side: Option<Cow<'a, str>>,
    #[serde(borrow)]
    taker_side: Option<Cow<'a, str>>,
    #[serde(default)]
    is_block_trade: bool,
    ts_ms: Option<i64>,
    ts: Option<i64>,
}

/// The baseline's normalized output: the same integers tickd's `Frame` carries.
#[derive(Debug, PartialEq)]
enum Normalized<'a> {
    Delta {
        sid: u64,
        seq: Option<u64>,
        market: Cow<'a, str>,
        side: Side,
        price: Price,
        delta: Qty,
        ts_ms: Option<i64>,
    },
    Snapshot {
        id: Option<u64>,
        sid: u64,
        seq: Option<u64>,
        market: Cow<'a, str>,
        yes: Vec<(Price, Qty)>,
        no: Vec<(Price, Qty)>,
        sending_ts_ms: Option<i64>,
    },
    Ticker {
        sid: u64,
        market: Cow<'a, str>,
        price: Option<Price>,
        bid: Option<Price>,
        ask: Option<Price>,
        sizes: [Qty; 5],
        dollars: [i64; 2],
        ts_ms: Option<i64>,
    },
    Trade {
        sid: u64,
        seq: Option<u64>,
        market: Cow<'a, str>,
        trade_id: Cow<'a, str>,
        price: Price,
        count: Qty,
        taker: Side,
        block: bool,
        ts_ms: Option<i64>,
    },
    Other,
}

fn price(s: &str) -> Result<Price, &'static str> {
    Price::parse_dollars(s).filter(|p| (0..=Price::ONE_DOLLAR.0).contains(&p.0)).ok_or("price")
}

fn qty(s: &str) -> Result<Qty, &'static str> {
    Qty::parse_fp(s).ok_or("qty")
}

fn side(s: &str) -> Result<Side, &'static str> {
    match s {
        "yes" => Ok(Side::Yes),
        "no" => Ok(Side::No),
        _ => Err("side"),
    }
}

fn levels<'a>(raw: &[(Cow<'a, str>, Cow<'a, str>)]) -> Result<Vec<(Price, Qty)>, &'static str> {
    raw.iter().map(|(p, q)| Ok((price(p)?, qty(q)?))).collect()
}

fn baseline(buf: &[u8]) -> Result<Normalized<'_>, &'static str> {
    let wire: Wire<'_> = serde_json::from_slice(buf).map_err(|_| "json")?;
    Ok(match wire {
        Wire::OrderbookDelta { sid, seq, msg, sending_ts_ms } => Normalized::Delta {
            sid,
            seq,
            side: side(&msg.side)?,
            price: price(&msg.price_dollars)?,
            delta: qty(&msg.delta_fp)?,
            ts_ms: msg.ts_ms.or(sending_ts_ms),
            market: msg.market_ticker,
        },
        Wire::OrderbookSnapshot { id, sid, seq, msg, sending_ts_ms } => Normalized::Snapshot {
            id,
            sending_ts_ms,
            sid,
            seq,
            yes: levels(&msg.yes_dollars_fp)?,
            no: levels(&msg.no_dollars_fp)?,
            market: msg.market_ticker,
        },
        Wire::Ticker { sid, msg } => Normalized::Ticker {
            sid,
            price: msg.price_dollars.as_deref().map(price).transpose()?,
            bid: msg.yes_bid_dollars.as_deref().map(price).transpose()?,
            ask: msg.yes_ask_dollars.as_deref().map(price).transpose()?,
            sizes: [
                qty(&msg.yes_bid_size_fp)?,
                qty(&msg.yes_ask_size_fp)?,
                qty(&msg.last_trade_size_fp)?,
                qty(&msg.volume_fp)?,
                qty(&msg.open_interest_fp)?,
            ],
            dollars: [msg.dollar_volume, msg.dollar_open_interest],
            ts_ms: msg.ts_ms.or(msg.ts.map(|s| s * 1000)),
            market: msg.market_ticker,
        },
        Wire::Trade { sid, seq, msg } => Normalized::Trade {
            sid,
            seq,
            price: price(&msg.yes_price_dollars)?,
            count: qty(&msg.count_fp)?,
            taker: side(msg.taker_outcome_side.as_deref().or(msg.taker_side.as_deref()).ok_or("taker")?)?,
            block: msg.is_block_trade,
            ts_ms: msg.ts_ms.or(msg.ts.map(|s| s * 1000)),
            market: msg.market_ticker,
            trade_id: msg.trade_id,
        },
        Wire::Other => Normalized::Other,
    })
}

/// tickd's frame in the baseline's shape, to check both sides did the same work.
fn as_normalized(frame: Frame<'_>) -> Normalized<'_> {
    match frame {
        Frame::Delta { sid, seq, market, side, price, delta, ts_ms } => {
            Normalized::Delta { sid, seq, market: market.into(), side, price, delta, ts_ms }
        }
        Frame::Snapshot { id, sid, seq, market, yes, no, sending_ts_ms } => {
            Normalized::Snapshot { id, sending_ts_ms, sid, seq, market: market.into(), yes, no }
        }
        Frame::Ticker { sid, market, quote: q, ts_ms } => Normalized::Ticker {
            sid,
            market: market.into(),
            price: q.last,
            bid: q.bid,
            ask: q.ask,
            sizes: [q.bid_size, q.ask_size, q.last_size, q.volume, q.open_interest]
                .map(Option::unwrap_or_default),
            dollars: [q.dollar_volume.unwrap_or_default(), q.dollar_open_interest.unwrap_or_default()],
            ts_ms,
        },
        Frame::Trade { sid, seq, market, trade_id, yes_price, count, taker_side, block, ts_ms } => {
            Normalized::Trade {
                sid,
                seq,
                market: market.into(),
                trade_id: trade_id.into(),
                price: yes_price,
                count,
                taker: taker_side.unwrap_or(Side::Yes),
                block: block.unwrap_or_default(),
                ts_ms,
            }
        }
        _ => Normalized::Other,
    }
}

/// Refuses to benchmark two parsers that disagree on any frame of the mix.
fn assert_same_results(frames: &[Vec<u8>]) {
    let mut parser = Parser::default();
    for frame in frames {
        let want = baseline(frame).expect("baseline parses the mix");
        let mut buf = frame.clone();
        let got = parser.parse(&mut buf).expect("tickd parses the mix");
        assert_eq!(as_normalized(got), want, "{}", String::from_utf8_lossy(frame));
    }
}

fn run_group(c: &mut Criterion, name: &str, frames: &[Vec<u8>]) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(6));

    group.bench_function("tickd_simd_tape", |b| {
        let mut parser = Parser::default();
        let mut buf = Vec::with_capacity(4096);
        b.iter(|| {
            for frame in frames {
                // The feed owns each frame's bytes; copying into a reused buffer stands in.
                buf.clear();
                buf.extend_from_slice(frame);
                let _ = black_box(parser.parse(black_box(&mut buf)));
            }
        });
    });

    // The floor: simd-json's tape alone, without reading it. The gap to `tickd_simd_tape` is
    // what tickd's own decoding costs.
    group.bench_function("simd_json_tape_only", |b| {
        let mut buffers = simd_json::Buffers::new(4096);
        let mut tape = simd_json::Tape::null().reset();
        let mut buf = Vec::with_capacity(4096);
        b.iter(|| {
            for frame in frames {
                buf.clear();
                buf.extend_from_slice(frame);
                let mut t = std::mem::replace(&mut tape, simd_json::Tape(Vec::new())).reset();
                let _ = black_box(simd_json::fill_tape(black_box(&mut buf), &mut buffers, &mut t));
                black_box(t.0.len());
                tape = t.reset();
            }
        });
    });

    group.bench_function("serde_json_typed", |b| {
        let mut buf = Vec::with_capacity(4096);
        b.iter(|| {
            for frame in frames {
                buf.clear();
                buf.extend_from_slice(frame);
                let _ = black_box(baseline(black_box(&buf)));
            }
        });
    });
    group.finish();
}

fn parse_and_normalize(c: &mut Criterion) {
    let mix = frame_mix();
    let deltas = deltas_only(&mix);
    assert_same_results(&mix);
    run_group(c, "parse_mix", &mix);
    run_group(c, "parse_deltas", &deltas);
}

criterion_group!(benches, parse_and_normalize);
criterion_main!(benches);
