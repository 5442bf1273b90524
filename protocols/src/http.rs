//! http decoder (placeholder until the decoder lands: decodes nothing).

use crate::{DecoderConfig, Direction, Exchange, Protocol, StreamDecoder};

/// Decoder for one http connection.
#[derive(Debug)]
pub struct HttpDecoder {
    _config: DecoderConfig,
}

impl HttpDecoder {
    /// A decoder with these limits.
    #[must_use]
    pub fn new(config: DecoderConfig) -> Self {
        Self { _config: config }
    }
}

impl StreamDecoder for HttpDecoder {
    fn protocol(&self) -> Protocol {
        Protocol::Http
    }
    fn push(&mut self, _dir: Direction, _ts_ns: u64, _bytes: &[u8]) {}
    fn gap(&mut self, _dir: Direction, _ts_ns: u64, _len: u64) {}
    fn close(&mut self, _ts_ns: u64) {}
    fn drain(&mut self, _out: &mut Vec<Exchange>) {}
}
