//! The decoder trait, the protocol registry and detection.

use crate::{Direction, Exchange, Protocol};

/// Limits every decoder honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Bodies, bulk strings and cells longer than this are kept cut and flagged `truncated`.
    pub max_body: usize,
    /// Cap on a content-decoded (gzip/deflate/br) copy of a body.
    pub max_decoded_body: usize,
    /// Bytes a decoder may buffer per direction while waiting for a message to complete,
    /// beyond the body cap; past it the message is given up (flagged) and the decoder resyncs.
    pub max_buffer: usize,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            max_decoded_body: 4 << 20,
            max_buffer: 256 << 10,
        }
    }
}

/// A sans-IO decoder for one connection.
///
/// Contract: `push` receives each direction's bytes in stream order with the time they were
/// seen; the output of `drain` is identical however the bytes are split; memory is bounded by
/// [`DecoderConfig`]; no input makes it panic.
pub trait StreamDecoder: Send {
    /// The protocol this decoder speaks.
    fn protocol(&self) -> Protocol;
    /// Bytes of one direction, in order. `ts_ns` is when they were seen (Unix ns).
    fn push(&mut self, dir: Direction, ts_ns: u64, bytes: &[u8]);
    /// `len` bytes of one direction were lost by the capture: mark the affected exchange and
    /// resynchronise on the next message boundary.
    fn gap(&mut self, dir: Direction, ts_ns: u64, len: u64);
    /// The connection ended: finish read-until-close bodies, emit unanswered requests
    /// (flagged `unpaired`).
    fn close(&mut self, ts_ns: u64);
    /// Move the exchanges completed so far into `out`, in request order.
    fn drain(&mut self, out: &mut Vec<Exchange>);
    /// Bytes the decoder currently holds for this connection: partial messages, bodies,
    /// completed messages waiting for their partner and exchanges not yet drained. Used to
    /// check (and monitor) that memory stays bounded by the [`DecoderConfig`] caps; the
    /// default (0) is for decoders that hold nothing.
    fn buffered_bytes(&self) -> usize {
        0
    }
}

/// A decoder for `protocol`, or none for [`Protocol::Unknown`].
#[must_use]
pub fn new_decoder(protocol: Protocol, config: DecoderConfig) -> Option<Box<dyn StreamDecoder>> {
    match protocol {
        Protocol::Http => Some(Box::new(crate::http::HttpDecoder::new(config))),
        Protocol::Redis => Some(Box::new(crate::redis::RedisDecoder::new(config))),
        Protocol::Mysql => Some(Box::new(crate::mysql::MysqlDecoder::new(config))),
        Protocol::Unknown => None,
    }
}

/// Outcome of [`detect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// The protocol is known.
    Found(Protocol),
    /// Not enough bytes yet to tell.
    NeedMore,
    /// None of the supported protocols (or TLS; see `encrypted`).
    Unknown {
        /// The first bytes look like a TLS handshake.
        encrypted: bool,
    },
}

/// Tell the protocol from the first bytes of each direction (either may be empty); the
/// server port is only a hint for ambiguous starts.
#[must_use]
pub fn detect(client_first: &[u8], server_first: &[u8], server_port: u16) -> Detection {
    crate::detect::detect(client_first, server_first, server_port)
}
