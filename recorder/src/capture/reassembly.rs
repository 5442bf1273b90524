//! Per-direction reassembly by byte position. The kernel tags every data and gap record with
//! the position of its first byte; records of one direction can arrive out of order when two
//! threads use one socket at once. This puts them back in order, trims overlaps, and turns
//! holes that never fill into explicit gaps.

use std::collections::BTreeMap;

use crate::GapReason;

/// A piece of one direction, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Bytes.
    Data { ts_ns: u64, bytes: Vec<u8> },
    /// Missing bytes.
    Gap {
        ts_ns: u64,
        len: u64,
        reason: GapReason,
    },
}

#[derive(Debug)]
enum Held {
    Data(Vec<u8>),
    Gap(u64, GapReason),
    /// Bytes another capture point carries (loopback dedup): skipped without a piece.
    Skip(u64),
}

impl Held {
    /// Stream bytes covered.
    fn len(&self) -> u64 {
        match self {
            Held::Data(b) => b.len() as u64,
            Held::Gap(n, _) | Held::Skip(n) => *n,
        }
    }

    /// Memory held (what `MAX_HELD_BYTES` bounds).
    fn mem(&self) -> u64 {
        match self {
            Held::Data(b) => b.len() as u64,
            Held::Gap(..) | Held::Skip(_) => 0,
        }
    }
}

/// Records held back at most before a hole is declared a gap.
const MAX_HELD: usize = 64;
/// Bytes held back at most before a hole is declared a gap.
const MAX_HELD_BYTES: u64 = 4 << 20;

/// One direction of one connection.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    next: u64,
    held: BTreeMap<u64, (u64, Held)>,
    held_bytes: u64,
    /// When the oldest held record arrived (monotonic ns of its record).
    oldest_held_ts: Option<u64>,
}

impl Stream {
    /// The position of the next byte expected.
    pub(crate) fn next_pos(&self) -> u64 {
        self.next
    }

    /// Whether records wait for a hole to fill.
    pub(crate) fn has_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// The timestamp of the oldest held record.
    pub(crate) fn oldest_held(&self) -> Option<u64> {
        self.oldest_held_ts
    }

    /// Adds bytes at `pos`.
    pub(crate) fn data(&mut self, pos: u64, ts_ns: u64, bytes: Vec<u8>, out: &mut Vec<Piece>) {
        self.add(pos, ts_ns, Held::Data(bytes), out);
    }

    /// Appends in-order bytes without a piece when nothing waits and `pos` is the next
    /// position: returns whether it did (the caller then owns delivering the bytes, e.g. by
    /// extending the previous event of the same syscall).
    pub(crate) fn try_append(&mut self, pos: u64, len: u64) -> bool {
        if pos != self.next || !self.held.is_empty() {
            return false;
        }
        self.next += len;
        true
    }

    /// Skips `len` bytes at `pos` that another capture point carries: the position moves on
    /// with no piece (not a gap).
    pub(crate) fn skip(&mut self, pos: u64, ts_ns: u64, len: u64, out: &mut Vec<Piece>) {
        self.add(pos, ts_ns, Held::Skip(len), out);
    }

    /// Adds a gap at `pos`.
    pub(crate) fn gap(
        &mut self,
        pos: u64,
        ts_ns: u64,
        len: u64,
        reason: GapReason,
        out: &mut Vec<Piece>,
    ) {
        self.add(pos, ts_ns, Held::Gap(len, reason), out);
    }

    fn add(&mut self, pos: u64, ts_ns: u64, item: Held, out: &mut Vec<Piece>) {
        let len = item.len();
        if len == 0 {
            return;
        }
        if pos > self.next {
            self.held_bytes += item.mem();
            self.oldest_held_ts = Some(self.oldest_held_ts.map_or(ts_ns, |t| t.min(ts_ns)));
            self.held.insert(pos, (ts_ns, item));
            if self.held.len() > MAX_HELD || self.held_bytes > MAX_HELD_BYTES {
                self.skip_hole(GapReason::Timeout, out);
            }
            return;
        }
        self.emit(pos, ts_ns, item, out);
        self.drain(out);
    }

    /// Emits `item` at `pos <= next`, trimming what was already emitted.
    fn emit(&mut self, pos: u64, ts_ns: u64, item: Held, out: &mut Vec<Piece>) {
        let end = pos + item.len();
        if end <= self.next {
            return; // entirely seen already
        }
        let skip = self.next - pos;
        match item {
            Held::Data(mut b) => {
                if skip > 0 {
                    b.drain(..usize::try_from(skip).unwrap_or(b.len()));
                }
                out.push(Piece::Data { ts_ns, bytes: b });
            }
            Held::Gap(n, reason) => out.push(Piece::Gap {
                ts_ns,
                len: n - skip,
                reason,
            }),
            Held::Skip(_) => {}
        }
        self.next = end;
    }

