//! MySQL sessions: log in to the target with its own credentials (mysql_common for the
//! handshake packets and scrambles), then send command packets; responses are decoded by the
//! same MySQL decoder as the recording. Prepared statements are re-prepared on the target and
//! recorded statement ids mapped to the target's.

use std::collections::HashMap;

use deetune_protocols::{MysqlCommand, MysqlResponse, MysqlSession, MysqlValue, Response};
use mysql_common::constants::CapabilityFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse};
use mysql_common::proto::MySerialize as _;

use super::wire::Wire;
use super::Reply;
use crate::target::Target;
use crate::SendError;

const COM_INIT_DB: u8 = 0x02;
const COM_QUERY: u8 = 0x03;
const COM_PING: u8 = 0x0e;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_STMT_RESET: u8 = 0x1a;

pub(crate) struct MysqlConn {
    wire: Wire,
    /// Recorded statement id → (target statement id, parameter count).
    statements: HashMap<u32, u32>,
    /// SQL → target statement id, for executes whose prepare was not recorded as such.
    by_sql: HashMap<String, u32>,
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().min(0xff_ffff);
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&[
        (len & 0xff) as u8,
        ((len >> 8) & 0xff) as u8,
        ((len >> 16) & 0xff) as u8,
        seq,
    ]);
    out.extend_from_slice(&payload[..len]);
    out
}

fn scramble(plugin: &AuthPlugin<'_>, nonce: &[u8], password: &[u8]) -> Result<Vec<u8>, SendError> {
    use mysql_common::auth::plugins::{caching_sha2_password, mysql_native_password};
    if password.is_empty() {
        return Ok(Vec::new());
    }
    match plugin {
        AuthPlugin::MysqlNativePassword => Ok(mysql_native_password::scramble_native(nonce, password)
            .map(|s| s.to_vec())
            .unwrap_or_default()),
        AuthPlugin::CachingSha2Password => {
            let nonce: [u8; 20] = nonce
                .get(..20)
                .and_then(|n| n.try_into().ok())
                .ok_or_else(|| SendError::target("the server sent a short scramble"))?;
            Ok(caching_sha2_password::scramble_sha256(&nonce, password)
                .map(|s| s.to_vec())
                .unwrap_or_default())
        }
        AuthPlugin::MysqlClearPassword => {
            let mut p = password.to_vec();
            p.push(0);
            Ok(p)
        }
        other => Err(SendError::target(format!(
            "authentication plugin {} is not supported by the replayer (use mysql_native_password or caching_sha2_password)",
            String::from_utf8_lossy(other.as_bytes())
        ))),
    }
}

fn server_error(payload: &[u8]) -> String {
    // ERR: 0xff, code (2), '#', state (5), message.
    let code = payload
        .get(1..3)
        .map_or(0, |c| u16::from_le_bytes([c[0], c[1]]));
    let msg = payload.get(9..).unwrap_or_default();
    format!("error {code}: {}", String::from_utf8_lossy(msg))
}

