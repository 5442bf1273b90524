//! Protocol detection from the first bytes of a connection.
//!
//! Rules, in order (see `docs/protocols.md`):
//! 1. TLS: either side starts with a TLS record header (`16 03 0x`) → unknown, encrypted.
//! 2. MySQL: the server spoke first with a handshake packet (sequence 0, protocol version 10
//!    and a printable, NUL-terminated version string), or an ERR packet (sequence 0, `ff`)
//!    while the client has said nothing and the port is 3306.
//! 3. HTTP/1.x: the client's first line is `TOKEN SP target SP HTTP/1.x`, or the server's
//!    starts with `HTTP/1.`. While the client's first line is incomplete and still looks like
//!    a known method followed by a space, more bytes are needed (up to 1 KiB). The HTTP/2
//!    preface (`PRI * HTTP/2.0`) is unknown.
//! 4. Redis: the client sent a RESP array of bulk strings (`*<digits>\r\n$`), or an inline
//!    command whose first word is a known Redis command; or, when the client is silent, the
//!    server sent a RESP reply and the port is 6379.
//!
//! The port is a hint only: it never overrides what the bytes say.

use crate::{Detection, Protocol};

const HTTP_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
    b"PROPFIND ",
    b"MKCOL ",
];

/// Redis commands recognised as inline commands (first word, case-insensitive).
const REDIS_INLINE: &[&str] = &[
    "PING",
    "QUIT",
    "INFO",
    "GET",
    "SET",
    "DEL",
    "EXISTS",
    "INCR",
    "DECR",
    "EXPIRE",
    "TTL",
    "KEYS",
    "SCAN",
    "HGET",
    "HSET",
    "HGETALL",
    "LPUSH",
    "RPUSH",
    "LPOP",
    "RPOP",
    "LRANGE",
    "SADD",
    "SMEMBERS",
    "ZADD",
    "ZRANGE",
    "MGET",
    "MSET",
    "AUTH",
    "HELLO",
    "SELECT",
    "FLUSHALL",
    "FLUSHDB",
    "DBSIZE",
    "CLIENT",
    "CONFIG",
    "SUBSCRIBE",
    "PUBLISH",
    "MULTI",
    "EXEC",
    "ECHO",
];

/// Longest first line we wait for before deciding.
const MAX_LINE: usize = 1024;

pub(crate) fn detect(client: &[u8], server: &[u8], server_port: u16) -> Detection {
    if is_tls(client) || is_tls(server) {
        return Detection::Unknown { encrypted: true };
    }
    if is_mysql_greeting(server)
        || (client.is_empty() && server_port == 3306 && is_mysql_err(server))
    {
        return Detection::Found(Protocol::Mysql);
    }
    if server.starts_with(b"HTTP/1.") {
        return Detection::Found(Protocol::Http);
    }
    let mut need_more = false;
    if !client.is_empty() {
        match http_request_line(client) {
            Some(true) => return Detection::Found(Protocol::Http),
            // `GET key` may still become `GET /key HTTP/1.1`: wait for the line.
            None => return Detection::NeedMore,
            Some(false) => {}
        }
        match redis_client(client) {
            Some(true) => return Detection::Found(Protocol::Redis),
            None => need_more = true,
            Some(false) => {}
        }
    } else if server_port == 6379 && is_resp_reply(server) {
        return Detection::Found(Protocol::Redis);
    }
    // A MySQL server always speaks first; wait for it when nothing decided yet.
    if need_more || (client.is_empty() && server.len() < 5) {
        return Detection::NeedMore;
    }
    Detection::Unknown { encrypted: false }
}

fn is_tls(b: &[u8]) -> bool {
    b.len() >= 3 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04
}

/// Some(true): an HTTP/1.x request line; Some(false): not one; None: cannot tell yet.
fn http_request_line(b: &[u8]) -> Option<bool> {
    let line_end = b.iter().position(|&c| c == b'\n');
    let Some(end) = line_end else {
        if b.len() >= MAX_LINE {
            return Some(HTTP_METHODS.iter().any(|m| b.starts_with(m)));
        }
        // Still a possible method prefix (or a method and part of the line)?
        let possible = HTTP_METHODS.iter().any(|m| {
            let n = m.len().min(b.len());
            b[..n] == m[..n]
        });
        return if possible { None } else { Some(false) };
    };
    let line = &b[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&c| c == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(false);
    };
    let token = !method.is_empty()
        && method
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c));
    Some(token && !target.is_empty() && (version == b"HTTP/1.1" || version == b"HTTP/1.0"))
}

