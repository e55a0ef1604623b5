//! One connection's protocol state, without I/O: client commands in, server frames out.
//!
//! The connection task feeds it command text, batches of exchange updates and fault triggers;
//! it answers with rendered frames. It owns the connection's subscriptions: sids from a
//! per-connection counter starting at 1 (never reused), one per channel of a `subscribe`, each
//! with its own `seq` counter. Every sid-scoped frame that carries a `seq` (snapshot, delta,
//! sequenced trade, lifecycle, `ok`, `unsubscribed`, sid-scoped `error`) takes the next number,
//! so a client sees 1, 2, 3... per sid unless a gap is injected.
//!
//! # Validation order
//!
//! When a command has several faults, the first check below that fails decides the reply:
//!
//! 1. The frame is a JSON object, else **1** without `id`.
//! 2. `id`, when present and not null, is a non-negative integer, else **1** without `id`.
//!    (`id: 0` means "no id": replies then carry none.)
//! 3. `cmd` is a string, else **1**; a missing or unknown command is **5**.
//! 4. `subscribe`, `unsubscribe` and `update_subscription` need `params`: missing or null **2**,
//!    not an object **1**. `list_subscriptions` ignores `params`.
//! 5. Every known parameter has the right JSON type (strings, arrays of strings, integers,
//!    booleans), else **1**.
//! 6. `subscribe`: `channels` missing or empty **3**; an unknown or removed channel (`ticker_v2`,
//!    `multivariate`...) **8**; a private channel (`fill`, `user_orders`...) on a connection that
//!    did not sign its handshake **9** (`orderbook_delta` is served unsigned: its book is public
//!    and the simulator places no orders of its own); `shard_factor` 0 **19**, `shard_key`
//!    without `shard_factor` **20**, `shard_key` out of range **21**, `shard_factor` above 100
//!    **22**; conflicting or malformed market filters, or `market_id(s)` on a channel other than
//!    `ticker` **11**; `orderbook_delta` without a ticker **14**; an unknown market when markets
//!    are not created on demand **11**. All channels are checked before any sid is allocated, so
//!    a `subscribe` succeeds or fails as a whole.
//! 7. `unsubscribe`: `sids` missing or empty **4**; any unknown sid **7** (then nothing is
//!    cancelled).
//! 8. `update_subscription`: `action` missing **15**; `sid` and `sids` both or neither given, or
//!    `sids` not exactly one element **12**; unknown sid **7**; action unknown or unsupported by
//!    that channel (`get_snapshot` outside `orderbook_delta`, market changes on lifecycle,
//!    private or all-market subscriptions) **13**; malformed filters, or anything but
//!    `market_tickers` for `get_snapshot` **11**; no market given **14**; unknown market when
//!    markets are not created on demand **11**.
//!
//! Code 27 (command rate) is not implemented: the simulator accepts any command rate.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::exchange::{Update, UpdateKind};
use super::hub::Hub;
use super::render::{self, Envelope};

/// A rendered frame, with the trade id when it is a trade (for `Simulator::trades_sent`).
#[derive(Debug)]
pub(crate) struct Out {
    pub text: String,
    pub trade_id: Option<String>,
}

impl Out {
    fn text(text: String) -> Out {
        Out { text, trade_id: None }
    }
}

/// Channels the simulator knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Channel {
    Orderbook,
    Ticker,
    Trade,
    Lifecycle,
    /// A real channel the simulator accepts but publishes nothing on.
    Quiet(&'static str),
}

/// Channels of the current spec the simulator accepts without data.
const QUIET_PUBLIC: &[&str] = &["multivariate_market_lifecycle"];
/// Channels that need a signed handshake (error 9 otherwise).
const PRIVATE: &[&str] = &[
    "fill",
    "market_positions",
    "user_orders",
    "order_group_updates",
    "communications",
    "cfbenchmarks_value",
    "cfbenchmarks_value_5hz",
    "pyth_value",
];

