//! Admin calls on the admin listener (`/admin/...`), protected by a bearer token, and the
//! client the `moat queue ...` commands use to reach them.
//!
//! | call | route |
//! | --- | --- |
//! | list | `GET /admin/queue` |
//! | stats | `GET /admin/queue/stats` |
//! | show | `GET /admin/queue/{id}` |
//! | retry, hold, release | `POST /admin/queue/{id}/retry` (… `/hold`, `/release`) |
//! | delete | `DELETE /admin/queue/{id}` |
//! | hops | `GET /admin/relay/hops` |
//! | reload the rule packs | `POST /admin/rules/reload` (422 with the error when rejected) |
//!
//! Errors come back as `{"error": "..."}` with 404 for an unknown id, 401 without the right
//! token and 500 for a local failure.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use moat_queue::{Fault, MessageSummary, Queue, QueueError, QueueId, RcptStatus};
use moat_relay::Relay;
use serde::{Deserialize, Serialize};

/// What the admin routes need.
pub struct AdminApi {
    /// The node's queue.
    pub queue: Queue,
    /// The node's relay.
    pub relay: Relay,
    /// The bearer token.
    pub token: String,
    /// The rules reload path, when the content filter is on.
    pub reloader: Option<crate::filter::Reloader>,
}

/// Reads the token file, or makes one with a random token (mode 0600).
pub fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?
    };
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(token)
}

/// One message in `list`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SummaryJson {
    /// Queue id.
    pub id: String,
    /// Accepted, seconds since the epoch.
    pub received: u64,
    /// Bytes.
    pub size: usize,
    /// Envelope sender.
    pub from: String,
    /// Recipients without a final status.
    pub pending: usize,
    /// All recipients.
    pub total: usize,
    /// pending | deferred | active | held.
    pub state: String,
    /// Next attempt, seconds since the epoch.
    pub next_attempt: Option<u64>,
}

/// `show`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DetailJson {
    /// The summary.
    #[serde(flatten)]
    pub summary: SummaryJson,
    /// Client address, or `dsn`.
    pub origin: String,
    /// Recipients with status and last reply.
    pub recipients: Vec<RcptJson>,
}

/// One recipient in `show`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RcptJson {
    /// Address.
    pub address: String,
    /// pending | deferred | delivered | bounced.
    pub status: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Last reply or error.
    pub reply: Option<String>,
}

/// `stats`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatsJson {
    /// Messages queued.
    pub messages: usize,
    /// Not attempted yet.
    pub pending: usize,
    /// Waiting for a retry.
    pub deferred: usize,
    /// Being delivered.
    pub active: usize,
    /// Held by an operator.
    pub held: usize,
    /// Recipients without a final status.
    pub recipients_pending: usize,
    /// Age of the oldest message in seconds.
    pub oldest_age_seconds: Option<u64>,
    /// Bytes on disk.
    pub spool_bytes: u64,
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn summary(m: &MessageSummary) -> SummaryJson {
    SummaryJson {
        id: m.id.0.clone(),
        received: epoch(m.received),
        size: m.size,
        from: m.mail_from.clone(),
        pending: m.rcpts_pending,
        total: m.rcpts_total,
        state: m.state.as_str().to_string(),
        next_attempt: m.next_attempt.map(epoch),
    }
}

fn rcpt(address: &str, status: &RcptStatus) -> RcptJson {
    let (status, attempts, reply) = match status {
        RcptStatus::Pending => ("pending", 0, None),
        RcptStatus::Deferred {
            attempts, reply, ..
        } => ("deferred", *attempts, Some(reply.clone())),
        RcptStatus::Delivered { reply, .. } => ("delivered", 0, Some(reply.clone())),
        RcptStatus::Bounced { reply, .. } => ("bounced", 0, Some(reply.clone())),
    };
    RcptJson {
        address: address.to_string(),
        status: status.to_string(),
        attempts,
        reply,
    }
}

struct ApiError(StatusCode, String);

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let code = match (&e, e.fault()) {
            (QueueError::NotFound(_), _) => StatusCode::NOT_FOUND,
            (_, Fault::Caller) => StatusCode::BAD_REQUEST,
            (_, Fault::Local) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

type Api = State<Arc<AdminApi>>;

/// Constant-time comparison of the presented token.
fn authorized(api: &AdminApi, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (presented.as_bytes(), api.token.as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token".into(),
        ))
    }
}

