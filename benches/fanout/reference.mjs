// The reference broadcast server of `cargo bench --bench fanout`, written only for that bench.
//
// It connects to the same tick source as tickd (the simulator's Kalshi WebSocket), subscribes
// the same channels tickd does, and forwards every text frame it receives, unchanged, to every
// connected client with `ws`: the simplest honest broadcast. No parsing, no per-client
// subscriptions, no queue limits (a slow client just buffers in `ws`).
//
// Usage: node reference.mjs <simulator ws url> <comma-separated market tickers>
// Prints one line `{"port": <port>}` once the upstream subscriptions are acknowledged and the
// server listens on 127.0.0.1; then serves until killed.

import { WebSocket, WebSocketServer } from 'ws';

const [url, marketList] = process.argv.slice(2);
if (!url || !marketList) {
  console.error('usage: node reference.mjs <simulator ws url> <market,market,...>');
  process.exit(2);
}
const markets = marketList.split(',');

// The commands tickd's feed sends (orderbook_delta, ticker and trade for the markets, and
// market_lifecycle_v2 for all), so the upstream stream is the same.
const commands = [
  { channels: ['orderbook_delta'], market_tickers: markets, use_yes_price: true },
  { channels: ['ticker'], market_tickers: markets },
  { channels: ['trade'], market_tickers: markets },
  { channels: ['market_lifecycle_v2'] },
].map((params, i) => JSON.stringify({ id: i + 1, cmd: 'subscribe', params }));

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
const upstream = new WebSocket(url);
let acked = 0;
let listening = false;

function ready() {
  if (listening && acked === commands.length) {
    console.log(JSON.stringify({ port: wss.address().port }));
  }
}

wss.on('listening', () => {
  listening = true;
  ready();
});
// Clients may send commands (the bench sends tickd's subscribe); there is nothing to answer.
wss.on('connection', (ws) => ws.on('error', () => {}));

upstream.on('open', () => {
  for (const c of commands) upstream.send(c);
});
upstream.on('message', (data, isBinary) => {
  if (acked < commands.length) {
    // The acks and the initial book snapshots arrive before any client connects; only the
    // acks are looked at, to say when the stream is set up.
    if (data.toString().includes('"type":"subscribed"')) {
      acked += 1;
      ready();
    }
  }
  for (const c of wss.clients) {
    if (c.readyState === WebSocket.OPEN) c.send(data, { binary: isBinary });
  }
});
upstream.on('close', () => process.exit(1));
upstream.on('error', (e) => {
  console.error(`upstream: ${e.message}`);
  process.exit(1);
});
