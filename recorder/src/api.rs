//! The control API: JSON over HTTP/1.1 on a Unix socket, served with hyper. Documented in
//! `docs/api.yaml`. The CLI and (later) a UI only reach the daemon through it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use deetune_store::{Store, TaskRecord, TaskSpec, TaskState};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Command, EngineStats};

/// Largest request body accepted.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// An error answer: `{"error": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, as a sentence.
    pub error: String,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// deetune version.
    pub version: String,
    /// Daemon pid.
    pub pid: u32,
    /// Data directory.
    pub data_dir: String,
    /// Whether the eBPF capture runs.
    pub capture: bool,
    /// Counters.
    pub stats: EngineStats,
}

/// `GET /v1/tasks/{id}/exchanges` item.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredExchange {
    /// Exchange id in the store.
    pub id: u64,
    /// Its task (given by `GET /v1/exchanges/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The exchange.
    pub exchange: deetune_protocols::Exchange,
}

/// `POST /v1/tasks/{id}/export` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// File the daemon writes (absolute path on the daemon's host).
    pub path: String,
    /// `bundle` (default; `.zst` compresses) or `har`.
    #[serde(default)]
    pub format: Option<String>,
}

/// `POST /v1/tasks/{id}/export` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportAnswer {
    /// Exchanges written.
    pub exchanges: u64,
}

/// Shared state of the API handlers.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Commands to the engine.
    pub commands: mpsc::Sender<Command>,
    /// The store (sled is safe to read concurrently).
    pub store: Arc<Store>,
    /// Whether the capture runs.
    pub capture: bool,
}

type Answer = Response<Full<Bytes>>;

fn json<T: Serialize>(status: StatusCode, v: &T) -> Answer {
    let body = serde_json::to_vec_pretty(v).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error(status: StatusCode, msg: impl Into<String>) -> Answer {
    json(status, &ApiError { error: msg.into() })
}

async fn ask<T>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, Answer> {
    let (tx, rx) = oneshot::channel();
    state.commands.send(make(tx)).await.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the recorder is shutting down",
        )
    })?;
    rx.await.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the recorder is shutting down",
        )
    })
}

async fn body_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Answer> {
    let bytes = Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON request: {e}"),
        )
    })
}

fn store_err(e: &deetune_store::StoreError) -> Answer {
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("store: {e}"))
}

/// All tasks: stored records, with running ones replaced by their live counters.
async fn all_tasks(state: &ApiState) -> Result<Vec<TaskRecord>, Answer> {
    let running = ask(state, Command::Running).await?;
    let mut tasks = state.store.tasks().map_err(|e| store_err(&e))?;
    for r in running {
        match tasks.iter_mut().find(|t| t.id == r.id) {
            Some(t) => *t = r,
            None => tasks.push(r),
        }
    }
    tasks.sort_by(|a, b| {
        a.started_ms
            .cmp(&b.started_ms)
            .then_with(|| a.id.cmp(&b.id))
    });
    Ok(tasks)
}

async fn one_task(state: &ApiState, id: &str) -> Result<TaskRecord, Answer> {
    all_tasks(state)
        .await?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no task `{id}`")))
}

