//! Protocol detection from the first bytes of a connection.

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
];

pub(crate) fn detect(client: &[u8], server: &[u8], server_port: u16) -> Detection {
    if is_tls(client) || is_tls(server) {
        return Detection::Unknown { encrypted: true };
    }
    // MySQL: the server speaks first, a packet with sequence 0 and protocol version 10.
    if server.len() >= 5 && server[3] == 0 && server[4] == 10 {
        return Detection::Found(Protocol::Mysql);
    }
    if !client.is_empty() {
        let mut undecided = false;
        for m in HTTP_METHODS {
            let n = m.len().min(client.len());
            if client[..n] == m[..n] {
                if n == m.len() {
                    return Detection::Found(Protocol::Http);
                }
                undecided = true;
            }
        }
        if server.starts_with(b"HTTP/1.") {
            return Detection::Found(Protocol::Http);
        }
        if client[0] == b'*' && (client.len() < 2 || client[1].is_ascii_digit()) {
            return Detection::Found(Protocol::Redis);
        }
        if is_redis_inline(client) || (server_port == 6379 && client[0].is_ascii_alphabetic()) {
            return Detection::Found(Protocol::Redis);
        }
        if undecided || (server.is_empty() && client.len() < 4) {
            return Detection::NeedMore;
        }
        return Detection::Unknown { encrypted: false };
    }
    if server.is_empty() || server.len() < 5 {
        return Detection::NeedMore;
    }
    Detection::Unknown { encrypted: false }
}

fn is_tls(b: &[u8]) -> bool {
    b.len() >= 3 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04
}

/// Inline Redis commands people actually send (`PING`, `redis-cli` never uses inline).
fn is_redis_inline(b: &[u8]) -> bool {
    const INLINE: &[&[u8]] = &[b"PING\r\n", b"ping\r\n", b"QUIT\r\n", b"INFO\r\n"];
    INLINE.iter().any(|c| b.starts_with(c))
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
        assert_eq!(detect(b"GE", b"", 80), Detection::NeedMore);
        assert_eq!(
            detect(b"*1\r\n$4\r\nPING\r\n", b"", 1),
            Detection::Found(Protocol::Redis)
        );
        assert_eq!(
            detect(b"PING\r\n", b"", 1),
            Detection::Found(Protocol::Redis)
        );
        let handshake = [0x4a, 0, 0, 0, 10, b'5'];
        assert_eq!(
            detect(b"", &handshake, 3306),
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
    }
}