    fn drain(&mut self, out: &mut Vec<Piece>) {
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() > self.next {
                break;
            }
            let (pos, (ts, item)) = entry.remove_entry();
            self.held_bytes -= item.mem();
            self.emit(pos, ts, item, out);
        }
        if self.held.is_empty() {
            self.oldest_held_ts = None;
        }
    }

    /// Declares the hole before the first held record a gap and moves on.
    pub(crate) fn skip_hole(&mut self, reason: GapReason, out: &mut Vec<Piece>) {
        let Some((&pos, &(ts, _))) = self.held.first_key_value() else {
            return;
        };
        if pos > self.next {
            out.push(Piece::Gap {
                ts_ns: ts,
                len: pos - self.next,
                reason,
            });
            self.next = pos;
        }
        self.drain(out);
    }

    /// Ends the stream at `end` (the kernel's final position): holes become gaps.
    pub(crate) fn finish(&mut self, end: u64, ts_ns: u64, out: &mut Vec<Piece>) {
        while self.has_held() {
            self.skip_hole(GapReason::Timeout, out);
        }
        if end > self.next {
            out.push(Piece::Gap {
                ts_ns,
                len: end - self.next,
                reason: GapReason::Timeout,
            });
            self.next = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(out: &[Piece]) -> Vec<u8> {
        out.iter()
            .flat_map(|p| match p {
                Piece::Data { bytes, .. } => bytes.clone(),
                Piece::Gap { len, .. } => vec![b'?'; usize::try_from(*len).unwrap_or(0)],
            })
            .collect()
    }

    #[test]
    fn in_order() {
        let mut s = Stream::default();
        let mut out = Vec::new();
        s.data(0, 1, b"abc".to_vec(), &mut out);
        s.data(3, 2, b"de".to_vec(), &mut out);
        assert_eq!(bytes(&out), b"abcde");
        assert_eq!(s.next_pos(), 5);
    }

    #[test]
    fn out_of_order_is_reordered() {
        let mut s = Stream::default();
        let mut out = Vec::new();
        s.data(3, 2, b"de".to_vec(), &mut out);
        assert!(out.is_empty());
        assert!(s.has_held());
        s.data(0, 1, b"abc".to_vec(), &mut out);
        assert_eq!(bytes(&out), b"abcde");
        assert!(!s.has_held());
    }

    #[test]
    fn overlap_and_duplicates_are_trimmed() {
        let mut s = Stream::default();
        let mut out = Vec::new();
        s.data(0, 1, b"abcd".to_vec(), &mut out);
        s.data(2, 1, b"cdef".to_vec(), &mut out);
        s.data(0, 1, b"ab".to_vec(), &mut out);
        assert_eq!(bytes(&out), b"abcdef");
    }

    #[test]
    fn kernel_gap_advances() {
        let mut s = Stream::default();
        let mut out = Vec::new();
        s.data(0, 1, b"ab".to_vec(), &mut out);
        s.gap(2, 1, 3, GapReason::OverCap, &mut out);
        s.data(5, 1, b"z".to_vec(), &mut out);
        assert_eq!(bytes(&out), b"ab???z");
        assert!(matches!(
            out[1],
            Piece::Gap {
                len: 3,
                reason: GapReason::OverCap,
                ..
            }
        ));
    }

    #[test]
    fn hole_that_never_fills_becomes_a_gap() {
        let mut s = Stream::default();
        let mut out = Vec::new();
        for i in 0..=MAX_HELD as u64 {
            s.data(10 + i, 1, vec![b'x'], &mut out);
        }
        assert!(matches!(
            out[0],
            Piece::Gap {
                len: 10,
                reason: GapReason::Timeout,
                ..
            }
        ));
        assert_eq!(s.next_pos(), 10 + MAX_HELD as u64 + 1);
    }

    #[test]
    fn skipped_bytes_move_on_without_a_piece() {
        let mut s = Stream::default();
        let mut out = Vec::new();
        s.data(0, 1, b"ab".to_vec(), &mut out);
        s.data(1000, 1, b"z".to_vec(), &mut out);
        s.skip(2, 1, 998, &mut out);
        assert_eq!(bytes(&out), b"abz");
        assert!(!s.has_held());
        // A long skipped tail holds no memory and forces no gap.
        s.skip(1 << 40, 1, 10, &mut out);
        s.skip(1001, 1, (1 << 40) - 1001, &mut out);
        assert_eq!(s.next_pos(), (1 << 40) + 10);
        assert!(out.iter().all(|p| matches!(p, Piece::Data { .. })));
    }

    #[test]
    fn try_append_only_in_order() {
        let mut s = Stream::default();
        let mut out = Vec::new();
        assert!(s.try_append(0, 3));
        assert!(!s.try_append(5, 1));
        s.data(5, 1, b"x".to_vec(), &mut out);
        assert!(!s.try_append(3, 2), "something is held");
        assert_eq!(s.next_pos(), 3);
    }

    #[test]
    fn finish_reports_the_tail() {
        let mut s = Stream::default();
        let mut out = Vec::new();
        s.data(0, 1, b"ab".to_vec(), &mut out);
        s.data(4, 1, b"ef".to_vec(), &mut out);
        s.finish(9, 2, &mut out);
        assert_eq!(bytes(&out), b"ab??ef???");
    }
}
