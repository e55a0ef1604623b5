//! Parse and normalize: tickd's tape walker against serde_json baselines, in one run.
//!
//! Every contender gets the same recorded-style mix (built from `tests/fixtures/kalshi/`): 80%
//! book deltas, 10% tickers, 8% trades and 2% twenty-level snapshots. Each frame arrives as the
//! feed receives it, a `&str` (tungstenite text frames are already UTF-8), and is turned into
//! the same [`Frame`] with exact integer prices and sizes, optional fields `None` when not
//! given, the fixed-point fields preferred over legacy ones and the exchange's time picked
//! from `ts_ms`, `ts`, `time` or `sending_ts_ms`: before timing, the bench checks that every
//! contender produces identical frames for the whole mix.
//!
//! - `tickd_simd_tape`: [`Parser::parse_buf`], the feed's path: the frame copied into a
//!   padded buffer, simd-json's tape, one walk over it.
//! - `serde_json_fair` (the fair baseline): `serde_json::from_str` into one borrowed struct of
//!   optional fields (no internally tagged enum, so no buffering), dispatch on `type`, the
//!   same normalization.
//! - `serde_json_tagged` (the previous baseline): `serde_json::from_slice` into an enum tagged
//!   on `type`, which serde buffers into an intermediate tree before picking the variant.
//! - `simd_json_tape_only` (the floor): simd-json's tape alone, not read at all.
//!
//! Times are the benchmark thread's CPU time, so that other work on a shared machine does not
//! count against whichever contender it happens to overlap. Run with `cargo bench --bench
//! parse`; `BENCHMARKS.md` records the numbers.

use std::borrow::Cow;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;
use tickd::kalshi::wire::{Frame, FrameBuf, Note, Parser, recycle_notes};
use tickd::tick::{Price, Qty, Quote, Side, parse_rfc3339_millis};

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
fn frame_mix() -> Vec<String> {
    let delta = fixture("orderbook_delta.json");
    let ticker = fixture("ticker.json");
    let trade = fixture("trade.json");
    let snapshot = fixture("orderbook_snapshot.json");
    (0..MIX_LEN)
        .map(|i| {
            let n = i as i64;
            let price = Price(1 + (n * 37) % 9999).to_string();
            match i % 50 {
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
            }
        })
        .collect()
}

fn deltas_only(mix: &[String]) -> Vec<String> {
    let deltas: Vec<_> =
        mix.iter().filter(|f| f.starts_with("{\"type\":\"orderbook_delta\"")).cloned().collect();
    deltas.iter().cycle().take(MIX_LEN).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Shared normalization of the baselines: the same rules as tickd's parser.

type Res<T> = Result<T, &'static str>;

fn price(s: &str) -> Res<Price> {
    Price::parse_dollars(s).filter(|p| (0..=Price::ONE_DOLLAR.0).contains(&p.0)).ok_or("price")
}

fn cents(c: i64) -> Res<Price> {
    (0..=100).contains(&c).then_some(Price(c * 100)).ok_or("cents")
}

fn size(s: &str) -> Res<Qty> {
    Qty::parse_fp(s).filter(|q| q.0 >= 0).ok_or("size")
}

fn signed_size(s: &str) -> Res<Qty> {
    Qty::parse_fp(s).ok_or("size")
}

fn count(n: i64) -> Res<Qty> {
    n.checked_mul(100).map(Qty).ok_or("count")
}

fn side(s: &str) -> Res<Side> {
    if s.eq_ignore_ascii_case("yes") {
        Ok(Side::Yes)
    } else if s.eq_ignore_ascii_case("no") {
        Ok(Side::No)
    } else {
        Err("side")
    }
}

fn book_side(s: &str) -> Res<Side> {
    if s.eq_ignore_ascii_case("bid") {
        Ok(Side::Yes)
    } else if s.eq_ignore_ascii_case("ask") {
        Ok(Side::No)
    } else {
        Err("side")
    }
}

/// Not given: absent, `null` (serde's `None`) or `""`.
fn given(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn name(s: Option<&str>) -> Res<&str> {
    let s = given(s).ok_or("missing name")?;
    if s.bytes().all(|b| b >= 0x20 && b != 0x7f) { Ok(s) } else { Err("control characters") }
}

/// A fixed-point field, else its legacy integer twin; an unreadable one is not given.
fn opt_either<T>(
    fp: Option<&str>,
    legacy: Option<i64>,
    f: fn(&str) -> Res<T>,
    l: fn(i64) -> Res<T>,
) -> Option<T> {
    match given(fp) {
        Some(s) => f(s).ok(),
        None => legacy.and_then(|n| l(n).ok()),
    }
}

fn req_either<T>(
    fp: Option<&str>,
    legacy: Option<i64>,
    f: fn(&str) -> Res<T>,
    l: fn(i64) -> Res<T>,
) -> Res<T> {
    match given(fp) {
        Some(s) => f(s),
        None => l(legacy.ok_or("missing")?),
    }
}

/// `ts` is integer seconds, except on deltas, where it is RFC 3339.
enum Ts<'a> {
    Seconds(i64),
    Text(&'a str),
}

impl Ts<'_> {
    fn millis(&self) -> Option<i64> {
        match *self {
            Ts::Seconds(s) => s.checked_mul(1000),
            Ts::Text(t) => parse_rfc3339_millis(t),
        }
    }
}

/// The exchange's time: `ts_ms`, else `ts`, else `time`, else `sending_ts_ms`.
fn when(ts_ms: Option<i64>, ts: Option<&Ts<'_>>, time: Option<&str>, sending: Option<i64>) -> Option<i64> {
    ts_ms.or_else(|| ts.and_then(Ts::millis)).or_else(|| time.and_then(parse_rfc3339_millis)).or(sending)
}

// ---------------------------------------------------------------------------------------------
// The fair baseline: one borrowed struct of optional fields, read in one pass.

#[derive(Deserialize)]
struct FairFrame<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    id: Option<u64>,
    sid: Option<u64>,
    seq: Option<u64>,
    sending_ts_ms: Option<i64>,
    #[serde(borrow)]
    msg: Option<FairMsg<'a>>,
}