impl Channel {
    fn parse(name: &str) -> Option<Channel> {
        Some(match name {
            "orderbook_delta" => Channel::Orderbook,
            "ticker" => Channel::Ticker,
            "trade" => Channel::Trade,
            "market_lifecycle_v2" => Channel::Lifecycle,
            _ => {
                let known = PRIVATE.iter().chain(QUIET_PUBLIC).find(|c| **c == name)?;
                Channel::Quiet(known)
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Channel::Orderbook => "orderbook_delta",
            Channel::Ticker => "ticker",
            Channel::Trade => "trade",
            Channel::Lifecycle => "market_lifecycle_v2",
            Channel::Quiet(n) => n,
        }
    }

    fn private(self) -> bool {
        matches!(self, Channel::Quiet(n) if PRIVATE.contains(&n))
    }

    /// Whether the channel publishes simulated data (and so can overflow).
    fn has_data(self) -> bool {
        !matches!(self, Channel::Quiet(_))
    }
}

/// One subscription (sid).
#[derive(Debug)]
struct Sub {
    sid: u64,
    channel: Channel,
    /// Last seq used on this sid.
    seq: u64,
    /// Numbers to skip before the next seq (fault injection).
    skip: u64,
    /// `Some(as_of)` when the sid covers every market: updates numbered below `as_of` predate it.
    all: Option<u64>,
    /// Markets in the order they were added (for acks).
    markets: Vec<Arc<str>>,
    /// Market → first update number this sid delivers for it (its snapshot point).
    filter: HashMap<Arc<str>, u64>,
    use_yes_price: bool,
    skip_ticker_ack: bool,
    /// Markets frozen on this sid (the `freeze` fault): their updates are not sent.
    frozen: HashSet<Arc<str>>,
}

impl Sub {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1 + self.skip;
        self.skip = 0;
        self.seq
    }

    fn wants(&self, u: &Update) -> bool {
        if !self.frozen.is_empty() && self.frozen.contains(&*u.market.ticker) {
            return false;
        }
        match self.all {
            Some(as_of) => u.no >= as_of,
            None => self.filter.get(&*u.market.ticker).is_some_and(|as_of| u.no >= *as_of),
        }
    }

    fn set_markets(&mut self, tickers: &[Arc<str>], as_of: u64) {
        for t in tickers {
            if self.filter.insert(t.clone(), as_of).is_none() {
                self.markets.push(t.clone());
            }
        }
    }
}

/// Options of the whole simulator that shape frames.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameOpts {
    /// Trade frames carry `seq`.
    pub trade_seq: bool,
    /// Data frames carry `sending_ts_ms`.
    pub sending_ts: bool,
    /// Data frames carry an unknown top-level field.
    pub extra_fields: bool,
}

/// Per-connection protocol state.
#[derive(Debug)]
pub(crate) struct Session {
    authed: bool,
    opts: FrameOpts,
    next_sid: u64,
    subs: Vec<Sub>,
}

/// A market filter from command params.
enum Filter {
    None,
    Tickers(Vec<String>),
    Ids(Vec<String>),
}

type Reply<T> = Result<T, u32>;

impl Session {
    pub(crate) fn new(authed: bool, opts: FrameOpts) -> Session {
        Session { authed, opts, next_sid: 1, subs: Vec::new() }
    }

    fn env(&self) -> Envelope {
        Envelope { sending_ts: self.opts.sending_ts.then(now_ms), extra_field: self.opts.extra_fields }
    }

    fn sequenced(&self, c: Channel) -> bool {
        match c {
            Channel::Orderbook | Channel::Lifecycle => true,
            Channel::Trade => self.opts.trade_seq,
            Channel::Ticker | Channel::Quiet(_) => false,
        }
    }

