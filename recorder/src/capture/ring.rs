//! The consumer side of the kernel's BPF ring buffer, read in batches.
//!
//! The layout is the kernel's (`kernel/bpf/ringbuf.c`): the map's first page holds the
//! consumer position (user space writes it), the next page the producer position (the kernel
//! writes it), then the data pages, mapped twice in a row so that no record wraps. Each record
//! is an 8-byte header (`len` with a busy and a discard bit, then a page offset) and its data,
//! padded to 8 bytes.
//!
//! Why not aya's `RingBuf`: it publishes the consumer position after *every* record (a
//! sequentially consistent store) and reads the producer position whenever it has caught up.
//! Every reservation in the kernel reads the consumer position and writes the producer
//! position, so each of those stores and loads moves a cache line between the reader's CPU
//! and the CPU of the traced process, in that process's own syscall. Here a drain reads the
//! producer position once, hands over every committed record, and publishes the consumer
//! position once at the end (and every eighth of the ring, `PUBLISH_SHIFT`, during a long
//! drain, so that producers get the space back while a large backlog is read). Measured
//! (`docs/benchmarks.md`, sixth session): the traced process's program runs got no more than
//! noise cheaper from it (≈ 20 ns of 280–600); the reader saves a store per record.

use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use aya::maps::MapData;

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR: u64 = 8;
/// During one drain, the consumer position is published at least every this fraction of the
/// ring (1/8).
const PUBLISH_SHIFT: u32 = 3;

/// A shared memory mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, prot: libc::c_int, offset: usize) -> std::io::Result<Self> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::other("ring buffer offset out of range"))?;
        // SAFETY: a fresh mapping of the map's fd (no existing memory is touched); checked
        // for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        NonNull::new(ptr)
            .map(|ptr| Self { ptr, len })
            .ok_or_else(|| std::io::Error::other("mmap returned null"))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; nothing borrows it past `Ring`.
        unsafe { libc::munmap(self.ptr.as_ptr(), self.len) };
    }
}

/// The reader of one BPF ring buffer map.
pub(crate) struct Ring {
    /// The consumer page (read-write).
    consumer: Mapping,
    /// The producer page and the data pages twice (read-only).
    producer: Mapping,
    page: usize,
    mask: u64,
    /// Our consumer position (published to the kernel in batches).
    pos: u64,
    /// Kept for its fd (the mappings hold the map alive too; the fd is what epoll waits on).
    map: MapData,
}

// SAFETY: the mappings are plain shared memory owned by this value; the kernel is the only
// other party and all shared words are accessed atomically.
unsafe impl Send for Ring {}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("size", &(self.mask + 1))
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Maps the ring buffer `map` of `size` bytes (the map's `max_entries`: a power of two,
    /// a multiple of the page size).
    pub(crate) fn new(map: MapData, size: u32) -> std::io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::other("no page size"))?;
        let size = size as usize;
        if !size.is_power_of_two() || size % page != 0 {
            return Err(std::io::Error::other(format!(
                "ring buffer size {size} is not a power-of-two multiple of the page size"
            )));
        }
        let fd = map.fd().as_fd().as_raw_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + 2 * size, libc::PROT_READ, page)?;
        let mut ring = Self {
            consumer,
            producer,
            page,
            mask: size as u64 - 1,
            pos: 0,
            map,
        };
        ring.pos = ring.consumer_pos().load(Ordering::SeqCst);
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first word of the consumer page, page-aligned, mapped read-write for the
        // life of `self`; the kernel reads it atomically.
        unsafe { self.consumer.ptr.cast::<AtomicU64>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first word of the producer page, page-aligned, mapped for the life of
        // `self`; the kernel writes it atomically.
        unsafe { self.producer.ptr.cast::<AtomicU64>().as_ref() }
    }

    /// Where ring position `pos` is in the first copy of the data pages.
    fn at(&self, pos: u64) -> *const u8 {
        let off = self.page + (pos & self.mask) as usize;
        // SAFETY: `off` < page + size, within the producer mapping (page + 2 × size).
        unsafe { self.producer.ptr.as_ptr().cast::<u8>().add(off) }
    }

    /// The record header at ring position `pos`.
    fn header(&self, pos: u64) -> &AtomicU32 {
        // SAFETY: 8-aligned (positions advance in multiples of 8, the mapping is page-aligned)
        // and mapped for the life of `self`.
        unsafe { &*self.at(pos).cast::<AtomicU32>() }
    }

    /// Hands every committed record to `f`, in order, and publishes the new consumer
    /// position. Stops at the first record still being written (busy). Returns the number of
    /// records handed over.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let size = self.mask + 1;
        let publish_every = (size >> PUBLISH_SHIFT).max(HDR);
        let mut n = 0;
        let mut published = self.pos;
        let mut prod = self.producer_pos().load(Ordering::Acquire);
        loop {
            if self.pos == prod {
                // Caught up: once more, for what was committed meanwhile.
                let again = self.producer_pos().load(Ordering::Acquire);
                if again == prod {
                    break;
                }
                prod = again;
            }
            let len = self.header(self.pos).load(Ordering::Acquire);
            if len & BUSY_BIT != 0 {
                break;
            }
            let data_len = u64::from(len & !(BUSY_BIT | DISCARD_BIT));
            if data_len > size - HDR {
                // Not a record the kernel writes: stop rather than read past the data.
                tracing::error!(pos = self.pos, len, "Corrupt ring buffer record header.");
                break;
            }
            if len & DISCARD_BIT == 0 {
                // SAFETY: the record's data starts within the first copy of the data pages
                // and, with the second copy mapped right after it, `data_len` (< size) bytes
                // from there are mapped; the kernel no longer writes a committed record
                // until the consumer position passes it.
                let data = unsafe {
                    std::slice::from_raw_parts(self.at(self.pos + HDR), data_len as usize)
                };
                f(data);
                n += 1;
            }
            self.pos += (HDR + data_len + 7) & !7;
            if self.pos - published >= publish_every {
                self.consumer_pos().store(self.pos, Ordering::SeqCst);
                published = self.pos;
            }
        }
        if self.pos != published {
            self.consumer_pos().store(self.pos, Ordering::SeqCst);
        }
        n
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}
