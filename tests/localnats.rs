//! Private NATS servers from Debian's `nats-server`: real processes and real client
//! connections. Every test starts its own server on a free port, so they run in parallel.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tickd::dev::localnats::{LocalNats, LocalNatsOptions};

/// How long a refused connection may take to be refused.
const REFUSAL_LIMIT: Duration = Duration::from_secs(10);

async fn start(opts: LocalNatsOptions) -> LocalNats {
    LocalNats::start(opts).await.unwrap_or_else(|e| panic!("starting nats-server: {e}"))
}

/// A client that gives up at once instead of retrying, so a refusal shows as an error.
async fn connect(url: &str, token: Option<&str>) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut opts = async_nats::ConnectOptions::new().connection_timeout(REFUSAL_LIMIT);
    if let Some(token) = token {
        opts = opts.token(token.to_owned());
    }
    opts.connect(url).await
}

#[tokio::test]
async fn a_stream_written_before_a_restart_is_there_after_it_on_the_same_url() {
    // Arrange: a stream holding one message.
    let nats = start(LocalNatsOptions::default()).await;
    let client = connect(&nats.url(), None).await.expect("connect");
    let js = jetstream::new(client);
    js.create_stream(stream::Config { name: "T".into(), subjects: vec!["t.>".into()], ..Default::default() })
        .await
        .expect("create stream");
    js.publish("t.a", "one".into()).await.expect("publish").await.expect("ack");

    // Act: stop (nothing answers), then start again.
    nats.stop().await.expect("stop");
    let refused = connect(&nats.url(), None).await;
    nats.restart().await.expect("restart");

    // Assert
    assert!(refused.is_err(), "a stopped server accepted a connection");
    let client = connect(&nats.url(), None).await.expect("reconnect on the same URL");
    let js = jetstream::new(client);
    let mut stream = js.get_stream("T").await.expect("the stream survived");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
    let msg = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(msg.payload.as_ref(), b"one");
}

#[tokio::test]
async fn a_token_server_refuses_clients_without_the_token() {
    let nats = start(LocalNatsOptions { token: Some("s3cret".into()), ..Default::default() }).await;

    let without = connect(&nats.url(), None).await;
    let wrong = connect(&nats.url(), Some("guess")).await;
    let right = connect(&nats.url(), Some("s3cret")).await;

    assert!(without.is_err(), "a client without the token was accepted");
    assert!(wrong.is_err(), "a client with a wrong token was accepted");
    let client = right.expect("the token is accepted");
    client.publish("x", "y".into()).await.expect("publish");
    client.flush().await.expect("flush");
}

#[tokio::test]
async fn dropping_the_server_stops_it_and_removes_its_scratch_directory() {
    let nats = start(LocalNatsOptions::default()).await;
    let url = nats.url();
    let scratch = nats.scratch_dir().to_owned();
    assert!(scratch.join("jetstream").is_dir(), "JetStream stores in the scratch directory");

    drop(nats);

    assert!(connect(&url, None).await.is_err(), "the server still answers after drop");
    assert!(!scratch.exists(), "{} was left behind", scratch.display());
}

#[tokio::test]
async fn a_chosen_store_directory_keeps_streams_for_the_next_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = LocalNatsOptions { store_dir: Some(dir.path().join("js")), ..Default::default() };
    {
        let nats = start(opts.clone()).await;
        let js = jetstream::new(connect(&nats.url(), None).await.expect("connect"));
        js.create_stream(stream::Config {
            name: "KEPT".into(),
            subjects: vec!["k".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
        js.publish("k", "kept".into()).await.expect("publish").await.expect("ack");
    }

    let nats = start(opts).await;

    let js = jetstream::new(connect(&nats.url(), None).await.expect("connect"));
    let mut stream = js.get_stream("KEPT").await.expect("the stream is still there");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
}
