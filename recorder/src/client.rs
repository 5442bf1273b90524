//! A client of the control API (what the CLI uses when a daemon runs).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use deetune_store::{TaskRecord, TaskSpec, TopologyEdge};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{ApiError, ExportAnswer, ExportRequest, Status, StoredExchange};

/// Talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("no daemon answers on {path}: {source}")]
    Unavailable {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The exchange with the daemon broke.
    #[error("talking to the daemon on {path} failed: {reason}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ClientError {
    /// The daemon said the thing asked for does not exist.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { status: 404, .. })
    }

    /// The request was refused as invalid (4xx).
    #[must_use]
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::Api {
                status: 400..=499,
                ..
            }
        )
    }
}

/// A connection-per-request client.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon on `socket`; nothing is checked yet.
    #[must_use]
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    /// The daemon's status; fails with [`ClientError::Unavailable`] when none runs.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }

    /// All tasks.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn tasks(&self) -> Result<Vec<TaskRecord>, ClientError> {
        self.call(Method::GET, "/v1/tasks", None::<&()>).await
    }

    /// One task.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn task(&self, id: &str) -> Result<TaskRecord, ClientError> {
        self.call(Method::GET, &format!("/v1/tasks/{id}"), None::<&()>)
            .await
    }

    /// Starts a task.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn start(&self, spec: &TaskSpec) -> Result<TaskRecord, ClientError> {
        self.call(Method::POST, "/v1/tasks", Some(spec)).await
    }

    /// Stops a task.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn stop(&self, id: &str) -> Result<TaskRecord, ClientError> {
        self.call(Method::POST, &format!("/v1/tasks/{id}/stop"), None::<&()>)
            .await
    }

    /// Resumes an interrupted task.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn resume(&self, id: &str) -> Result<TaskRecord, ClientError> {
        self.call(Method::POST, &format!("/v1/tasks/{id}/resume"), None::<&()>)
            .await
    }

    /// The topology.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn topology(&self) -> Result<Vec<TopologyEdge>, ClientError> {
        self.call(Method::GET, "/v1/topology", None::<&()>).await
    }

    /// A task's exchanges in recorded order, those whose interface matches the glob
    /// `interface` when given, at most `limit`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn exchanges(
        &self,
        id: &str,
        interface: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<StoredExchange>, ClientError> {
        let mut q = Vec::new();
        if let Some(i) = interface {
            q.push(format!("interface={}", percent_encode(i)));
        }
        if let Some(l) = limit {
            q.push(format!("limit={l}"));
        }
        let q = if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        };
        self.call(
            Method::GET,
            &format!("/v1/tasks/{id}/exchanges{q}"),
            None::<&()>,
        )
        .await
    }

    /// One exchange by id, with its task.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn exchange(&self, id: u64) -> Result<StoredExchange, ClientError> {
        self.call(Method::GET, &format!("/v1/exchanges/{id}"), None::<&()>)
            .await
    }

    /// Has the daemon export a task to `path` (`format`: `bundle` or `har`).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn export(
        &self,
        id: &str,
        path: &Path,
        format: Option<&str>,
    ) -> Result<u64, ClientError> {
        let req = ExportRequest {
            path: path.display().to_string(),
            format: format.map(str::to_owned),
        };
        let a: ExportAnswer = self
            .call(Method::POST, &format!("/v1/tasks/{id}/export"), Some(&req))
            .await?;
        Ok(a.exchanges)
    }

    /// Any call: `body` is sent as JSON; the answer is parsed as `T`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let proto = |reason: String| ClientError::Protocol {
            path: self.socket.clone(),
            reason,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Unavailable {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| proto(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| proto(e.to_string()))?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "deetune")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| proto(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| proto(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| proto(e.to_string()))?
            .to_bytes();
        conn.abort();
        if status != StatusCode::OK && status != StatusCode::CREATED {
            let message = serde_json::from_slice::<ApiError>(&body)
                .map_or_else(|_| String::from_utf8_lossy(&body).into_owned(), |e| e.error);
            return Err(ClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| proto(format!("unexpected answer: {e}")))
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