impl MysqlConn {
    pub(crate) async fn login(
        mut wire: Wire,
        target: &Target,
        recorded: Option<&MysqlSession>,
    ) -> Result<Self, SendError> {
        let peer = wire.peer().to_owned();
        let (_, greeting) = wire.read_packet().await?;
        if greeting.first() == Some(&0xff) {
            return Err(SendError::target(format!(
                "{peer} refused the connection: {}",
                server_error(&greeting)
            )));
        }
        let hs: HandshakePacket<'_> = ParseBuf(&greeting)
            .parse(())
            .map_err(|e| SendError::target(format!("bad MySQL greeting from {peer}: {e}")))?;
        let server_caps = hs.capabilities();
        let nonce = hs.nonce();
        let plugin = hs
            .auth_plugin()
            .map_or(AuthPlugin::MysqlNativePassword, AuthPlugin::into_owned);
        // The URL's database stands for the recorded initial schema; a recorded client that
        // connected without one (and chose it later with USE) connects without one here too,
        // so that `SELECT DATABASE()` and unqualified names behave as recorded.
        let schema = match recorded {
            Some(s) => s
                .schema
                .as_ref()
                .map(|recorded| target.database.clone().unwrap_or_else(|| recorded.clone())),
            None => target.database.clone(),
        };
        let recorded_caps = recorded.map_or(
            CapabilityFlags::CLIENT_LONG_PASSWORD
                | CapabilityFlags::CLIENT_LONG_FLAG
                | CapabilityFlags::CLIENT_TRANSACTIONS
                | CapabilityFlags::CLIENT_MULTI_STATEMENTS
                | CapabilityFlags::CLIENT_MULTI_RESULTS
                | CapabilityFlags::CLIENT_PS_MULTI_RESULTS
                | CapabilityFlags::CLIENT_DEPRECATE_EOF,
            |s| CapabilityFlags::from_bits_truncate(s.capabilities),
        );
        // Keep what the recorded client negotiated (it shapes responses), minus what the
        // replayer does not speak (TLS, compression, …), plus what it needs.
        let mut caps = recorded_caps
            & !(CapabilityFlags::CLIENT_SSL
                | CapabilityFlags::CLIENT_COMPRESS
                | CapabilityFlags::CLIENT_ZSTD_COMPRESSION_ALGORITHM
                | CapabilityFlags::CLIENT_CONNECT_ATTRS
                | CapabilityFlags::CLIENT_QUERY_ATTRIBUTES
                | CapabilityFlags::CLIENT_OPTIONAL_RESULTSET_METADATA
                | CapabilityFlags::CLIENT_SSL_VERIFY_SERVER_CERT
                | CapabilityFlags::CLIENT_LOCAL_FILES
                | CapabilityFlags::CLIENT_CONNECT_WITH_DB);
        caps |= CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
        if schema.is_some() {
            caps |= CapabilityFlags::CLIENT_CONNECT_WITH_DB;
        }
        caps &= server_caps;
        let password = target.password.clone().unwrap_or_default();
        let user = target
            .user
            .clone()
            .unwrap_or_else(|| recorded.map_or_else(|| "root".to_owned(), |s| s.user.clone()));
        let scrambled = scramble(&plugin, &nonce, password.as_bytes())?;
        let resp = HandshakeResponse::new(
            Some(scrambled.as_slice()),
            hs.server_version_parsed().unwrap_or((5, 7, 0)),
            Some(user.as_bytes()),
            schema.as_deref().map(str::as_bytes),
            Some(plugin.clone()),
            caps,
            None,
            16 << 20,
        );
        let mut payload = Vec::new();
        resp.serialize(&mut payload);
        wire.send(&packet(1, &payload)).await?;
        let mut plugin = plugin;
        let mut nonce = nonce;
        loop {
            let (seq, p) = wire.read_packet().await?;
            match p.first() {
                Some(0x00) => break,
                Some(0xff) => {
                    return Err(SendError::target(format!(
                        "login to {peer} as {user} failed: {}",
                        server_error(&p)
                    )))
                }
                Some(0xfe) => {
                    let sw: AuthSwitchRequest<'_> = ParseBuf(&p).parse(()).map_err(|e| {
                        SendError::target(format!("bad auth switch from {peer}: {e}"))
                    })?;
                    plugin = sw.auth_plugin().into_owned();
                    nonce = sw.plugin_data().to_vec();
                    let data = scramble(&plugin, &nonce, password.as_bytes())?;
                    wire.send(&packet(seq.wrapping_add(1), &data)).await?;
                }
                Some(0x01) => match (&plugin, p.get(1)) {
                    (AuthPlugin::CachingSha2Password, Some(0x03)) => {} // fast auth; OK follows
                    (AuthPlugin::CachingSha2Password, Some(0x04)) => {
                        // Full authentication over plain TCP: ask for the server's RSA key.
                        wire.send(&packet(seq.wrapping_add(1), &[0x02])).await?;
                        let (seq2, key) = wire.read_packet().await?;
                        let key = key.get(1..).unwrap_or_default();
                        let mut pass = password.as_bytes().to_vec();
                        pass.push(0);
                        for (i, b) in pass.iter_mut().enumerate() {
                            *b ^= nonce[i % nonce.len().max(1)];
                        }
                        let enc = mysql_common::crypto::encrypt(&pass, key).map_err(|e| {
                            SendError::target(format!(
                                "cannot encrypt the password for {peer}: {e}"
                            ))
                        })?;
                        wire.send(&packet(seq2.wrapping_add(1), &enc)).await?;
                    }
                    _ => {
                        return Err(SendError::target(format!(
                            "unexpected authentication data from {peer}"
                        )))
                    }
                },
                _ => {
                    return Err(SendError::target(format!(
                        "unexpected login reply from {peer}"
                    )))
                }
            }
        }
        wire.discard_ready();
        Ok(Self {
            wire,
            statements: HashMap::new(),
            by_sql: HashMap::new(),
        })
    }

    async fn command(&mut self, code: u8, body: &[u8]) -> Result<Option<Response>, SendError> {
        let mut payload = Vec::with_capacity(1 + body.len());
        payload.push(code);
        payload.extend_from_slice(body);
        let x = self.wire.round_trip(&packet(0, &payload)).await?;
        Ok(x.response)
    }

    async fn prepare(&mut self, sql: &str) -> Result<(Option<Response>, Option<u32>), SendError> {
        let resp = self.command(COM_STMT_PREPARE, sql.as_bytes()).await?;
        let id = match &resp {
            Some(Response::Mysql(MysqlResponse::Prepared { statement_id, .. })) => {
                self.by_sql.insert(sql.to_owned(), *statement_id);
                Some(*statement_id)
            }
            _ => None,
        };
        Ok((resp, id))
    }

    pub(crate) async fn send(
        &mut self,
        cmd: &MysqlCommand,
        recorded: Option<&Response>,
    ) -> Result<Reply, SendError> {
        let resp = match cmd {
            MysqlCommand::Query { sql } => self.command(COM_QUERY, sql.as_bytes()).await?,
            MysqlCommand::InitDb { schema } => self.command(COM_INIT_DB, schema.as_bytes()).await?,
            MysqlCommand::Ping => self.command(COM_PING, &[]).await?,
            MysqlCommand::StmtPrepare { sql } => {
                let (resp, id) = self.prepare(sql).await?;
                if let (
                    Some(id),
                    Some(Response::Mysql(MysqlResponse::Prepared { statement_id, .. })),
                ) = (id, recorded)
                {
                    self.statements.insert(*statement_id, id);
                }
                resp
            }
            MysqlCommand::StmtExecute {
                statement_id,
                sql,
                params,
            } => {
                let id = match (self.statements.get(statement_id), sql) {
                    (Some(id), _) => *id,
                    (None, Some(sql)) => match self.by_sql.get(sql) {
                        Some(id) => *id,
                        None => match self.prepare(sql).await? {
                            (_, Some(id)) => {
                                self.statements.insert(*statement_id, id);
                                id
                            }
                            (resp, None) => return Ok(Reply::Response(resp)),
                        },
                    },
                    (None, None) => {
                        return Err(SendError::recording(format!(
                            "statement {statement_id} was executed but its prepare was not recorded"
                        )))
                    }
                };
                self.command(COM_STMT_EXECUTE, &execute_body(id, params))
                    .await?
            }
            MysqlCommand::StmtReset { statement_id } => match self.statements.get(statement_id) {
                Some(id) => self.command(COM_STMT_RESET, &id.to_le_bytes()).await?,
                None => {
                    return Err(SendError::recording(format!(
                        "statement {statement_id} was reset but its prepare was not recorded"
                    )))
                }
            },
            MysqlCommand::StmtClose { statement_id } => {
                if let Some(id) = self.statements.remove(statement_id) {
                    // No response: write it and move on.
                    self.wire
                        .send(&packet(
                            0,
                            &[&[COM_STMT_CLOSE][..], &id.to_le_bytes()].concat(),
                        ))
                        .await?;
                    // The decoder completes a response-less command at once: drop that
                    // exchange, or the next command would be paired with it.
                    self.wire.discard_ready();
                    self.by_sql.retain(|_, v| *v != id);
                }
                return Ok(Reply::Response(None));
            }
            MysqlCommand::Quit => return Ok(Reply::Skip("COM_QUIT is not replayed".into())),
            MysqlCommand::Other { code, data } => self.command(*code, data.as_bytes()).await?,
        };
        Ok(Reply::Response(resp))
    }
}