/// Every field of every message type tickd reads, each optional; unknown ones are skipped.
#[derive(Deserialize, Default)]
#[serde(default)]
struct FairMsg<'a> {
    market_ticker: Option<&'a str>,
    price_dollars: Option<&'a str>,
    delta_fp: Option<&'a str>,
    side: Option<&'a str>,
    price: Option<i64>,
    delta: Option<i64>,
    yes_bid_dollars: Option<&'a str>,
    yes_ask_dollars: Option<&'a str>,
    yes_bid_size_fp: Option<&'a str>,
    yes_ask_size_fp: Option<&'a str>,
    last_trade_size_fp: Option<&'a str>,
    volume_fp: Option<&'a str>,
    open_interest_fp: Option<&'a str>,
    dollar_volume: Option<i64>,
    dollar_open_interest: Option<i64>,
    yes_bid: Option<i64>,
    yes_ask: Option<i64>,
    yes_bid_size: Option<i64>,
    yes_ask_size: Option<i64>,
    last_trade_size: Option<i64>,
    volume: Option<i64>,
    open_interest: Option<i64>,
    trade_id: Option<&'a str>,
    yes_price_dollars: Option<&'a str>,
    no_price_dollars: Option<&'a str>,
    count_fp: Option<&'a str>,
    yes_price: Option<i64>,
    no_price: Option<i64>,
    count: Option<i64>,
    taker_outcome_side: Option<&'a str>,
    taker_side: Option<&'a str>,
    taker_book_side: Option<&'a str>,
    is_block_trade: Option<bool>,
    #[serde(borrow)]
    yes_dollars_fp: Option<Vec<(&'a str, &'a str)>>,
    #[serde(borrow)]
    no_dollars_fp: Option<Vec<(&'a str, &'a str)>>,
    ts_ms: Option<i64>,
    #[serde(borrow)]
    ts: Option<Ts<'a>>,
    time: Option<&'a str>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Ts<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ts<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("seconds or an RFC 3339 time")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ts<'de>, E> {
                Ok(Ts::Seconds(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Ts<'de>, E> {
                i64::try_from(v).map(Ts::Seconds).map_err(E::custom)
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Ts<'de>, E> {
                Ok(Ts::Text(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn levels<'a>(raw: Option<&[(&'a str, &'a str)]>) -> Res<Vec<(Price, Qty)>> {
    raw.unwrap_or_default().iter().map(|(p, q)| Ok((price(p)?, size(q)?))).collect()
}

fn fair(text: &str) -> Res<Frame<'_>> {
    let f: FairFrame<'_> = serde_json::from_str(text).map_err(|_| "json")?;
    let sid = || f.sid.ok_or("sid");
    Ok(match f.ty {
        "orderbook_delta" => {
            let m = f.msg.as_ref().ok_or("msg")?;
            Frame::Delta {
                sid: sid()?,
                seq: f.seq,
                market: name(m.market_ticker)?,
                side: side(given(m.side).ok_or("side")?)?,
                price: req_either(m.price_dollars, m.price, price, cents)?,
                delta: req_either(m.delta_fp, m.delta, signed_size, count)?,
                ts_ms: when(m.ts_ms, m.ts.as_ref(), None, f.sending_ts_ms),
            }
        }
        "ticker" => {
            let m = f.msg.as_ref().ok_or("msg")?;
            Frame::Ticker {
                sid: sid()?,
                market: name(m.market_ticker)?,
                quote: Quote {
                    last: opt_either(m.price_dollars, m.price, price, cents),
                    bid: opt_either(m.yes_bid_dollars, m.yes_bid, price, cents),
                    ask: opt_either(m.yes_ask_dollars, m.yes_ask, price, cents),
                    bid_size: opt_either(m.yes_bid_size_fp, m.yes_bid_size, size, count),
                    ask_size: opt_either(m.yes_ask_size_fp, m.yes_ask_size, size, count),
                    last_size: opt_either(m.last_trade_size_fp, m.last_trade_size, size, count),
                    volume: opt_either(m.volume_fp, m.volume, size, count),
                    open_interest: opt_either(m.open_interest_fp, m.open_interest, size, count),
                    dollar_volume: m.dollar_volume,
                    dollar_open_interest: m.dollar_open_interest,
                },
                ts_ms: when(m.ts_ms, m.ts.as_ref(), m.time, f.sending_ts_ms),
            }
        }
        "trade" => {
            let m = f.msg.as_ref().ok_or("msg")?;
            let yes_price =
                match (given(m.yes_price_dollars), m.yes_price, given(m.no_price_dollars), m.no_price) {
                    (Some(p), ..) => price(p)?,
                    (None, Some(c), ..) => cents(c)?,
                    (None, None, Some(p), _) => price(p)?.complement(),
                    (None, None, None, Some(c)) => cents(c)?.complement(),
                    _ => return Err("price"),
                };
            let taker_side =
                match (given(m.taker_outcome_side), given(m.taker_side), given(m.taker_book_side)) {
                    (Some(s), ..) | (None, Some(s), _) => side(s).ok(),
                    (None, None, Some(s)) => book_side(s).ok(),
                    _ => None,
                };
            Frame::Trade {
                sid: sid()?,
                seq: f.seq,
                market: name(m.market_ticker)?,
                trade_id: name(m.trade_id)?,
                yes_price,
                count: req_either(m.count_fp, m.count, size, count)?,
                taker_side,
                block: m.is_block_trade,
                ts_ms: when(m.ts_ms, m.ts.as_ref(), None, f.sending_ts_ms),
            }
        }
        "orderbook_snapshot" => {
            let m = f.msg.as_ref().ok_or("msg")?;
            Frame::Snapshot {
                id: f.id,
                sid: sid()?,
                seq: f.seq,
                market: name(m.market_ticker)?,
                yes: levels(m.yes_dollars_fp.as_deref())?,
                no: levels(m.no_dollars_fp.as_deref())?,
                sending_ts_ms: f.sending_ts_ms,
            }
        }
        _ => Frame::Unknown { msg_type: f.ty, sid: f.sid, seq: f.seq },
    })
}

// ---------------------------------------------------------------------------------------------
// The previous baseline: an enum tagged on `type`, with `Cow` strings.

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Tagged<'a> {
    OrderbookDelta {
        sid: u64,
        seq: Option<u64>,
        #[serde(borrow)]
        msg: TaggedDelta<'a>,
        sending_ts_ms: Option<i64>,
    },
    OrderbookSnapshot {
        id: Option<u64>,
        sid: u64,
        seq: Option<u64>,
        #[serde(borrow)]
        msg: TaggedSnapshot<'a>,
        sending_ts_ms: Option<i64>,
    },
    Ticker {
        sid: u64,
        #[serde(borrow)]
        msg: TaggedTicker<'a>,
        sending_ts_ms: Option<i64>,
    },
    Trade {
        sid: u64,
        seq: Option<u64>,
        #[serde(borrow)]
        msg: TaggedTrade<'a>,
        sending_ts_ms: Option<i64>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct TaggedDelta<'a> {
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
struct TaggedSnapshot<'a> {
    #[serde(borrow)]
    market_ticker: Cow<'a, str>,
    #[serde(borrow, default)]
    yes_dollars_fp: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(borrow, default)]
    no_dollars_fp: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

#[derive(Deserialize)]
struct TaggedTicker<'a> {
    #[serde(borrow)]
    market_ticker: Cow<'a, str>,
    #[serde(borrow)]
    price_dollars: Option<Cow<'a, str>>,
    #[serde(borrow)]
    yes_bid_dollars: Option<Cow<'a, str>>,
    #[serde(borrow)]
    yes_ask_dollars: Option<Cow<'a, str>>,
    #[serde(borrow)]
    yes_bid_size_fp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    yes_ask_size_fp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    last_trade_size_fp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    volume_fp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    open_interest_fp: Option<Cow<'a, str>>,
    dollar_volume: Option<i64>,
    dollar_open_interest: Option<i64>,
    ts_ms: Option<i64>,
    ts: Option<i64>,
}

#[derive(Deserialize)]
struct TaggedTrade<'a> {
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
    is_block_trade: Option<bool>,
    ts_ms: Option<i64>,
    ts: Option<i64>,
}

/// A borrowed string from a `Cow` that did not need unescaping (all of the mix).
fn borrowed<'a>(c: &Cow<'a, str>) -> Res<&'a str> {
    match c {
        Cow::Borrowed(s) => Ok(s),
        Cow::Owned(_) => Err("escaped"),
    }
}

