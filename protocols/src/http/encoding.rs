//! Content decoding (gzip, deflate, br) of a body into a capped copy.

use std::io::Read;

use crate::Payload;

/// The content-decoded copy of `raw` for a `Content-Encoding` value, cut at `cap` bytes.
///
/// Returns `None` when there is no (or an `identity`) encoding, an encoding we do not decode
/// (several stacked, `compress`, `zstd`, …), or when not a single byte could be decoded. A
/// stream that breaks off (a truncated `raw`) keeps what was decoded up to the break. The
/// bool is true when the output was cut at `cap`.
pub(super) fn decode(encoding: &[u8], raw: &[u8], cap: usize) -> Option<(Payload, bool)> {
    let enc = trim(encoding);
    if enc.is_empty() || enc.eq_ignore_ascii_case(b"identity") {
        return None;
    }
    if enc.eq_ignore_ascii_case(b"gzip") || enc.eq_ignore_ascii_case(b"x-gzip") {
        read_capped(flate2::read::MultiGzDecoder::new(raw), cap)
    } else if enc.eq_ignore_ascii_case(b"deflate") {
        // RFC 9110 says zlib-wrapped; some servers send raw deflate.
        read_capped(flate2::read::ZlibDecoder::new(raw), cap)
            .or_else(|| read_capped(flate2::read::DeflateDecoder::new(raw), cap))
    } else if enc.eq_ignore_ascii_case(b"br") {
        read_capped(brotli_decompressor::Decompressor::new(raw, 4096), cap)
    } else {
        None
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// Read at most `cap` bytes (never more: the reader is only ever asked for what fits), and
/// report whether more were available.
fn read_capped(mut r: impl Read, cap: usize) -> Option<(Payload, bool)> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut failed = false;
    loop {
        let room = cap - out.len();
        if room == 0 {
            break;
        }
        let want = room.min(chunk.len());
        match r.read(&mut chunk[..want]) {
            Ok(0) => return finish(out, false, failed),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                failed = true;
                return finish(out, false, failed);
            }
        }
    }
    // At the cap: is there more?
    let more = matches!(r.read(&mut chunk[..1]), Ok(n) if n > 0);
    finish(out, more, failed)
}

fn finish(out: Vec<u8>, cut: bool, failed: bool) -> Option<(Payload, bool)> {
    if failed && out.is_empty() {
        None
    } else {
        Some((Payload(out), cut))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn gzip_is_decoded_and_capped() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&[b'a'; 10_000]).unwrap();
        let gz = e.finish().unwrap();
        let (p, cut) = decode(b"gzip", &gz, 1 << 20).unwrap();
        assert_eq!((p.len(), cut), (10_000, false));
        let (p, cut) = decode(b" GZIP ", &gz, 100).unwrap();
        assert_eq!((p.len(), cut), (100, true));
        // A stream cut in half keeps what it decoded.
        let text: String = (0..20_000u32)
            .map(|i| format!("{} ", i.wrapping_mul(2_654_435_761) % 1000))
            .collect();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        let gz = e.finish().unwrap();
        let (p, _) = decode(b"gzip", &gz[..gz.len() / 2], 1 << 20).unwrap();
        assert!(!p.is_empty() && text.as_bytes().starts_with(p.as_bytes()));
        assert!(decode(b"gzip", b"not gzip at all", 100).is_none());
        assert!(decode(b"identity", b"x", 100).is_none());
        assert!(decode(b"zstd", b"x", 100).is_none());
    }

    #[test]
    fn deflate_zlib_and_raw() {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"hello zlib").unwrap();
        let zlib = z.finish().unwrap();
        assert_eq!(decode(b"deflate", &zlib, 100).unwrap().0 .0, b"hello zlib");
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(b"hello raw").unwrap();
        let raw = d.finish().unwrap();
        assert_eq!(decode(b"deflate", &raw, 100).unwrap().0 .0, b"hello raw");
    }

    #[test]
    fn brotli_bomb_is_capped() {
        // 1 MiB of zeros compressed with `brotli -q 11` is a handful of bytes; a small
        // hand-made stream: the well-known empty-stream encoding must decode to nothing.
        let (p, cut) = decode(b"br", &[0x06], 16).unwrap();
        assert_eq!((p.len(), cut), (0, false));
    }
}