/// Some(true): Redis; Some(false): not; None: cannot tell yet.
fn redis_client(b: &[u8]) -> Option<bool> {
    if b[0] == b'*' {
        // `*<digits>\r\n$`
        let digits = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let rest = &b[1 + digits..];
        if 1 + digits == b.len() {
            return if digits < 10 { None } else { Some(false) };
        }
        if digits == 0 {
            return Some(false);
        }
        let want: &[u8] = b"\r\n$";
        let n = want.len().min(rest.len());
        return if rest[..n] != want[..n] {
            Some(false)
        } else if n < want.len() {
            None
        } else {
            Some(true)
        };
    }
    // Inline command: a known first word followed by a space or the end of the line.
    let word_len = b.iter().take_while(|c| c.is_ascii_alphabetic()).count();
    if word_len == b.len() {
        let possible = word_len <= 9
            && REDIS_INLINE
                .iter()
                .any(|c| c.len() >= word_len && c.as_bytes()[..word_len].eq_ignore_ascii_case(b));
        return if possible { None } else { Some(false) };
    }
    let word = &b[..word_len];
    let next = b[word_len];
    let known = REDIS_INLINE
        .iter()
        .any(|c| c.as_bytes().eq_ignore_ascii_case(word));
    Some(known && matches!(next, b' ' | b'\r' | b'\n'))
}

fn is_resp_reply(b: &[u8]) -> bool {
    match b.first() {
        Some(b'+' | b'-') => b.len() > 1 && b[1].is_ascii_alphabetic(),
        Some(b':' | b'$' | b'*') => b.len() > 1 && (b[1].is_ascii_digit() || b[1] == b'-'),
        _ => false,
    }
}

fn is_mysql_greeting(b: &[u8]) -> bool {
    if b.len() < 6 || b[3] != 0 || b[4] != 10 {
        return false;
    }
    let len = usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16;
    if !(20..=1024).contains(&len) {
        return false;
    }
    // Version string: printable up to a NUL (when we have it).
    b[5..]
        .iter()
        .take_while(|&&c| c != 0)
        .all(u8::is_ascii_graphic)
}

fn is_mysql_err(b: &[u8]) -> bool {
    b.len() >= 5 && b[3] == 0 && b[4] == 0xff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_supported_protocols() {
        assert_eq!(
            detect(b"GET / HTTP/1.1\r\n", b"", 80),
            Detection::Found(Protocol::Http)
        );
        assert_eq!(
            detect(b"PROPFIND /dav HTTP/1.1\r\nHost: x\r\n", b"", 80),
            Detection::Found(Protocol::Http)
        );
        assert_eq!(detect(b"GE", b"", 80), Detection::NeedMore);
        assert_eq!(detect(b"GET /a/b", b"", 80), Detection::NeedMore);
        assert_eq!(
            detect(b"", b"HTTP/1.1 200 OK\r\n", 8080),
            Detection::Found(Protocol::Http)
        );
        assert_eq!(
            detect(b"*1\r\n$4\r\nPING\r\n", b"", 1),
            Detection::Found(Protocol::Redis)
        );
        assert_eq!(detect(b"*1", b"", 1), Detection::NeedMore);
        assert_eq!(
            detect(b"PING\r\n", b"", 1),
            Detection::Found(Protocol::Redis)
        );
        // Inline `GET key` is Redis, not HTTP: no `HTTP/1.x` on the line.
        assert_eq!(
            detect(b"GET key\r\n", b"", 1),
            Detection::Found(Protocol::Redis)
        );
        assert_eq!(
            detect(b"", b"+OK\r\n", 6379),
            Detection::Found(Protocol::Redis)
        );
        let mut handshake = vec![0x4a, 0, 0, 0, 10];
        handshake.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
        assert_eq!(
            detect(b"", &handshake, 1234),
            Detection::Found(Protocol::Mysql)
        );
        assert_eq!(
            detect(b"", &[0x20, 0, 0, 0, 0xff, 0x6a, 0x04], 3306),
            Detection::Found(Protocol::Mysql)
        );
        assert_eq!(
            detect(&[0x16, 3, 1, 0, 5], b"", 443),
            Detection::Unknown { encrypted: true }
        );
        assert_eq!(
            detect(b"\x00\x01garbage!", b"", 9),
            Detection::Unknown { encrypted: false }
        );
        assert_eq!(
            detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"", 80),
            Detection::Unknown { encrypted: false }
        );
        assert_eq!(
            detect(b"SSH-2.0-OpenSSH_9.2\r\n", b"", 22),
            Detection::Unknown { encrypted: false }
        );
    }

    /// Guards against deciding on a port alone: bytes that are not Redis on 6379 are not.
    #[test]
    fn the_port_is_only_a_hint() {
        assert_eq!(
            detect(b"\x00\x00junk", b"", 6379),
            Detection::Unknown { encrypted: false }
        );
        assert_eq!(
            detect(b"GET / HTTP/1.1\r\n", b"", 6379),
            Detection::Found(Protocol::Http)
        );
    }

    #[test]
    fn never_panics_on_short_inputs() {
        for a in 0..=255u8 {
            for b in [&[][..], &[a][..], &[a, a][..]] {
                let _ = detect(b, b, 3306);
                let _ = detect(&[a], b, 6379);
                let _ = detect(b"*", &[a], 0);
            }
        }
    }
}
