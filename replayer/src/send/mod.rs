//! Senders: one per replay session and target, speaking the target's protocol over one
//! connection.

mod http;
mod mysql;
mod redis;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use deetune_protocols::{Exchange, MysqlSession, Protocol, Request, Response, SessionInfo};

pub(crate) use wire::tls_config;

use crate::target::Resolved;
use crate::SendError;

/// How requests are rewritten and sent.
#[derive(Debug, Default)]
pub(crate) struct SendOptions {
    pub(crate) timeout: Duration,
    pub(crate) set_headers: Vec<(String, String)>,
    pub(crate) rewrite_path: Vec<(String, String)>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// What the target did with one recorded request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Its decoded response (none for requests without one).
    Response(Option<Response>),
    /// Not sent, and why.
    Skip(String),
}

enum State {
    Idle,
    Http(wire::Wire),
    Redis(wire::Wire),
    Mysql(Box<mysql::MysqlConn>),
    /// Connecting failed: every later exchange of the session gets the same error.
    Failed(SendError),
}

pub(crate) struct Sender {
    target: Arc<Resolved>,
    opts: Arc<SendOptions>,
    session: Option<MysqlSession>,
    state: State,
    /// The target answered at least once.
    pub(crate) reached: bool,
    /// The target's `Host` header value, computed on first use.
    authority: Option<String>,
    /// The request being sent (reused).
    out: Vec<u8>,
    /// What the response decoder is shown as that request (reused).
    shown: Vec<u8>,
}

impl Sender {
    pub(crate) fn new(target: Arc<Resolved>, opts: Arc<SendOptions>, first: &Exchange) -> Self {
        let session = first
            .session
            .as_ref()
            .map(|SessionInfo::Mysql(s)| s.clone());
        Self {
            target,
            opts,
            session,
            state: State::Idle,
            reached: false,
            authority: None,
            out: Vec::new(),
            shown: Vec::new(),
        }
    }

    async fn connect(&mut self, protocol: Protocol) -> Result<(), SendError> {
        let wire = wire::Wire::connect(
            &self.target,
            protocol,
            self.opts.timeout,
            self.opts.tls.as_ref(),
        )
        .await?;
        self.state = match protocol {
            Protocol::Http => State::Http(wire),
            Protocol::Redis => State::Redis(redis::setup(wire, &self.target.target).await?),
            Protocol::Mysql => State::Mysql(Box::new(
                mysql::MysqlConn::login(wire, &self.target.target, self.session.as_ref()).await?,
            )),
            Protocol::Unknown => {
                return Err(SendError::recording(
                    "the protocol of the recording is unknown",
                ))
            }
        };
        Ok(())
    }

    /// Re-sends one recorded exchange and returns the target's decoded response.
    pub(crate) async fn exchange(&mut self, ex: &Exchange) -> Result<Reply, SendError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        if let Some(reason) = skip_reason(ex) {
            return Ok(Reply::Skip(reason));
        }
        let stale = match &self.state {
            State::Idle => true,
            State::Http(w) => w.eof,
            _ => false,
        };
        if stale {
            if let Err(e) = self.connect(ex.protocol).await {
                if !self.reached {
                    self.state = State::Failed(e.clone());
                }
                return Err(e);
            }
        }
        let res = match (&mut self.state, &ex.request) {
            (State::Http(w), Request::Http(req)) => {
                let authority = self
                    .authority
                    .get_or_insert_with(|| self.target.target.authority());
                let mut bytes = std::mem::take(&mut self.out);
                http::write_request(req, authority, &self.opts, &mut bytes);
                let mut shown = std::mem::take(&mut self.shown);
                http::write_shown(req, &mut shown);
                let res = match w.round_trip_as(&bytes, &shown).await {
                    Err(e) if w.eof && self.reached => {
                        // The server closed a kept-alive connection: one fresh connection.
                        tracing::debug!(error = %e, "The target closed the connection; reconnecting.");
                        match self.connect(Protocol::Http).await {
                            Err(e) => Err(e),
                            Ok(()) => match &mut self.state {
                                State::Http(w) => w
                                    .round_trip_as(&bytes, &shown)
                                    .await
                                    .map(|x| Reply::Response(x.response)),
                                _ => Err(SendError::internal("lost the HTTP connection")),
                            },
                        }
                    }
                    other => other.map(|x| Reply::Response(x.response)),
                };
                self.out = bytes;
                self.shown = shown;
                res
            }
            (State::Redis(w), Request::Redis(cmd)) => redis::send(w, cmd).await,
            (State::Mysql(m), Request::Mysql(cmd)) => m.send(cmd, ex.response.as_ref()).await,
            _ => Err(SendError::recording(format!(
                "a {} request on a {} session",
                ex.protocol,
                match &self.state {
                    State::Http(_) => "http",
                    State::Redis(_) => "redis",
                    State::Mysql(_) => "mysql",
                    _ => "closed",
                }
            ))),
        };
        if res.is_ok() {
            self.reached = true;
        }
        res
    }
}

/// Exchanges that cannot be replayed faithfully.
fn skip_reason(ex: &Exchange) -> Option<String> {
    let f = &ex.flags;
    if f.encrypted {
        return Some("the recorded connection is encrypted".into());
    }
    if f.gap {
        return Some("bytes of this exchange were lost by the capture".into());
    }
    if f.unsupported {
        return Some("the exchange uses a feature the decoder does not support".into());
    }
    if let Request::Http(r) = &ex.request {
        if r.body.truncated {
            return Some("the recorded request body was truncated".into());
        }
    }
    if matches!(ex.request, Request::Raw { .. }) {
        return Some("the request was not decoded".into());
    }
    None
}