fn opt(c: &Option<Cow<'_, str>>, f: fn(&str) -> Res<Qty>) -> Option<Qty> {
    c.as_deref().and_then(|s| f(s).ok())
}

fn tagged(buf: &[u8]) -> Res<Frame<'_>> {
    let wire: Tagged<'_> = serde_json::from_slice(buf).map_err(|_| "json")?;
    let secs = |ts: Option<i64>| ts.and_then(|s| s.checked_mul(1000));
    Ok(match wire {
        Tagged::OrderbookDelta { sid, seq, msg, sending_ts_ms } => Frame::Delta {
            sid,
            seq,
            market: borrowed(&msg.market_ticker)?,
            side: side(&msg.side)?,
            price: price(&msg.price_dollars)?,
            delta: signed_size(&msg.delta_fp)?,
            ts_ms: msg.ts_ms.or(sending_ts_ms),
        },
        Tagged::OrderbookSnapshot { id, sid, seq, msg, sending_ts_ms } => {
            let lv = |raw: &[(Cow<'_, str>, Cow<'_, str>)]| -> Res<Vec<(Price, Qty)>> {
                raw.iter().map(|(p, q)| Ok((price(p)?, size(q)?))).collect()
            };
            Frame::Snapshot {
                id,
                sid,
                seq,
                market: borrowed(&msg.market_ticker)?,
                yes: lv(&msg.yes_dollars_fp)?,
                no: lv(&msg.no_dollars_fp)?,
                sending_ts_ms,
            }
        }
        Tagged::Ticker { sid, msg, sending_ts_ms } => Frame::Ticker {
            sid,
            market: borrowed(&msg.market_ticker)?,
            quote: Quote {
                last: msg.price_dollars.as_deref().and_then(|s| price(s).ok()),
                bid: msg.yes_bid_dollars.as_deref().and_then(|s| price(s).ok()),
                ask: msg.yes_ask_dollars.as_deref().and_then(|s| price(s).ok()),
                bid_size: opt(&msg.yes_bid_size_fp, size),
                ask_size: opt(&msg.yes_ask_size_fp, size),
                last_size: opt(&msg.last_trade_size_fp, size),
                volume: opt(&msg.volume_fp, size),
                open_interest: opt(&msg.open_interest_fp, size),
                dollar_volume: msg.dollar_volume,
                dollar_open_interest: msg.dollar_open_interest,
            },
            ts_ms: msg.ts_ms.or(secs(msg.ts)).or(sending_ts_ms),
        },
        Tagged::Trade { sid, seq, msg, sending_ts_ms } => Frame::Trade {
            sid,
            seq,
            market: borrowed(&msg.market_ticker)?,
            trade_id: borrowed(&msg.trade_id)?,
            yes_price: price(&msg.yes_price_dollars)?,
            count: size(&msg.count_fp)?,
            taker_side: msg
                .taker_outcome_side
                .as_deref()
                .or(msg.taker_side.as_deref())
                .and_then(|s| side(s).ok()),
            block: msg.is_block_trade,
            ts_ms: msg.ts_ms.or(secs(msg.ts)).or(sending_ts_ms),
        },
        Tagged::Other => return Err("other"),
    })
}

