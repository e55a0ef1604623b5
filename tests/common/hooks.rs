//! A webhook receiver on 127.0.0.1 for alert tests: it records every POST tickd sends to
//! `alerts.webhook_url`, so that tests assert on what an operator's endpoint gets.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use serde_json::Value;

/// The secret in the webhook URL's query, which must never be logged.
pub const HOOK_TOKEN: &str = "hook-secret-5f2c9a";

/// One request the webhook receiver got, and how it answered.
#[derive(Clone, Debug)]
pub struct Post {
    /// The request's path and query.
    pub target: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its body (`null` when not JSON).
    pub json: Value,
    /// What the receiver answered.
    pub status: u16,
}

/// A webhook receiver on 127.0.0.1 that records every POST to `/hook` and answers 503 to the
/// first `fail_first`, 200 after.
#[derive(Clone, Default)]
pub struct Hooks {
    posts: Arc<Mutex<Vec<Post>>>,
    fail_first: Arc<AtomicU32>,
}

impl Hooks {
    /// Starts a receiver; returns it and the webhook URL (with [`HOOK_TOKEN`] in its query).
    pub async fn serve(fail_first: u32) -> (Hooks, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("receiver binds");
        let addr = listener.local_addr().expect("receiver address");
        let hooks = Hooks { fail_first: Arc::new(AtomicU32::new(fail_first)), ..Hooks::default() };
        let app = Router::new().route("/hook", post(receive)).with_state(hooks.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver serves") });
        (hooks, format!("http://{addr}/hook?token={HOOK_TOKEN}"))
    }

    /// Every POST so far, in order.
    pub fn all(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// The bodies of the POSTs answered 200.
    pub fn accepted(&self) -> Vec<Value> {
        self.all().into_iter().filter(|p| p.status == 200).map(|p| p.json).collect()
    }

    /// The accepted bodies of `kind` in `state`.
    pub fn accepted_of(&self, kind: &str, state: &str) -> Vec<Value> {
        self.accepted().into_iter().filter(|j| j["kind"] == kind && j["state"] == state).collect()
    }
}

async fn receive(State(hooks): State<Hooks>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let fail =
        hooks.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    let status = if fail { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let content_type =
        headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    hooks.posts.lock().unwrap().push(Post {
        target: uri.to_string(),
        content_type,
        json,
        status: status.as_u16(),
    });
    status
}
