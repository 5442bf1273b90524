//! MySQL wire pieces: packet framing (with 16 MiB continuations) and a bounds-checked reader.

/// Largest physical packet payload; a payload of exactly this length continues in the next.
const MAX_PACKET: usize = 0xff_ffff;

/// One logical packet (continuations joined).
#[derive(Debug)]
pub(super) struct Packet {
    /// Sequence id of its first physical packet.
    pub(super) seq: u8,
    /// Payload, cut at the framer's cap.
    pub(super) payload: Vec<u8>,
    /// Real payload length.
    pub(super) len: u64,
    /// `payload` was cut.
    pub(super) truncated: bool,
    /// Time of the push that held its first byte.
    pub(super) start_ts: u64,
}

/// Splits one direction's bytes into logical packets, keeping at most `cap` bytes of each.
#[derive(Debug)]
pub(super) struct Framer {
    cap: usize,
    hdr: [u8; 4],
    hdr_len: usize,
    /// Payload bytes left in the current physical packet (valid when `in_payload`).
    left: usize,
    in_payload: bool,
    /// The current physical packet is 0xffffff long: another follows.
    continues: bool,
    cur: Option<Packet>,
}

impl Framer {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            hdr: [0; 4],
            hdr_len: 0,
            left: 0,
            in_payload: false,
            continues: false,
            cur: None,
        }
    }

    /// Bytes held for the packet in progress.
    pub(super) fn buffered(&self) -> usize {
        self.cur.as_ref().map_or(0, |p| p.payload.len())
    }

    pub(super) fn is_idle(&self) -> bool {
        self.cur.is_none() && self.hdr_len == 0
    }

    pub(super) fn reset(&mut self) {
        self.hdr_len = 0;
        self.left = 0;
        self.in_payload = false;
        self.continues = false;
        self.cur = None;
    }

    /// Frame `input`; complete packets go to `out`.
    pub(super) fn feed(&mut self, mut input: &[u8], ts: u64, out: &mut Vec<Packet>) {
        while !input.is_empty() || (self.in_payload && self.left == 0) {
            if !self.in_payload {
                let n = (4 - self.hdr_len).min(input.len());
                self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&input[..n]);
                self.hdr_len += n;
                input = &input[n..];
                if self.hdr_len < 4 {
                    if self.cur.is_none() && self.hdr_len > 0 {
                        // Remember when the packet started.
                        self.cur = Some(Packet {
                            seq: 0,
                            payload: Vec::new(),
                            len: 0,
                            truncated: false,
                            start_ts: ts,
                        });
                    }
                    return;
                }
                let len = usize::from(self.hdr[0])
                    | usize::from(self.hdr[1]) << 8
                    | usize::from(self.hdr[2]) << 16;
                let seq = self.hdr[3];
                self.hdr_len = 0;
                self.in_payload = true;
                self.left = len;
                self.continues = len == MAX_PACKET;
                let cur = self.cur.get_or_insert(Packet {
                    seq,
                    payload: Vec::new(),
                    len: 0,
                    truncated: false,
                    start_ts: ts,
                });
                if cur.len == 0 && cur.payload.is_empty() {
                    cur.seq = seq;
                }
            }
            let n = self.left.min(input.len());
            if let Some(cur) = &mut self.cur {
                let room = self.cap.saturating_sub(cur.payload.len());
                let keep = room.min(n);
                cur.payload.extend_from_slice(&input[..keep]);
                cur.truncated |= keep < n;
                cur.len += n as u64;
            }
            self.left -= n;
            input = &input[n..];
            if self.left == 0 {
                self.in_payload = false;
                if !self.continues {
                    if let Some(p) = self.cur.take() {
                        out.push(p);
                    }
                }
            }
        }
    }
}

/// A bounds-checked little-endian reader over a packet payload. Every read returns `None`
/// past the end instead of panicking.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    pub(super) fn rest(&self) -> &'a [u8] {
        self.buf
    }
    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }
    pub(super) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(super) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    /// Length-encoded integer; `None` also for the 0xfb NULL marker and 0xff.
    pub(super) fn lenenc(&mut self) -> Option<u64> {
        match self.u8()? {
            n @ 0..=0xfa => Some(u64::from(n)),
            0xfc => self.u16().map(u64::from),
            0xfd => self
                .take(3)
                .map(|b| u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16),
            0xfe => self.u64(),
            _ => None,
        }
    }
    pub(super) fn lenenc_bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.lenenc()?).ok()?;
        self.take(n)
    }
    pub(super) fn nul_str(&mut self) -> Option<&'a [u8]> {
        let i = self.buf.iter().position(|&b| b == 0)?;
        let s = &self.buf[..i];
        self.buf = &self.buf[i + 1..];
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_packets_join_and_cut() {
        let mut bytes = vec![0xff, 0xff, 0xff, 0];
        bytes.extend(std::iter::repeat_n(b'a', MAX_PACKET));
        bytes.extend([2, 0, 0, 1, b'b', b'c']);
        bytes.extend([1, 0, 0, 0, b'z']);
        let mut f = Framer::new(10);
        let mut out = Vec::new();
        f.feed(&bytes, 1, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len, MAX_PACKET as u64 + 2);
        assert!(out[0].truncated);
        assert_eq!(out[0].payload.len(), 10);
        assert_eq!(out[1].payload, b"z");
        assert!(f.is_idle());
    }

    #[test]
    fn empty_packet() {
        let mut f = Framer::new(10);
        let mut out = Vec::new();
        for b in [0u8, 0, 0, 3] {
            f.feed(&[b], 1, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].seq, 3);
    }
}