// ---------------------------------------------------------------------------------------------

/// Refuses to benchmark contenders that disagree on any frame of the mix.
fn assert_same_results(frames: &[String]) {
    let mut parser = Parser::default();
    let mut buf = FrameBuf::default();
    for frame in frames {
        let got =
            parser.parse_frame(frame.as_bytes(), &mut buf, &mut Vec::new()).expect("tickd parses the mix");
        assert_eq!(fair(frame), Ok(got), "fair baseline: {frame}");
        let got =
            parser.parse_frame(frame.as_bytes(), &mut buf, &mut Vec::new()).expect("tickd parses the mix");
        assert_eq!(tagged(frame.as_bytes()), Ok(got), "tagged baseline: {frame}");
        let mut padded = FrameBuf::from_text(frame.as_bytes());
        assert_eq!(
            parser.parse_buf(&mut padded, &mut Vec::new()).ok(),
            fair(frame).ok(),
            "simd-json path: {frame}"
        );
    }
}

/// The CPU time of the benchmark thread (`CLOCK_THREAD_CPUTIME_ID`): on a machine shared with
/// other work, time the thread spent waiting for a core is not counted against a contender.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu()
    }

    fn end(&self, started: Duration) -> Duration {
        thread_cpu().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &Nanos
    }
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Values in ns (shown as µs), throughputs in elements per second.
struct Nanos;

