// tickd dashboard: one WebSocket to tickd's /ws (protocol: docs/dashboard.md), a market table,
// the selected market's chart, book and trades, and the state of every feed connection.
//
// Data flow: frames arrive in onFrame(), which only updates the model (`model`) and marks what
// changed; render() runs on a timer and redraws only what is marked. Prices and sizes stay the
// integers tickd sends ($0.0001 and 0.01-contract units) and become strings only for display;
// the chart alone gets floating-point dollars.
'use strict';

(() => {
  // ---- Settings ---------------------------------------------------------------------------

  const PROTOCOL = 'tickd.v1';
  const CHANNELS = ['quotes', 'trades', 'book', 'lifecycle', 'feed'];
  // Reconnect delays: BASE * 2^attempt, capped, then jittered down by up to half.
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;
  // A connection that stayed open this long counts as good: the next failure starts over.
  const STABLE_AFTER_MS = 10000;
  // With nothing received for this long, send a ping; with nothing for IDLE_LIMIT_MS after
  // that, the connection is dead (a half-open TCP never closes by itself).
  const PING_WHEN_IDLE_MS = 15000;
  const IDLE_LIMIT_MS = 20000;
  // Periodic status frames overdue by this much make the feed panel stale.
  const STATUS_OVERDUE_MS = 5000;
  // Chart points kept per market (older ones are dropped), trades kept per market.
  const SERIES_CAP = 3000;
  const TAPE_CAP = 50;
  // Markets let go (`market` frames with `followed: false`) remembered, to ignore late frames.
  const LET_GO_CAP = 10000;
  const BOOK_LEVELS = 12;
  const HISTORY_ROWS = 500;
  const RENDER_EVERY_MS = 100;
  const CHART_EVERY_MS = 250;
  // A market whose last update is older than this shows its age as old.
  const OLD_AFTER_MS = 10000;
  const PRICE_ONE = 10000; // $1 in price units
  const CLOSE_REASONS = {
    1000: 'closed',
    1001: 'tickd is shutting down',
    1006: 'connection lost',
    1009: 'a command was larger than tickd accepts',
    1011: 'internal error in tickd',
    4008: 'this page could not keep up with the stream',
    4029: 'this page sent too many commands',
  };

  // ---- Formatting: integers in, strings out ------------------------------------------------

  const dash = '—';

  // Thousands separators for a non-negative integer string.
  function group(digits) {
    return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  }

  // Price in $0.0001 units as dollars, in cents unless it has a fraction of a cent or `fine`
  // asks for four decimals (a market that trades in fractions of a cent, so its columns line
  // up): 4800 -> "0.48", 4825 -> "0.4825", 4800 fine -> "0.4800".
  function fmtPrice(p, fine) {
    if (p === null || p === undefined) return dash;
    const sign = p < 0 ? '-' : '';
    const a = Math.abs(p);
    let frac = String(a % PRICE_ONE).padStart(4, '0');
    if (!fine) frac = frac.replace(/00$/, '');
    return `${sign}${group(String(Math.floor(a / PRICE_ONE)))}.${frac}`;
  }

  // Size in 0.01-contract units as contracts: 30000 -> "300", 30050 -> "300.5".
  function fmtSize(s) {
    if (s === null || s === undefined) return dash;
    const sign = s < 0 ? '-' : '';
    const a = Math.abs(s);
    const whole = group(String(Math.floor(a / 100)));
    const cents = a % 100;
    if (cents === 0) return sign + whole;
    return `${sign}${whole}.${String(cents).padStart(2, '0').replace(/0$/, '')}`;
  }

  function fmtAge(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return dash;
    const s = Math.max(0, ms) / 1000;
    if (s < 10) return `${s.toFixed(1)}s`;
    if (s < 120) return `${Math.floor(s)}s`;
    if (s < 7200) return `${Math.floor(s / 60)}m`;
    if (s < 172800) return `${Math.floor(s / 3600)}h`;
    return `${Math.floor(s / 86400)}d`;
  }

  function fmtClock(ms) {
    const d = new Date(ms);
    const two = (n) => String(n).padStart(2, '0');
    return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  }

  function fmtCount(n) {
    return n === null || n === undefined ? dash : group(String(n));
  }

  // ---- Where to connect, with what token ---------------------------------------------------

  // `#token=...` keeps the token out of server logs and the Referer; `?token=` also works.
  function readToken() {
    const fromHash = new URLSearchParams(location.hash.replace(/^#/, '')).get('token');
    return fromHash || new URLSearchParams(location.search).get('token') || '';
  }

  function streamUrl(query) {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/ws${query}`;
  }

  // Opens the socket offering the token as a subprotocol. A token that is not a valid
  // subprotocol name (the constructor throws) goes in the query string instead.
  function openSocket(token) {
    if (!token) return new WebSocket(streamUrl(''), [PROTOCOL]);
    try {
      return new WebSocket(streamUrl(''), [PROTOCOL, `bearer.${token}`]);
    } catch (e) {
      if (e.name !== 'SyntaxError') throw e;
      return new WebSocket(streamUrl(`?token=${encodeURIComponent(token)}`), [PROTOCOL]);
    }
  }

  // ---- The model ---------------------------------------------------------------------------

  const model = {
    conn: {
      state: 'connecting', // connecting | open | reconnecting | closed
      attempt: 0, // consecutive failed connections
      retryAt: 0, // when the next attempt starts (Date.now() ms), while reconnecting
      reason: '', // why the last connection ended
      openedAt: 0,
      lastRecvAt: 0,
      everOpened: false,
    },
    // Server clock minus ours, from `hello` and `pong`; ages are measured on tickd's clock.
    clockOffsetMs: 0,
    lag: { count: 0, missed: 0 },
    markets: new Map(), // ticker -> market (see newMarket)
    letGo: new Set(), // markets tickd stopped following: late frames about them are ignored
    feeds: new Map(), // "feed/conn" -> feed connection (see feedEntry)
    store: null,
    clients: null,
    lastStatusAt: 0, // Date.now() of the last periodic status frame
    statusGapMs: 0, // observed spacing of periodic status frames
    selected: null,
    notice: '',
  };

  // What render() must redraw.
  const dirty = { rows: new Set(), feeds: true, detail: true, book: true, tape: true, chart: true, header: true };

  function serverNowMs() {
    return Date.now() + model.clockOffsetMs;
  }

  function newMarket(ticker) {
    return {
      ticker,
      feed: '',
      quote: null, // the last quote frame
      last: null, // last traded price: from trades and quotes, whichever is newer
      lastAtUs: 0,
      lastUpdateUs: 0, // recv_ts of the newest frame of any kind for this market
      // Bids per side: price -> size. `verified` is false from a disconnect, a lag or a
      // `stale: true` book until tickd sends a fresh book.
      book: null,
      lifecycle: '',
      fine: false, // has shown a price in fractions of a cent: show four decimals throughout
      tape: [], // newest first
      series: { t: [], trade: [], mid: [] }, // chart columns, oldest first
      historyAsked: false,
      row: null, // DOM: the table row and its cells
    };
  }

  function market(ticker) {
    let m = model.markets.get(ticker);
    if (!m) {
      m = newMarket(ticker);
      model.markets.set(ticker, m);
      if (model.selected === null) select(ticker);
    }
    return m;
  }

  // Notes prices in fractions of a cent, which switch the market's display to four decimals.
  function notePrices(m, ...prices) {
    if (m.fine) return;
    if (prices.some((p) => p !== null && p !== undefined && p % 100 !== 0)) {
      m.fine = true;
      if (m.ticker === model.selected) dirty.book = dirty.tape = dirty.detail = true;
    }
  }

  function touch(m, recvTs) {
    if (recvTs > m.lastUpdateUs) m.lastUpdateUs = recvTs;
    dirty.rows.add(m.ticker);
  }

  // ---- Books: exact integer levels ---------------------------------------------------------

  function bookFrom(frame) {
    const side = (levels) => new Map((levels || []).map(([price, size]) => [price, size]));
    return { yes: side(frame.yes), no: side(frame.no), verified: !frame.stale, broken: false };
  }

  // Adds `delta` at `price`; a level reaching zero is removed. A level going below zero means
  // the page missed something: the book is flagged until the next full book replaces it.
  function applyDelta(book, frame) {
    const levels = frame.side === 'no' ? book.no : book.yes;
    const size = (levels.get(frame.price) || 0) + frame.delta;
    if (size > 0) {
      levels.set(frame.price, size);
    } else {
      levels.delete(frame.price);
      if (size < 0) book.broken = true;
    }
  }

  function unverifyBooks() {
    for (const m of model.markets.values()) {
      if (m.book) m.book.verified = false;
    }
    dirty.book = true;
  }

  // ---- Chart series ------------------------------------------------------------------------

  function pushPoint(m, tUs, trade, mid) {
    const s = m.series;
    const t = tUs / 1e6;
    // Out-of-order points (several feeds) go to their place; the usual case appends.
    let i = s.t.length;
    while (i > 0 && s.t[i - 1] > t) i--;
    s.t.splice(i, 0, t);
    s.trade.splice(i, 0, trade);
    s.mid.splice(i, 0, mid);
    // Trim in chunks so the cost per point stays constant.
    if (s.t.length > SERIES_CAP * 1.25) {
      const cut = s.t.length - SERIES_CAP;
      s.t.splice(0, cut);
      s.trade.splice(0, cut);
      s.mid.splice(0, cut);
    }
    if (m.ticker === model.selected) dirty.chart = true;
  }

  function midOf(q) {
    if (q.bid === null || q.bid === undefined || q.ask === null || q.ask === undefined) return null;
    return (q.bid + q.ask) / 2 / PRICE_ONE;
  }

  // ---- Frames ------------------------------------------------------------------------------

  const handlers = {
    hello(f) {
      model.clockOffsetMs = f.server_time_us / 1000 - Date.now();
      if (f.ping_interval_ms) model.conn.pingIntervalMs = f.ping_interval_ms;
    },
    subscribed(f) {
      const unknown = f.unknown && f.unknown.length ? `; not followed by any feed: ${f.unknown.join(', ')}` : '';
      setNotice(unknown ? `Subscribed${unknown}` : '');
    },
    unsubscribed() {},
    pong(f) {
      if (f.server_time_us) model.clockOffsetMs = f.server_time_us / 1000 - Date.now();
    },
    lagged(f) {
      // Fresh state frames follow; until a market's book arrives again it is not vouched for.
      model.lag.count += 1;
      model.lag.missed += f.missed || 0;
      unverifyBooks();
      dirty.header = true;
    },
    error(f, asked) {
      if (asked && asked.cmd === 'history') return; // the chart just has no backfill
      const what = asked ? ` (${asked.cmd})` : '';
      setNotice(`tickd: ${f.code}${what}: ${f.message}`);
    },
    history(f, asked) {
      const m = model.markets.get(f.market);
      if (m && asked) mergeHistory(m, f.channel, f.rows || [], asked.beforeUs);
    },
    status(f) {
      onStatus(f);
    },
    quote(f) {
      const m = market(f.market);
      m.feed = f.feed;
      m.quote = f;
      notePrices(m, f.bid, f.ask, f.last);
      if (f.last !== null && f.last !== undefined && f.recv_ts >= m.lastAtUs) {
        m.last = f.last;
        m.lastAtUs = f.recv_ts;
      }
      touch(m, f.recv_ts);
      // A state frame may repeat what the chart already has.
      const lastT = m.series.t.length ? m.series.t[m.series.t.length - 1] : 0;
      if (!f.state || f.recv_ts / 1e6 > lastT) pushPoint(m, f.recv_ts, null, midOf(f));
      if (m.ticker === model.selected) dirty.detail = true;
    },
    trade(f) {
      const m = market(f.market);
      m.feed = f.feed;
      notePrices(m, f.price);
      // A backfilled trade (recovered over REST after a gap) happened at its exchange time,
      // before trades already shown: it goes on the chart there and is not the last price.
      const atUs = f.backfill && f.exch_ts != null ? f.exch_ts * 1000 : f.recv_ts;
      if (!f.backfill && f.recv_ts >= m.lastAtUs) {
        m.last = f.price;
        m.lastAtUs = f.recv_ts;
      }
      if (!f.backfill) touch(m, f.recv_ts);
      addToTape(m, f);
      pushPoint(m, atUs, f.price / PRICE_ONE, null);
    },
    book(f) {
      const m = market(f.market);
      m.feed = f.feed;
      m.book = bookFrom(f);
      notePrices(m, ...m.book.yes.keys(), ...m.book.no.keys());
      touch(m, f.recv_ts);
      if (m.ticker === model.selected) dirty.book = true;
    },
    delta(f) {
      const m = market(f.market);
      touch(m, f.recv_ts);
      // Without a book to apply it to, a delta means nothing; the next book replaces all.
      if (!m.book) return;
      applyDelta(m.book, f);
      notePrices(m, f.price);
      if (m.ticker === model.selected) dirty.book = true;
    },
    lifecycle(f) {
      // The lifecycle channel covers every market of the exchange (and events, whose tickers
      // are no markets): it updates the rows of markets shown and adds none.
      const m = model.markets.get(f.market);
      if (!m) return;
      m.lifecycle = f.event || '';
      touch(m, f.recv_ts);
    },
    // What tickd follows of a feed's series and events: a market let go leaves the table.
    market(f) {
      if (f.followed === false) {
        model.letGo.add(f.market);
        // Bounded: the oldest let-go markets are forgotten first.
        if (model.letGo.size > LET_GO_CAP) model.letGo.delete(model.letGo.values().next().value);
        const m = model.markets.get(f.market);
        if (!m) return;
        if (m.row) m.row.tr.remove();
        model.markets.delete(f.market);
        setText($('#market-count'), `(${model.markets.size})`);
        $('#markets-empty').hidden = model.markets.size > 0;
        if (model.selected === f.market) {
          model.selected = null;
          dirty.detail = dirty.book = dirty.tape = dirty.chart = true;
        }
        return;
      }
      if (f.followed === true) model.letGo.delete(f.market);
      if (model.letGo.has(f.market)) return;
      const m = market(f.market);
      if (f.status) m.lifecycle = f.status;
      touch(m, f.recv_ts);
    },
    feed(f) {
      onFeedEvent(f);
    },
  };

  const MARKET_FRAMES = new Set(['quote', 'trade', 'book', 'delta', 'lifecycle', 'market']);

  function onFrame(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch (e) {
      console.warn('tickd: a frame that is not JSON', text);
      return;
    }
    const handler = f && handlers[f.type];
    if (!handler) {
      console.warn('tickd: unknown frame', f);
      return;
    }
    // Replies echo their command's id (periodic status frames have none).
    let asked;
    if (f.id !== undefined && f.id !== null) {
      asked = pending.get(f.id);
      pending.delete(f.id);
    }
    // Frames about a market need one; feed-wide frames go to the feed panel. Frames in flight
    // about a market tickd has let go do not bring its row back.
    if (MARKET_FRAMES.has(f.type) && !f.market) return;
    if (f.type !== 'market' && MARKET_FRAMES.has(f.type) && model.letGo.has(f.market)) return;
    handler(f, asked);
  }

  function addToTape(m, f) {
    m.tape.unshift(f);
    if (m.tape.length > TAPE_CAP) m.tape.length = TAPE_CAP;
    if (m.ticker === model.selected) dirty.tape = true;
  }

  // History rows go before what the chart held when they were asked for (`beforeUs`), so
  // nothing is drawn twice.
  function mergeHistory(m, channel, rows, beforeUs) {
    const older = rows.filter((r) => r.recv_ts < beforeUs);
    for (const r of older) {
      if (channel === 'trades') pushPoint(m, r.recv_ts, r.price / PRICE_ONE, null);
      else if (channel === 'quotes') pushPoint(m, r.recv_ts, null, midOf(r));
    }
    if (channel === 'trades') {
      const oldestTape = m.tape.length ? m.tape[m.tape.length - 1].recv_ts : Infinity;
      for (const r of rows.filter((r) => r.recv_ts < oldestTape).reverse()) {
        if (m.tape.length >= TAPE_CAP) break;
        m.tape.push(r);
      }
      if (!m.lastAtUs && rows.length) {
        const newest = rows[rows.length - 1];
        m.last = newest.price;
        m.lastAtUs = newest.recv_ts;
        dirty.rows.add(m.ticker);
      }
    }
    if (m.ticker === model.selected) {
      dirty.chart = true;
      dirty.tape = true;
    }
  }

  // ---- Feed connections --------------------------------------------------------------------

  // What each feed event says about the connection's state (events not listed keep it).
  const EVENT_STATE = {
    connecting: 'connecting',
    connected: 'subscribing',
    subscribed: 'subscribing',
    live: 'live',
    resynced: 'live',
    disconnected: 'disconnected',
    backing_off: 'backing_off',
    stale: 'stale',
    given_up: 'given_up',
  };

  function feedEntry(feed, conn) {
    const key = `${feed}/${conn}`;
    let e = model.feeds.get(key);
    if (!e) {
      e = {
        key, feed, conn, state: 'unknown', live: false, reconnects: 0, gaps: 0, alerts: 0,
        lastMessageAgeMs: null, ageAt: 0, lastEvent: '', lastEventAt: 0,
      };
      model.feeds.set(key, e);
    }
    return e;
  }

  function onFeedEvent(f) {
    const e = feedEntry(f.feed, f.conn);
    // An event that names a market (one book gone stale, or resynced) says nothing about the
    // connection, whose other markets stay live: the book frames carry that market's state.
    const state = f.market ? undefined : EVENT_STATE[f.event];
    if (state) {
      e.state = state;
      e.live = state === 'live';
    }
    if (f.event === 'connected' && e.connectedOnce) e.reconnects += 1;
    if (f.event === 'connected') e.connectedOnce = true;
    if (f.event === 'gap') e.gaps += 1;
    if (f.event === 'alert') e.alerts += 1;
    e.lastEvent = `${fmtClock(f.recv_ts ? f.recv_ts / 1000 : serverNowMs())} ${describeEvent(f)}`;
    e.lastEventAt = Date.now();
    // A feed event is itself a message from the feed's connection only when it is live.
    dirty.feeds = true;
  }

  function describeEvent(f) {
    const parts = [f.event];
    if (f.reason) parts.push(f.reason);
    if (f.channel) parts.push(f.channel);
    if (f.failures !== undefined && f.failures !== null) parts.push(`${f.failures} failed`);
    if (f.delay_ms !== undefined && f.delay_ms !== null) parts.push(`retry in ${fmtAge(f.delay_ms)}`);
    if (f.attempt !== undefined && f.attempt !== null) parts.push(`attempt ${f.attempt}`);
    if (f.kind) parts.push(f.kind);
    if (f.event === 'gap') parts.push(`sid ${f.sid}: expected ${f.expected}, got ${f.got}`);
    if (f.message) parts.push(f.message);
    return parts.join(' · ');
  }

  function stateText(state) {
    return String(state || 'unknown').replace(/_/g, ' ');
  }

  function onStatus(f) {
    const now = Date.now();
    if (f.id === undefined || f.id === null) {
      if (model.lastStatusAt) model.statusGapMs = now - model.lastStatusAt;
      model.lastStatusAt = now;
    }
    const seen = new Set();
    for (const s of f.feeds || []) {
      const e = feedEntry(s.feed, s.conn);
      seen.add(e.key);
      e.state = s.state;
      e.live = s.live === true;
      e.reconnects = s.reconnects ?? e.reconnects;
      e.gaps = s.gaps ?? e.gaps;
      e.alerts = s.alerts ?? e.alerts;
      e.connectedOnce = (s.connects || 0) > 0;
      e.lastMessageAgeMs = s.last_message_age_ms;
      e.ageAt = now;
      e.markets = Array.isArray(s.markets) ? s.markets.length : s.markets;
    }
    // Connections tickd no longer has (a reload removed them) leave the panel.
    for (const key of [...model.feeds.keys()]) {
      if (!seen.has(key)) model.feeds.delete(key);
    }
    model.store = f.store ?? null;
    model.clients = f.clients ?? null;
    dirty.feeds = true;
    dirty.header = true;
  }

  // Why the data on screen cannot be taken as live, or an empty list.
  function staleReasons() {
    const reasons = [];
    if (model.conn.state !== 'open') {
      reasons.push('not connected to tickd');
      return reasons;
    }
    if (model.feeds.size === 0) {
      reasons.push('no feed status from tickd yet');
      return reasons;
    }
    for (const e of model.feeds.values()) {
      if (!e.live) reasons.push(`feed ${e.key} is ${stateText(e.state)}`);
    }
    const overdue = Date.now() - model.lastStatusAt;
    if (model.lastStatusAt && overdue > Math.max(STATUS_OVERDUE_MS, 3 * model.statusGapMs)) {
      reasons.push(`no status from tickd for ${fmtAge(overdue)}`);
    }
    return reasons;
  }

  // ---- The connection ----------------------------------------------------------------------

  let socket = null;
  let nextId = 1;
  const pending = new Map(); // command id -> the command, until its reply
  let retryTimer = null;

  // Sends a command; `note` stays with it in `pending` for the reply's handler.
  function send(cmd, note) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return null;
    const msg = { ...cmd, id: nextId++ };
    pending.set(msg.id, { ...msg, ...note });
    socket.send(JSON.stringify(msg));
    return msg.id;
  }

  function setConn(state, reason) {
    model.conn.state = state;
    if (reason !== undefined) model.conn.reason = reason;
    dirty.header = true;
    dirty.feeds = true;
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    setConn('connecting');
    let ws;
    try {
      ws = openSocket(readToken());
    } catch (e) {
      setConn('closed', `cannot open the stream: ${e.message}`);
      return;
    }
    socket = ws;
    // Every handler checks that its socket is still the current one: a socket given up by
    // the watchdog may still report events later.
    ws.onopen = () => {
      if (ws !== socket) return;
      model.conn.openedAt = Date.now();
      model.conn.lastRecvAt = Date.now();
      model.conn.everOpened = true;
      pending.clear();
      for (const m of model.markets.values()) m.historyAsked = false;
      // Events seen on an earlier connection may be from an earlier tickd: the status frame
      // that follows the subscription tells the state now.
      for (const e of model.feeds.values()) e.lastEvent = '';
      setConn('open', '');
      send({ cmd: 'subscribe', channels: CHANNELS, markets: 'all' });
      if (model.selected) askHistory(model.markets.get(model.selected));
    };
    ws.onmessage = (ev) => {
      if (ws !== socket) return;
      model.conn.lastRecvAt = Date.now();
      onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws !== socket) return;
      lost(closeReason(ev, model.conn.openedAt > 0));
    };
    // An error is always followed by a close event, which says more.
    ws.onerror = () => {};
    model.conn.openedAt = 0;
  }

  function closeReason(ev, opened) {
    if (!opened) return 'tickd did not accept the connection (not running, or the token was refused)';
    const known = CLOSE_REASONS[ev.code];
    const why = ev.reason ? `: ${ev.reason}` : '';
    return `${known || 'closed'} (${ev.code})${why}`;
  }

  // The connection ended: the data on screen is no longer live; try again after a delay.
  function lost(reason) {
    const ws = socket;
    socket = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close();
    }
    const stable = model.conn.openedAt && Date.now() - model.conn.openedAt >= STABLE_AFTER_MS;
    model.conn.attempt = stable ? 0 : model.conn.attempt + 1;
    model.conn.openedAt = 0;
    unverifyBooks();
    for (const e of model.feeds.values()) e.live = false;
    const delay = backoffMs(model.conn.attempt);
    model.conn.retryAt = Date.now() + delay;
    setConn('reconnecting', reason);
    retryTimer = setTimeout(connect, delay);
  }

  // Capped exponential backoff; the jitter keeps many open pages from returning in step.
  function backoffMs(attempt) {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
    return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
  }

  function reconnectNow() {
    if (model.conn.state === 'reconnecting' || model.conn.state === 'closed') connect();
  }

  // Pings an idle connection and gives up one that stays silent (a half-open TCP connection
  // never closes by itself).
  function watchdog() {
    if (!socket || model.conn.state !== 'open') return;
    const idle = Date.now() - model.conn.lastRecvAt;
    const limit = PING_WHEN_IDLE_MS + Math.max(IDLE_LIMIT_MS, model.conn.pingIntervalMs || 0);
    if (idle > limit) {
      lost(`nothing from tickd for ${fmtAge(idle)}`);
    } else if (idle > PING_WHEN_IDLE_MS && !model.conn.pinged) {
      model.conn.pinged = true;
      send({ cmd: 'ping' });
    } else if (idle <= PING_WHEN_IDLE_MS) {
      model.conn.pinged = false;
    }
  }

  function askHistory(m) {
    if (!m || m.historyAsked || !socket || model.conn.state !== 'open') return;
    m.historyAsked = true;
    const beforeUs = m.series.t.length ? m.series.t[0] * 1e6 : serverNowMs() * 1000;
    for (const channel of ['trades', 'quotes']) {
      send({ cmd: 'history', channel, market: m.ticker, limit: HISTORY_ROWS }, { beforeUs });
    }
  }

  // ---- Rendering ---------------------------------------------------------------------------

  const $ = (sel) => document.querySelector(sel);

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function setNotice(text) {
    model.notice = text;
    dirty.header = true;
  }

  function select(ticker) {
    if (model.selected === ticker) return;
    model.selected = ticker;
    const m = model.markets.get(ticker);
    askHistory(m);
    for (const row of document.querySelectorAll('#markets tbody tr.selected')) row.classList.remove('selected');
    if (m && m.row) m.row.tr.classList.add('selected');
    dirty.detail = dirty.book = dirty.tape = dirty.chart = true;
    if (chart) chart.setData(chartData(m), true);
  }

  function marketRow(m) {
    if (m.row) return m.row;
    const tr = el('tr');
    tr.dataset.market = m.ticker;
    const cells = {
      market: el('td', 'market', m.ticker),
      bid: el('td', 'num bid'),
      ask: el('td', 'num ask'),
      last: el('td', 'num last'),
      volume: el('td', 'num volume'),
      age: el('td', 'num age'),
      status: el('td', 'status'),
    };
    for (const td of Object.values(cells)) tr.append(td);
    if (m.ticker === model.selected) tr.classList.add('selected');
    // Keep the table sorted by ticker.
    const body = $('#markets tbody');
    const after = [...body.children].find((r) => r.dataset.market > m.ticker);
    body.insertBefore(tr, after || null);
    $('#markets-empty').hidden = true;
    setText($('#market-count'), `(${model.markets.size})`);
    m.row = { tr, cells, last: null };
    return m.row;
  }

  function renderRow(m) {
    const { tr, cells } = marketRow(m);
    const q = m.quote || {};
    setText(cells.bid, fmtPrice(q.bid, m.fine));
    setText(cells.ask, fmtPrice(q.ask, m.fine));
    setText(cells.last, fmtPrice(m.last, m.fine));
    setText(cells.volume, fmtSize(q.volume));
    setText(cells.status, m.lifecycle);
    // Flash the last price when it moves.
    if (m.row.last !== null && m.last !== null && m.last !== m.row.last) {
      cells.last.classList.remove('up', 'down');
      void cells.last.offsetWidth; // restart the animation
      cells.last.classList.add(m.last > m.row.last ? 'up' : 'down');
    }
    m.row.last = m.last;
    tr.classList.toggle('ended', ['closed', 'determined', 'settled', 'deactivated'].includes(m.lifecycle));
    renderAge(m);
  }

  function renderAge(m) {
    if (!m.row) return;
    const age = m.lastUpdateUs ? serverNowMs() - m.lastUpdateUs / 1000 : null;
    setText(m.row.cells.age, fmtAge(age));
    m.row.cells.age.classList.toggle('old', age !== null && age > OLD_AFTER_MS);
  }

  function renderHeader() {
    const c = model.conn;
    const node = $('#conn-state');
    node.dataset.state = c.state;
    let text = c.state;
    if (c.state === 'reconnecting') text = `reconnecting in ${Math.max(0, Math.ceil((c.retryAt - Date.now()) / 1000))} s`;
    setText(node, text);
    $('#reconnect-now').hidden = !(c.state === 'reconnecting' || c.state === 'closed');
    setText($('#conn-reason'), c.reason);
    const lag = $('#lag');
    setText(lag, model.lag.count ? `lagged ${model.lag.count} (${fmtCount(model.lag.missed)} missed)` : 'lagged 0');
    lag.classList.toggle('warn', model.lag.count > 0);
    lag.dataset.count = String(model.lag.count);
    const s = model.store;
    const store = $('#store');
    if (s) {
      setText(store, `store ${s.state} · ${fmtCount(s.committed)} committed · ${fmtCount(s.spooled)} spooled` +
        (s.lost ? ` · ${fmtCount(s.lost)} lost` : ''));
    } else {
      setText(store, 'store —');
    }
    store.classList.toggle('warn', !!s && (s.spooled > 0 || s.lost > 0));
    setText($('#clients'), `clients ${fmtCount(model.clients)}`);
    const notice = $('#notice');
    setText(notice, model.notice);
    notice.hidden = !model.notice;
  }

  function renderClock() {
    setText($('#clock'), model.conn.everOpened ? fmtClock(serverNowMs()) : dash);
  }

  function renderStale() {
    const reasons = staleReasons();
    const stale = reasons.length > 0;
    const feeds = $('#feeds');
    const markets = $('#markets');
    feeds.classList.toggle('stale', stale);
    markets.classList.toggle('stale', stale);
    feeds.dataset.state = stale ? 'stale' : 'live';
    markets.dataset.state = stale ? 'stale' : 'live';
    $('#stale-banner').hidden = !stale;
    setText($('#stale-reasons'), reasons.length ? `${reasons.join('; ')}.` : '');
  }

  function renderFeeds() {
    const body = $('#feeds tbody');
    const rows = new Map([...body.children].map((tr) => [tr.dataset.key, tr]));
    const keys = [...model.feeds.keys()].sort();
    for (const key of keys) {
      const e = model.feeds.get(key);
      let tr = rows.get(key);
      if (!tr) {
        tr = el('tr');
        tr.dataset.key = key;
        tr.dataset.feed = e.feed;
        tr.dataset.conn = String(e.conn);
        for (const c of ['feed', 'conn', 'state', 'num reconnects', 'num gaps', 'num alerts', 'num msg-age', 'event']) {
          tr.append(el('td', c));
        }
        body.append(tr);
      }
      rows.delete(key);
      const td = tr.children;
      const live = e.live && model.conn.state === 'open';
      tr.dataset.state = e.state;
      tr.classList.toggle('live', live);
      setText(td[0], e.feed);
      setText(td[1], String(e.conn));
      setText(td[2], stateText(e.state));
      setText(td[3], fmtCount(e.reconnects));
      setText(td[4], fmtCount(e.gaps));
      setText(td[5], fmtCount(e.alerts));
      setText(td[7], e.lastEvent);
    }
    for (const tr of rows.values()) tr.remove();
    renderFeedAges();
  }

  // The last message age grows between status frames; the status frame resets it.
  function renderFeedAges() {
    for (const tr of $('#feeds tbody').children) {
      const e = model.feeds.get(tr.dataset.key);
      if (!e) continue;
      const age = e.lastMessageAgeMs === null || e.lastMessageAgeMs === undefined
        ? null
        : e.lastMessageAgeMs + (Date.now() - e.ageAt);
      setText(tr.children[6], fmtAge(age));
    }
  }

  function renderDetail() {
    const m = model.markets.get(model.selected);
    const detail = $('#detail');
    detail.dataset.market = model.selected || '';
    setText($('#detail-market'), m ? m.ticker : 'No market selected');
    const q = m && m.quote;
    setText($('#detail-quote'), q
      ? `bid ${fmtSize(q.bid_size)} @ ${fmtPrice(q.bid, m.fine)} · ask ${fmtSize(q.ask_size)} @ ${fmtPrice(q.ask, m.fine)}` +
        ` · vol ${fmtSize(q.volume)} · OI ${fmtSize(q.open_interest)}` + (m.lifecycle ? ` · ${m.lifecycle}` : '')
      : '');
  }

  // The YES ladder: asks (derived from NO bids: a NO bid at p is a YES ask at $1 - p) above,
  // bids below, best prices meeting in the middle.
  function renderBook() {
    const m = model.markets.get(model.selected);
    const body = $('#book tbody');
    const book = m && m.book;
    const flag = $('#book-flag');
    const panel = $('#book-panel');
    if (!book) {
      body.replaceChildren();
      setText(flag, m ? 'no book yet' : '');
      panel.classList.remove('stale');
      return;
    }
    const bids = [...book.yes.entries()].sort((a, b) => b[0] - a[0]).slice(0, BOOK_LEVELS);
    const asks = [...book.no.entries()]
      .map(([price, size]) => [PRICE_ONE - price, size])
      .sort((a, b) => a[0] - b[0])
      .slice(0, BOOK_LEVELS)
      .reverse();
    const biggest = Math.max(1, ...bids.map((l) => l[1]), ...asks.map((l) => l[1]));
    const rows = [];
    for (const [price, size] of asks) rows.push(ladderRow('ask', price, size, biggest, m.fine));
    if (asks.length && bids.length) {
      const spread = el('tr', 'spread');
      spread.append(el('td'), el('td', 'num', `spread ${fmtPrice(asks[asks.length - 1][0] - bids[0][0], m.fine)}`), el('td'));
      rows.push(spread);
    }
    for (const [price, size] of bids) rows.push(ladderRow('bid', price, size, biggest, m.fine));
    body.replaceChildren(...rows);
    const unsure = !book.verified || book.broken;
    panel.classList.toggle('stale', unsure);
    setText(flag, book.broken ? 'inconsistent: waiting for a fresh book' : book.verified ? '' : 'not verified: waiting for a fresh book');
  }

  function ladderRow(side, price, size, biggest, fine) {
    const tr = el('tr', side);
    tr.dataset.side = side;
    tr.dataset.price = String(price);
    const sizeCell = el('td', 'num size', fmtSize(size));
    // The depth bar's length, as a custom property (CSSOM: allowed by the page's CSP).
    sizeCell.style.setProperty('--depth', String(size / biggest));
    const priceCell = el('td', 'num price', fmtPrice(price, fine));
    if (side === 'bid') tr.append(sizeCell, priceCell, el('td', 'num'));
    else tr.append(el('td', 'num'), priceCell, sizeCell);
    return tr;
  }

  function renderTape() {
    const m = model.markets.get(model.selected);
    const rows = (m ? m.tape : []).map((t) => {
      const tr = el('tr', t.taker_side === 'no' ? 'sell' : 'buy');
      tr.append(
        el('td', 'time', fmtClock(t.recv_ts / 1000)),
        el('td', 'num', fmtPrice(t.price, m.fine)),
        el('td', 'num', fmtSize(t.size)),
        el('td', 'taker', t.taker_side || ''),
      );
      return tr;
    });
    $('#trades tbody').replaceChildren(...rows);
  }

  // ---- The chart ---------------------------------------------------------------------------

  let chart = null;
  const EMPTY = [[], [], []];

  function chartData(m) {
    return m ? [m.series.t, m.series.trade, m.series.mid] : EMPTY;
  }

  function makeChart() {
    const box = $('#chart');
    if (typeof uPlot !== 'function') {
      setText(box, 'The chart library did not load.');
      return;
    }
    const axis = { stroke: '#8b96a3', grid: { stroke: '#1f262e', width: 1 }, ticks: { stroke: '#1f262e' } };
    const dollars = (u, v) => (v === null || v === undefined ? dash : v.toFixed(4).replace(/00$/, ''));
    // The box has a fixed height (app.css); the plot gets what the legend leaves of it.
    const plotSize = () => {
      const legend = chart ? chart.root.querySelector('.u-legend') : null;
      const legendHeight = legend ? legend.offsetHeight : 24;
      return { width: Math.max(200, box.clientWidth), height: Math.max(120, box.clientHeight - legendHeight - 4) };
    };
    chart = new uPlot({
      ...plotSize(),
      legend: { show: true, live: true },
      cursor: { drag: { x: true, y: false } },
      scales: {
        // At least a minute of time and a cent of price, so one point does not span years.
        x: {
          time: true,
          range: (u, min, max) => {
            if (min === null || max === null) return [Date.now() / 1000 - 60, Date.now() / 1000];
            return max - min < 60 ? [max - 60, max + 1] : [min, max];
          },
        },
        y: {
          range: (u, min, max) => {
            if (min === null || max === null) return [0, 1];
            const pad = Math.max(0.005, (max - min) * 0.08);
            return [Math.max(0, min - pad), Math.min(1, max + pad)];
          },
        },
      },
      axes: [axis, { ...axis, values: (u, vals) => vals.map((v) => v.toFixed(2)), size: 50 }],
      series: [
        { value: (u, v) => (v === null ? dash : fmtClock(v * 1000)) },
        {
          label: 'Trade',
          stroke: '#e8c547',
          paths: () => null,
          points: { show: true, size: 4, stroke: '#e8c547', fill: '#e8c547' },
          value: dollars,
        },
        { label: 'Quote mid', stroke: '#4aa3ff', width: 1.5, spanGaps: true, points: { show: false }, value: dollars },
      ],
    }, chartData(model.markets.get(model.selected)), box);
    chart.setSize(plotSize());
    new ResizeObserver(() => chart.setSize(plotSize())).observe(box);
  }

  // ---- The loops ---------------------------------------------------------------------------

  function render() {
    for (const ticker of dirty.rows) {
      const m = model.markets.get(ticker);
      if (m) renderRow(m);
    }
    dirty.rows.clear();
    if (dirty.header) {
      renderHeader();
      renderClock();
    }
    if (dirty.feeds) renderFeeds();
    if (dirty.detail) renderDetail();
    if (dirty.book) renderBook();
    if (dirty.tape) renderTape();
    dirty.header = dirty.feeds = dirty.detail = dirty.book = dirty.tape = false;
    renderStale();
  }

  let chartDrawnAt = 0;
  function renderChart() {
    if (!chart || !dirty.chart) return;
    const now = Date.now();
    if (now - chartDrawnAt < CHART_EVERY_MS) return;
    chartDrawnAt = now;
    dirty.chart = false;
    chart.setData(chartData(model.markets.get(model.selected)));
  }

  // Once a second: ages, the clock, the reconnect countdown, the watchdog.
  function everySecond() {
    for (const m of model.markets.values()) renderAge(m);
    renderFeedAges();
    renderClock();
    watchdog();
    dirty.header = true;
  }

  function onRowClick(ev) {
    const tr = ev.target.closest('tr[data-market]');
    if (tr) select(tr.dataset.market);
  }

  // Up and down arrows move the selection through the table.
  function onKey(ev) {
    if (ev.key !== 'ArrowUp' && ev.key !== 'ArrowDown') return;
    const rows = [...document.querySelectorAll('#markets tbody tr[data-market]')];
    if (!rows.length) return;
    const at = rows.findIndex((r) => r.dataset.market === model.selected);
    const next = rows[Math.min(rows.length - 1, Math.max(0, at + (ev.key === 'ArrowDown' ? 1 : -1)))];
    select(next.dataset.market);
    next.scrollIntoView({ block: 'nearest' });
    ev.preventDefault();
  }

  function start() {
    $('#markets tbody').addEventListener('click', onRowClick);
    document.addEventListener('keydown', onKey);
    $('#reconnect-now').addEventListener('click', reconnectNow);
    // Back online: no reason to wait out the backoff.
    window.addEventListener('online', reconnectNow);
    makeChart();
    connect();
    setInterval(() => {
      render();
      renderChart();
    }, RENDER_EVERY_MS);
    setInterval(everySecond, 1000);
    render();
  }

  start();
})();