async fn route(state: ApiState, req: Request<Incoming>) -> Result<Answer, Answer> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    match (method, parts.as_slice()) {
        (Method::GET, ["v1", "status"]) => {
            let stats = ask(&state, Command::Stats).await?;
            Ok(json(
                StatusCode::OK,
                &Status {
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    pid: std::process::id(),
                    data_dir: state.store.dir().display().to_string(),
                    capture: state.capture,
                    stats,
                },
            ))
        }
        (Method::GET, ["v1", "tasks"]) => Ok(json(StatusCode::OK, &all_tasks(&state).await?)),
        (Method::POST, ["v1", "tasks"]) => {
            let spec: TaskSpec = body_json(req).await?;
            match ask(&state, |tx| Command::Start(spec, tx)).await? {
                Ok(t) => Ok(json(StatusCode::CREATED, &t)),
                Err(e) => Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid policy: {e}"),
                )),
            }
        }
        (Method::GET, ["v1", "tasks", id]) => {
            Ok(json(StatusCode::OK, &one_task(&state, id).await?))
        }
        (Method::POST, ["v1", "tasks", id, "stop"]) => {
            let t = one_task(&state, id).await?;
            if t.state != TaskState::Running {
                return Err(error(
                    StatusCode::CONFLICT,
                    format!("task `{id}` is not running (it is {:?})", t.state),
                ));
            }
            match ask(&state, |tx| Command::Stop(t.id.clone(), tx)).await? {
                Ok(t) => Ok(json(StatusCode::OK, &t)),
                Err(e) => Err(error(StatusCode::CONFLICT, e.to_string())),
            }
        }
        (Method::POST, ["v1", "tasks", id, "resume"]) => {
            let t = one_task(&state, id).await?;
            if t.state == TaskState::Running || t.state == TaskState::Imported {
                return Err(error(
                    StatusCode::CONFLICT,
                    format!("task `{id}` cannot be resumed: it is {:?}", t.state),
                ));
            }
            if t.spec.count.is_some_and(|c| t.stats.recorded >= c) {
                return Err(error(
                    StatusCode::CONFLICT,
                    format!("task `{id}` already recorded its count"),
                ));
            }
            match ask(&state, |tx| Command::Resume(t, tx)).await? {
                Ok(t) => Ok(json(StatusCode::OK, &t)),
                Err(e) => Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid policy: {e}"),
                )),
            }
        }
        (Method::GET, ["v1", "tasks", id, "exchanges"]) => {
            let t = one_task(&state, id).await?;
            let mut q = deetune_store::ExchangeQuery::default();
            for kv in query.split('&').filter(|s| !s.is_empty()) {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                let v = percent_decode(v).ok_or_else(|| {
                    error(StatusCode::BAD_REQUEST, format!("bad escape in `{kv}`"))
                })?;
                match k {
                    "limit" => {
                        q.limit = Some(v.parse().map_err(|_| {
                            error(
                                StatusCode::BAD_REQUEST,
                                format!("limit must be a number, got `{v}`"),
                            )
                        })?);
                    }
                    "interface" => q.interface = Some(v),
                    _ => {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            format!("unknown query parameter `{k}` (limit, interface)"),
                        ))
                    }
                }
            }
            let _ = ask(&state, Command::Flush).await?;
            let store = state.store.clone();
            let found = blocking(move || store.find_exchanges(&t.id, &q))
                .await?
                .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
            let out: Vec<StoredExchange> = found
                .into_iter()
                .map(|(id, exchange)| StoredExchange {
                    id: id.0,
                    task: None,
                    exchange,
                })
                .collect();
            Ok(json(StatusCode::OK, &out))
        }
        (Method::GET, ["v1", "exchanges", id]) => {
            let n: u64 = id.parse().map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("`{id}` is not an exchange id"),
                )
            })?;
            let _ = ask(&state, Command::Flush).await?;
            match state.store.exchange(deetune_store::ExchangeId(n)) {
                Ok((task, exchange)) => Ok(json(
                    StatusCode::OK,
                    &StoredExchange {
                        id: n,
                        task: Some(task),
                        exchange,
                    },
                )),
                Err(e) => Err(error(StatusCode::NOT_FOUND, e.to_string())),
            }
        }
        (Method::POST, ["v1", "tasks", id, "export"]) => {
            let t = one_task(&state, id).await?;
            let req: ExportRequest = body_json(req).await?;
            let _ = ask(&state, Command::Flush).await?;
            let path = std::path::PathBuf::from(&req.path);
            let har = match req.format.as_deref() {
                None | Some("bundle") => false,
                Some("har") => true,
                Some(other) => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown export format `{other}` (bundle or har)"),
                    ))
                }
            };
            // Off the engine's thread: an export can take a while.
            let store = state.store.clone();
            let r = blocking(move || {
                if har {
                    store.export_har(&t.id, &path)
                } else {
                    store.export_bundle(&t.id, &path)
                }
            })
            .await?;
            r.map(|n| json(StatusCode::OK, &ExportAnswer { exchanges: n }))
                .map_err(|e| {
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("export failed: {e}"),
                    )
                })
        }
        (Method::GET, ["v1", "topology"]) => {
            Ok(json(StatusCode::OK, &ask(&state, Command::Topology).await?))
        }
        (_, ["v1", "status" | "tasks" | "topology" | "exchanges", ..]) => Err(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed here",
        )),
        _ => Err(error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint `{path}`"),
        )),
    }
}

/// Runs a slow store read on the blocking pool (the daemon's runtime has one thread, shared
/// with the engine).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Answer> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the store read failed: {e}"),
        )
    })
}

/// Serves one request.
pub(crate) async fn handle(state: ApiState, req: Request<Incoming>) -> Result<Answer, Infallible> {
    Ok(route(state, req).await.unwrap_or_else(|e| e))
}

/// Accepts connections on `listener` until the task is aborted.
pub(crate) async fn serve(listener: tokio::net::UnixListener, state: ApiState) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "Accepting an API connection failed.");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "API connection ended with an error.");
            }
        });
    }
}

/// `%XX` and `+` decoding of a query value; none on a bad escape or non-UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(
            super::percent_decode("GET%20%2Fapi%2F*").as_deref(),
            Some("GET /api/*")
        );
        assert_eq!(super::percent_decode("a+b").as_deref(), Some("a b"));
        assert!(super::percent_decode("%zz").is_none() && super::percent_decode("%4").is_none());
    }
}