impl ValueFormatter for Nanos {
    fn scale_values(&self, _typical: f64, values: &mut [f64]) -> &'static str {
        values.iter_mut().for_each(|v| *v /= 1e3);
        "µs"
    }

    fn scale_throughputs(&self, _typical: f64, throughput: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match *throughput {
            Throughput::Elements(n) | Throughput::ElementsAndBytes { elements: n, .. } => n as f64,
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Bits(n) => n as f64,
        };
        values.iter_mut().for_each(|v| *v = n * 1e9 / *v / 1e6);
        "Melem/s"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn run_group(c: &mut Criterion<ThreadCpu>, name: &str, frames: &[String]) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(6));

    group.bench_function("tickd_simd_tape", |b| {
        let mut parser = Parser::default();
        let mut buf = FrameBuf::default();
        let mut kept: Vec<Note<'static>> = Vec::new();
        b.iter(|| {
            for frame in frames {
                // The feed's path (`Session::on_frame`): the common shapes read straight from
                // the received text, the rest copied into a padded buffer for simd-json; the
                // notes' allocation reused.
                let mut notes = recycle_notes(std::mem::take(&mut kept));
                let _ = black_box(parser.parse_frame(black_box(frame.as_bytes()), &mut buf, &mut notes));
                kept = recycle_notes(notes);
            }
        });
    });

    group.bench_function("serde_json_fair", |b| {
        b.iter(|| {
            for frame in frames {
                let _ = black_box(fair(black_box(frame)));
            }
        });
    });

    group.bench_function("serde_json_tagged", |b| {
        b.iter(|| {
            for frame in frames {
                let _ = black_box(tagged(black_box(frame.as_bytes())));
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
                let len = frame.len();
                buf.clear();
                buf.extend_from_slice(frame.as_bytes());
                buf.resize(len + simd_json::INPUT_PADDING, 0);
                let mut t = std::mem::replace(&mut tape, simd_json::Tape(Vec::new())).reset();
                let _ =
                    black_box(simd_json::fill_tape_padded(black_box(&mut buf), len, &mut buffers, &mut t));
                black_box(t.0.len());
                tape = t.reset();
            }
        });
    });
    group.finish();
}

fn parse_and_normalize(c: &mut Criterion<ThreadCpu>) {
    let mix = frame_mix();
    let deltas = deltas_only(&mix);
    assert_same_results(&mix);
    run_group(c, "parse_mix", &mix);
    run_group(c, "parse_deltas", &deltas);
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = parse_and_normalize
}
criterion_main!(benches);