    /// Handles one client text frame.
    pub(crate) fn command(&mut self, hub: &Hub, text: &str, out: &mut Vec<Out>) {
        let v: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => return out.push(Out::text(render::error(None, None, 1, &[]))),
        };
        let Value::Object(obj) = v else {
            return out.push(Out::text(render::error(None, None, 1, &[])));
        };
        let id = match obj.get("id") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(id) => Some(id),
                None => return out.push(Out::text(render::error(None, None, 1, &[]))),
            },
        };
        if let Err(code) = self.dispatch(hub, id, &obj, out) {
            out.push(Out::text(render::error(id, None, code, &[])));
        }
    }

    fn dispatch(
        &mut self,
        hub: &Hub,
        id: Option<u64>,
        obj: &Map<String, Value>,
        out: &mut Vec<Out>,
    ) -> Reply<()> {
        let cmd = match obj.get("cmd") {
            None | Some(Value::Null) => return Err(5),
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(1),
        };
        let needs_params = matches!(cmd, "subscribe" | "unsubscribe" | "update_subscription");
        if cmd == "list_subscriptions" {
            let list: Vec<(&str, u64)> = self.subs.iter().map(|s| (s.channel.name(), s.sid)).collect();
            out.push(Out::text(render::ok_list(id, &list)));
            return Ok(());
        }
        if !needs_params {
            return Err(5);
        }
        let params = match obj.get("params") {
            None | Some(Value::Null) => return Err(2),
            Some(Value::Object(p)) => p,
            Some(_) => return Err(1),
        };
        check_types(params)?;
        match cmd {
            "subscribe" => self.subscribe(hub, id, params, out),
            "unsubscribe" => self.unsubscribe(id, params, out),
            _ => self.update(hub, id, params, out),
        }
    }

    fn subscribe(
        &mut self,
        hub: &Hub,
        id: Option<u64>,
        p: &Map<String, Value>,
        out: &mut Vec<Out>,
    ) -> Reply<()> {
        let names = str_list(p, "channels")?.ok_or(3u32)?;
        if names.is_empty() {
            return Err(3);
        }
        let mut channels = Vec::with_capacity(names.len());
        for n in &names {
            channels.push(Channel::parse(n).ok_or(8u32)?);
        }
        if !self.authed && channels.iter().any(|c| c.private()) {
            return Err(9);
        }
        check_shards(p)?;
        let filter = market_filter(p)?;
        if matches!(filter, Filter::Ids(_)) && channels.iter().any(|c| *c != Channel::Ticker) {
            return Err(11);
        }
        if channels.contains(&Channel::Orderbook) && !matches!(filter, Filter::Tickers(_)) {
            return Err(14);
        }
        let use_yes_price = bool_param(p, "use_yes_price")?;
        let skip_ticker_ack = bool_param(p, "skip_ticker_ack")?;
        let initial_ticker = bool_param(p, "send_initial_snapshot")?;

        let mut st = hub.lock();
        let now = now_ms();
        let tickers: Option<Vec<Arc<str>>> = match &filter {
            Filter::None => None,
            Filter::Tickers(t) => {
                hub.ensure_markets(&mut st, t, now).map_err(|_| 11u32)?;
                Some(t.iter().filter_map(|t| st.ex.market_ref(t)).map(|m| m.ticker.clone()).collect())
            }
            Filter::Ids(ids) => {
                let mut found = Vec::with_capacity(ids.len());
                for i in ids {
                    found.push(st.ex.ticker_by_id(i).ok_or(11u32)?);
                }
                Some(found)
            }
        };
        // Everything validated: allocate sids in channel order, acknowledge all, then data.
        let as_of = st.ex.next_update_no();
        let first = self.subs.len();
        for channel in channels {
            let sid = self.next_sid;
            self.next_sid += 1;
            let mut sub = Sub {
                sid,
                channel,
                seq: 0,
                skip: 0,
                all: None,
                markets: Vec::new(),
                filter: HashMap::new(),
                use_yes_price,
                skip_ticker_ack,
                frozen: HashSet::new(),
            };
            match (&tickers, channel) {
                // Lifecycle has no market filter: always every market.
                (_, Channel::Lifecycle) | (None, _) => sub.all = Some(as_of),
                (Some(t), _) => sub.set_markets(t, as_of),
            }
            out.push(Out::text(render::subscribed(id, channel.name(), sid)));
            self.subs.push(sub);
        }
        let env = self.env();
        for sub in &mut self.subs[first..] {
            match sub.channel {
                Channel::Orderbook => {
                    for t in sub.markets.clone() {
                        if let (Some(m), Some(book)) = (st.ex.market_ref(&t), st.ex.book(&t)) {
                            let seq = sub.next_seq();
                            out.push(Out::text(render::snapshot(
                                None,
                                sub.sid,
                                seq,
                                &m,
                                &book,
                                sub.use_yes_price,
                                env,
                            )));
                        }
                    }
                }
                Channel::Ticker if initial_ticker => {
                    let list = if sub.all.is_some() {
                        st.ex.markets().into_iter().map(Arc::from).collect()
                    } else {
                        sub.markets.clone()
                    };
                    for t in list {
                        if let (Some(m), Some(q)) = (st.ex.market_ref(&t), st.ex.ticker(&t)) {
                            out.push(Out::text(render::ticker(sub.sid, &m, &q, env)));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn unsubscribe(&mut self, id: Option<u64>, p: &Map<String, Value>, out: &mut Vec<Out>) -> Reply<()> {
        let mut sids = u64_list(p, "sids")?.ok_or(4u32)?;
        if sids.is_empty() {
            return Err(4);
        }
        let mut seen = std::collections::HashSet::new();
        sids.retain(|s| seen.insert(*s));
        if sids.iter().any(|s| !self.subs.iter().any(|x| x.sid == *s)) {
            return Err(7);
        }
        for sid in sids {
            if let Some(pos) = self.subs.iter().position(|x| x.sid == sid) {
                let mut sub = self.subs.remove(pos);
                let seq = sub.next_seq();
                out.push(Out::text(render::unsubscribed(id, sid, seq)));
            }
        }
        Ok(())
    }

    fn update(
        &mut self,
        hub: &Hub,
        id: Option<u64>,
        p: &Map<String, Value>,
        out: &mut Vec<Out>,
    ) -> Reply<()> {
        let action = match p.get("action") {
            Some(Value::String(a)) => a.as_str(),
            _ => return Err(15),
        };
        let sid = match (p.get("sid").filter(|v| !v.is_null()), u64_list(p, "sids")?) {
            (Some(v), None) => v.as_u64().ok_or(1u32)?,
            (None, Some(list)) if list.len() == 1 => list[0],
            _ => return Err(12),
        };
        let pos = self.subs.iter().position(|s| s.sid == sid).ok_or(7u32)?;
        let channel = self.subs[pos].channel;
        let all = self.subs[pos].all.is_some();
        match action {
            "add_markets" | "delete_markets"
                if matches!(channel, Channel::Orderbook | Channel::Ticker | Channel::Trade) && !all => {}
            "get_snapshot" if channel == Channel::Orderbook => {}
            _ => return Err(13),
        }
        if action == "get_snapshot"
            && (p.contains_key("market_ticker")
                || p.contains_key("market_id")
                || p.contains_key("market_ids"))
        {
            return Err(11);
        }
        let filter = market_filter(p)?;
        if matches!(filter, Filter::Ids(_)) && channel != Channel::Ticker {
            return Err(11);
        }
        let send_initial = bool_param(p, "send_initial_snapshot")?;
        let mut st = hub.lock();
        let now = now_ms();
        let tickers: Vec<Arc<str>> = match filter {
            Filter::None => return Err(14),
            Filter::Tickers(t) => {
                if action == "add_markets" {
                    hub.ensure_markets(&mut st, &t, now).map_err(|_| 11u32)?;
                } else if t.iter().any(|t| !st.ex.has_market(t)) && action == "get_snapshot" {
                    return Err(11);
                }
                t.into_iter().map(Arc::from).collect()
            }
            Filter::Ids(ids) => {
                let mut found = Vec::with_capacity(ids.len());
                for i in ids {
                    found.push(st.ex.ticker_by_id(&i).ok_or(11u32)?);
                }
                found
            }
        };
        let as_of = st.ex.next_update_no();
        let env = self.env();
        let sub = &mut self.subs[pos];
        match action {
            "add_markets" => {
                let new: Vec<Arc<str>> =
                    tickers.iter().filter(|t| !sub.filter.contains_key(*t)).cloned().collect();
                sub.set_markets(&new, as_of);
                let seq = sub.next_seq();
                let list: Vec<&str> = sub.markets.iter().map(|m| &**m).collect();
                out.push(Out::text(render::ok_update(
                    id,
                    sid,
                    seq,
                    (!sub.skip_ticker_ack).then_some(&list[..]),
                )));
                for t in &new {
                    let Some(m) = st.ex.market_ref(t) else {
                        continue;
                    };
                    if channel == Channel::Orderbook {
                        if let Some(book) = st.ex.book(t) {
                            let seq = sub.next_seq();
                            out.push(Out::text(render::snapshot(
                                None,
                                sid,
                                seq,
                                &m,
                                &book,
                                sub.use_yes_price,
                                env,
                            )));
                        }
                    } else if channel == Channel::Ticker
                        && send_initial
                        && let Some(q) = st.ex.ticker(t)
                    {
                        out.push(Out::text(render::ticker(sid, &m, &q, env)));
                    }
                }
            }
            "delete_markets" => {
                for t in &tickers {
                    sub.filter.remove(t);
                    // Resubscribed later, it streams again.
                    sub.frozen.remove(t);
                }
                sub.markets.retain(|m| sub.filter.contains_key(m));
                let seq = sub.next_seq();
                let list: Vec<&str> = sub.markets.iter().map(|m| &**m).collect();
                out.push(Out::text(render::ok_update(
                    id,
                    sid,
                    seq,
                    (!sub.skip_ticker_ack).then_some(&list[..]),
                )));
            }
            _ => {
                for t in &tickers {
                    // The client asked for the market afresh: it streams again, on every sid.
                    for other in &mut self.subs {
                        other.frozen.remove(t);
                    }
                }
                let sub = &mut self.subs[pos];
                for t in &tickers {
                    let (Some(m), Some(book)) = (st.ex.market_ref(t), st.ex.book(t)) else {
                        continue;
                    };
                    // Queued deltas older than this snapshot are already in it: skip them.
                    if let Some(as_of_t) = sub.filter.get_mut(t) {
                        *as_of_t = as_of;
                    }
                    let seq = sub.next_seq();
                    out.push(Out::text(render::snapshot(id, sid, seq, &m, &book, sub.use_yes_price, env)));
                }
            }
        }
        Ok(())
    }

    /// Renders the frames a batch of exchange updates produces on this connection.
    pub(crate) fn on_batch(&mut self, batch: &[Update], out: &mut Vec<Out>) {
        if self.subs.is_empty() {
            return;
        }
        let env = self.env();
        let trade_seq = self.opts.trade_seq;
        for u in batch {
            for sub in &mut self.subs {
                let wanted = match (&u.kind, sub.channel) {
                    (UpdateKind::Delta { .. }, Channel::Orderbook)
                    | (UpdateKind::Trade(_), Channel::Trade)
                    | (UpdateKind::Ticker(_), Channel::Ticker)
                    | (UpdateKind::Lifecycle { .. }, Channel::Lifecycle) => sub.wants(u),
                    _ => false,
                };
                if !wanted {
                    continue;
                }
                let m = &u.market;
                match &u.kind {
                    UpdateKind::Delta { side, price, delta, ts_ms } => {
                        let seq = sub.next_seq();
                        let f = render::delta(
                            sub.sid,
                            seq,
                            m,
                            *side,
                            *price,
                            *delta,
                            *ts_ms,
                            sub.use_yes_price,
                            env,
                        );
                        out.push(Out::text(f));
                    }
                    UpdateKind::Trade(t) => {
                        let seq = trade_seq.then(|| sub.next_seq());
                        let f = render::trade(sub.sid, seq, m, t, env);
                        out.push(Out { text: f, trade_id: Some(t.trade_id.clone()) });
                    }
                    UpdateKind::Ticker(q) => out.push(Out::text(render::ticker(sub.sid, m, q, env))),
                    UpdateKind::Lifecycle { msg_type, msg } => {
                        let seq = sub.next_seq();
                        out.push(Out::text(render::lifecycle(sub.sid, seq, msg_type, msg, env)));
                    }
                }
            }
        }
    }

    /// The connection fell too far behind the exchange: every data sid lost updates, so each
    /// gets error 25 (terminal) and goes silent.
    pub(crate) fn on_lag(&mut self, out: &mut Vec<Out>) {
        self.kill(25, |c| c.has_data(), out);
    }

    /// Error `code` (10 or 25) on every orderbook sid, which then goes silent.
    pub(crate) fn terminal(&mut self, code: u32, out: &mut Vec<Out>) {
        self.kill(code, |c| c == Channel::Orderbook, out);
    }

    fn kill(&mut self, code: u32, which: impl Fn(Channel) -> bool, out: &mut Vec<Out>) {
        let trade_seq = self.opts.trade_seq;
        self.subs.retain_mut(|sub| {
            if !which(sub.channel) {
                return true;
            }
            let sequenced = match sub.channel {
                Channel::Orderbook | Channel::Lifecycle => true,
                Channel::Trade => trade_seq,
                _ => false,
            };
            let seq = sequenced.then(|| sub.next_seq());
            out.push(Out::text(render::error(None, Some((sub.sid, seq)), code, &[])));
            false
        });
    }

    /// Stops sending `market`'s updates on every data sid that carries it now (its book and
    /// trades keep changing on the exchange), until the client asks for its snapshot
    /// (`get_snapshot`) or removes it from a sid and adds it again. Returns how many sids it
    /// froze.
    pub(crate) fn freeze(&mut self, market: &str) -> usize {
        let mut frozen = 0;
        for sub in &mut self.subs {
            let carries = sub.channel.has_data()
                && sub.channel != Channel::Lifecycle
                && (sub.all.is_some() || sub.filter.contains_key(market));
            if carries && sub.frozen.insert(Arc::from(market)) {
                frozen += 1;
            }
        }
        frozen
    }

    /// The next sequenced frame of every live sequenced sid jumps by `n`.
    pub(crate) fn skip_seq(&mut self, n: u64) {
        let seqd: Vec<bool> = self.subs.iter().map(|s| self.sequenced(s.channel)).collect();
        for (sub, s) in self.subs.iter_mut().zip(seqd) {
            if s {
                sub.skip += n;
            }
        }
    }
}

/// Current Unix time in ms.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Rejects known parameters of the wrong JSON type with code 1.
fn check_types(p: &Map<String, Value>) -> Reply<()> {
    for key in ["channels", "market_tickers", "market_ids"] {
        str_list(p, key)?;
    }
    for key in ["market_ticker", "market_id", "action"] {
        match p.get(key) {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(1),
        }
    }
    for key in ["send_initial_snapshot", "skip_ticker_ack", "use_yes_price"] {
        bool_param(p, key)?;
    }
    for key in ["sid", "shard_factor", "shard_key"] {
        match p.get(key) {
            None | Some(Value::Null) => {}
            Some(v) if v.is_i64() || v.is_u64() => {}
            Some(_) => return Err(1),
        }
    }
    u64_list(p, "sids")?;
    Ok(())
}

fn str_list<'a>(p: &'a Map<String, Value>, key: &str) -> Reply<Option<Vec<&'a str>>> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => {
            a.iter().map(|v| v.as_str().ok_or(1u32)).collect::<Reply<Vec<_>>>().map(Some)
        }
        Some(_) => Err(1),
    }
}

fn u64_list(p: &Map<String, Value>, key: &str) -> Reply<Option<Vec<u64>>> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => {
            a.iter().map(|v| v.as_u64().ok_or(1u32)).collect::<Reply<Vec<_>>>().map(Some)
        }
        Some(_) => Err(1),
    }
}

