//! Redis commands re-encoded as RESP arrays.

use deetune_protocols::{RedisCommand, RespValue, Response};

use super::wire::Wire;
use super::Reply;
use crate::target::Target;
use crate::SendError;

pub(crate) fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn setup_command(w: &mut Wire, args: &[&[u8]], what: &str) -> Result<(), SendError> {
    let x = w.round_trip(&encode(args)).await?;
    match x.response {
        Some(Response::Redis(RespValue::Error(e))) => Err(SendError::target(format!(
            "{what} on {} failed: {e}",
            w.peer()
        ))),
        Some(Response::Redis(_)) => Ok(()),
        other => Err(SendError::internal(format!(
            "unexpected reply to {what}: {other:?}"
        ))),
    }
}

/// Logs in and selects the database named by the target URL.
pub(crate) async fn setup(mut w: Wire, target: &Target) -> Result<Wire, SendError> {
    if let Some(pass) = &target.password {
        match &target.user {
            Some(user) => {
                setup_command(&mut w, &[b"AUTH", user.as_bytes(), pass.as_bytes()], "AUTH").await?;
            }
            None => setup_command(&mut w, &[b"AUTH", pass.as_bytes()], "AUTH").await?,
        }
    }
    if let Some(db) = &target.database {
        setup_command(&mut w, &[b"SELECT", db.as_bytes()], "SELECT").await?;
    }
    Ok(w)
}

pub(crate) async fn send(w: &mut Wire, cmd: &RedisCommand) -> Result<Reply, SendError> {
    let name = cmd.name();
    if name == "AUTH" {
        return Ok(Reply::Skip(
            "AUTH is not replayed: the target URL's credentials are used".into(),
        ));
    }
    if name == "HELLO"
        && cmd
            .args
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(b"AUTH"))
    {
        return Ok(Reply::Skip(
            "HELLO … AUTH is not replayed: the target URL's credentials are used".into(),
        ));
    }
    if name == "QUIT" {
        return Ok(Reply::Skip("QUIT is not replayed".into()));
    }
    if cmd.args.is_empty() {
        return Err(SendError::recording("an empty Redis command"));
    }
    let args: Vec<&[u8]> = cmd
        .args
        .iter()
        .map(deetune_protocols::Payload::as_bytes)
        .collect();
    let x = w.round_trip(&encode(&args)).await?;
    Ok(Reply::Response(x.response))
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_resp_arrays() {
        assert_eq!(
            super::encode(&[b"SET", b"k", b"v\r\n"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n"
        );
    }
}
