//! The store's own lock file: `flock` on `<dir>/lock`, holding the owner's pid, so a second
//! opener fails at once with the holder's pid instead of waiting or panicking in sled.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::Path;

use crate::StoreError;

/// How long a lock held by this very process is waited for (see `acquire`).
const SAME_PROCESS_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Held for the life of a [`Store`](crate::Store); the lock goes with the file descriptor.
#[derive(Debug)]
pub(crate) struct LockFile {
    _file: File,
}

impl LockFile {
    pub(crate) fn acquire(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("lock");
        let dir_err = |source| StoreError::Dir {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(dir_err)?;
        let deadline = std::time::Instant::now() + SAME_PROCESS_WAIT;
        loop {
            // SAFETY: flock on a valid open descriptor; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(dir_err(err));
            }
            let mut text = String::new();
            let holder: Option<u32> = file
                .seek(SeekFrom::Start(0))
                .and_then(|_| file.read_to_string(&mut text))
                .ok()
                .and_then(|_| text.trim().parse().ok());
            // Our own pid: a store of this process is closing, or a child process of ours
            // is between fork and exec with a copy of the descriptor. Both pass quickly.
            if holder != Some(std::process::id()) || std::time::Instant::now() >= deadline {
                return Err(StoreError::Locked {
                    path: dir.to_path_buf(),
                    holder,
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(dir_err)?;
        Ok(Self { _file: file })
    }
}