async fn list(State(api): Api, h: HeaderMap) -> Result<Json<Vec<SummaryJson>>, ApiError> {
    authorized(&api, &h)?;
    Ok(Json(api.queue.list().iter().map(summary).collect()))
}

async fn stats(State(api): Api, h: HeaderMap) -> Result<Json<StatsJson>, ApiError> {
    authorized(&api, &h)?;
    let s = api.queue.stats();
    Ok(Json(StatsJson {
        messages: s.messages,
        pending: s.pending,
        deferred: s.deferred,
        active: s.active,
        held: s.held,
        recipients_pending: s.rcpts_pending,
        oldest_age_seconds: s.oldest_age.map(|d| d.as_secs()),
        spool_bytes: s.spool_bytes,
    }))
}

async fn show(
    State(api): Api,
    h: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<DetailJson>, ApiError> {
    authorized(&api, &h)?;
    let d = api.queue.show(&QueueId(id))?;
    Ok(Json(DetailJson {
        summary: summary(&d.summary),
        origin: d.origin,
        recipients: d.rcpts.iter().map(|(a, s)| rcpt(a, s)).collect(),
    }))
}

async fn action(
    State(api): Api,
    h: HeaderMap,
    UrlPath((id, verb)): UrlPath<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorized(&api, &h)?;
    let id = QueueId(id);
    match verb.as_str() {
        "retry" => api.queue.retry(&id)?,
        "hold" => api.queue.hold(&id).await?,
        "release" => api.queue.release(&id).await?,
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no action {other:?}"),
            ));
        }
    }
    Ok(Json(serde_json::json!({ "id": id.0, "done": verb })))
}

async fn delete(
    State(api): Api,
    h: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorized(&api, &h)?;
    api.queue.delete(&QueueId(id.clone())).await?;
    Ok(Json(serde_json::json!({ "id": id, "done": "delete" })))
}

async fn hops(State(api): Api, h: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    authorized(&api, &h)?;
    let hops: Vec<_> = api
        .relay
        .hop_status()
        .into_iter()
        .map(|(name, open)| serde_json::json!({ "hop": name, "circuit_open": open }))
        .collect();
    Ok(Json(serde_json::Value::Array(hops)))
}

async fn reload_rules(State(api): Api, h: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    authorized(&api, &h)?;
    let Some(r) = &api.reloader else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "the content filter is off".into(),
        ));
    };
    let answer = r
        .reload(crate::filter::Trigger::Admin)
        .await
        .ok_or_else(|| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reload task stopped".into(),
            )
        })?;
    let code = if answer.result == "rejected" {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    if code != StatusCode::OK {
        return Err(ApiError(code, answer.detail));
    }
    Ok(Json(
        serde_json::json!({ "result": answer.result, "detail": answer.detail }),
    ))
}

/// The `/admin` routes.
pub fn routes(api: Arc<AdminApi>) -> Router {
    Router::new()
        .route("/admin/queue", get(list))
        .route("/admin/queue/stats", get(stats))
        .route("/admin/queue/{id}", get(show).delete(delete))
        .route("/admin/queue/{id}/{verb}", post(action))
        .route("/admin/relay/hops", get(hops))
        .route("/admin/rules/reload", post(reload_rules))
        .with_state(api)
}

// --- client ------------------------------------------------------------------------------

/// Calls an admin route; returns the JSON body or the error text.
pub fn call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
) -> Result<serde_json::Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("{base}{path}");
    let auth = format!("Bearer {token}");
    let result = match method {
        "GET" => agent.get(&url).header("authorization", &auth).call(),
        "DELETE" => agent.delete(&url).header("authorization", &auth).call(),
        _ => agent.post(&url).header("authorization", &auth).send_empty(),
    };
    let mut resp =
        result.map_err(|e| format!("cannot reach the node's admin listener at {base}: {e}"))?;
    let status = resp.status();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    if status.is_success() {
        Ok(value)
    } else {
        let msg = value
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        Err(format!("{status}: {msg}"))
    }
}