fn bool_param(p: &Map<String, Value>, key: &str) -> Reply<bool> {
    match p.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(1),
    }
}

/// Codes 19–22 for the `communications` sharding parameters.
fn check_shards(p: &Map<String, Value>) -> Reply<()> {
    let factor = p.get("shard_factor").and_then(Value::as_i64);
    let key = p.get("shard_key").and_then(Value::as_i64);
    match (factor, key) {
        (Some(f), _) if f <= 0 => Err(19),
        (Some(f), _) if f > 100 => Err(22),
        (None, Some(_)) => Err(20),
        (Some(f), Some(k)) if k < 0 || k >= f => Err(21),
        _ => Ok(()),
    }
}

/// A usable market ticker: up to 128 bytes, no whitespace or control characters. Kalshi's own
/// are `[A-Z0-9._-]`, but any other character is accepted (and escaped in frames), so that a
/// client's handling of unusual tickers can be tested end to end.
fn valid_ticker(t: &str) -> bool {
    !t.is_empty() && t.len() <= 128 && !t.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn valid_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() })
}

/// The market filter of a command: ticker(s) or id(s), mutually exclusive, well formed.
fn market_filter(p: &Map<String, Value>) -> Reply<Filter> {
    let one = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
    let many =
        |k: &str| str_list(p, k).map(|o| o.map(|v| v.into_iter().map(str::to_owned).collect::<Vec<_>>()));
    let tickers = match (one("market_ticker"), many("market_tickers")?) {
        (Some(_), Some(_)) => return Err(11),
        (Some(t), None) => Some(vec![t]),
        (None, list) => list,
    };
    let ids = match (one("market_id"), many("market_ids")?) {
        (Some(_), Some(_)) => return Err(11),
        (Some(i), None) => Some(vec![i]),
        (None, list) => list,
    };
    match (tickers, ids) {
        (Some(_), Some(_)) => Err(11),
        (Some(t), None) if t.is_empty() || !t.iter().all(|t| valid_ticker(t)) => Err(11),
        (Some(mut t), None) => {
            let mut seen = std::collections::HashSet::new();
            t.retain(|x| seen.insert(x.clone()));
            Ok(Filter::Tickers(t))
        }
        (None, Some(i)) if i.is_empty() || !i.iter().all(|i| valid_uuid(i)) => Err(11),
        (None, Some(i)) => Ok(Filter::Ids(i)),
        (None, None) => Ok(Filter::None),
    }
}