/// COM_STMT_EXECUTE body with parameters bound in the binary protocol.
fn execute_body(id: u32, params: &[MysqlValue]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + params.len() * 12);
    b.extend_from_slice(&id.to_le_bytes());
    b.push(0); // CURSOR_TYPE_NO_CURSOR
    b.extend_from_slice(&1u32.to_le_bytes());
    if params.is_empty() {
        return b;
    }
    let mut nulls = vec![0u8; params.len().div_ceil(8)];
    for (i, p) in params.iter().enumerate() {
        if matches!(p, MysqlValue::Null) {
            nulls[i / 8] |= 1 << (i % 8);
        }
    }
    b.extend_from_slice(&nulls);
    b.push(1); // new params bound
    for p in params {
        let (t, flags): (u8, u8) = match p {
            MysqlValue::Null => (0x06, 0),
            MysqlValue::Int(_) => (0x08, 0),
            MysqlValue::UInt(_) => (0x08, 0x80),
            MysqlValue::Float(_) => (0x05, 0),
            MysqlValue::Bytes(_) => (0xfd, 0),
        };
        b.push(t);
        b.push(flags);
    }
    for p in params {
        match p {
            MysqlValue::Null => {}
            MysqlValue::Int(i) => b.extend_from_slice(&i.to_le_bytes()),
            MysqlValue::UInt(u) => b.extend_from_slice(&u.to_le_bytes()),
            MysqlValue::Float(f) => b.extend_from_slice(&f.to_le_bytes()),
            MysqlValue::Bytes(v) => {
                lenenc(&mut b, v.len() as u64);
                b.extend_from_slice(v.as_bytes());
            }
        }
    }
    b
}

fn lenenc(b: &mut Vec<u8>, n: u64) {
    match n {
        0..=250 => b.push(n as u8),
        251..=0xffff => {
            b.push(0xfc);
            b.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xff_ffff => {
            b.push(0xfd);
            b.extend_from_slice(&n.to_le_bytes()[..3]);
        }
        _ => {
            b.push(0xfe);
            b.extend_from_slice(&n.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_packets_bind_parameters() {
        let b = execute_body(
            7,
            &[
                MysqlValue::Int(5),
                MysqlValue::Null,
                MysqlValue::Bytes("ab".into()),
            ],
        );
        assert_eq!(&b[..4], &7u32.to_le_bytes());
        assert_eq!(b[9], 0b010); // null bitmap
        assert_eq!(b[10], 1);
        assert_eq!(&b[11..17], &[0x08, 0, 0x06, 0, 0xfd, 0]);
        assert_eq!(&b[17..25], &5i64.to_le_bytes());
        assert_eq!(&b[25..], b"\x02ab");
        assert_eq!(packet(3, b"xy"), b"\x02\x00\x00\x03xy");
    }
}
