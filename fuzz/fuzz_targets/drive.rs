//! Shared driver: the fuzz input is a little program of pushes, gaps and drains for one
//! decoder made with `new_decoder`, followed by `close`. Each op starts with a tag byte:
//! `tag & 3` = 0/1 push (request/response) of the next `tag >> 2` bytes (or of all the rest
//! when fewer), 2 gap (len from the next byte, scaled), 3 drain. Any panic is a bug.

use deetune_protocols::{new_decoder, DecoderConfig, Direction, Protocol};

/// Small caps so that inputs of a few KB reach them.
const CONFIG: DecoderConfig = DecoderConfig {
    max_body: 512,
    max_decoded_body: 1024,
    max_buffer: 1024,
};

pub fn drive(protocol: Protocol, mut data: &[u8]) {
    let Some(mut d) = new_decoder(protocol, CONFIG) else {
        return;
    };
    let mut out = Vec::new();
    let mut ts = 0u64;
    while let Some((&tag, rest)) = data.split_first() {
        data = rest;
        ts += 1;
        let dir = if tag & 1 == 0 {
            Direction::Request
        } else {
            Direction::Response
        };
        match tag & 3 {
            0 | 1 => {
                let n = usize::from(tag >> 2).min(data.len());
                let n = if n == 0 { data.len().min(64) } else { n };
                let (chunk, rest) = data.split_at(n);
                d.push(dir, ts, chunk);
                data = rest;
            }
            2 => {
                let Some((&len, rest)) = data.split_first() else {
                    break;
                };
                data = rest;
                let dir = if tag & 4 == 0 {
                    Direction::Request
                } else {
                    Direction::Response
                };
                d.gap(dir, ts, u64::from(len) << (tag >> 5));
            }
            _ => d.drain(&mut out),
        }
        out.clear();
    }
    d.close(ts + 1);
    d.drain(&mut out);
}
