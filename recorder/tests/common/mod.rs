//! Helpers shared by the recorder's integration tests.

use std::path::{Path, PathBuf};

/// The bytes of every file under `dir`, plus the content of every zstd frame found in them
/// (the store compresses exchange blocks), so a secret cannot hide behind compression.
pub(crate) fn stored_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let mut i = 0;
            while let Some(off) = bytes[i..]
                .windows(4)
                .position(|w| w == [0x28, 0xb5, 0x2f, 0xfd])
            {
                let start = i + off;
                if let Ok(dec) = zstd::stream::read::Decoder::new(&bytes[start..]) {
                    let mut plain = Vec::new();
                    let _ = dec.single_frame().take(64 << 20).read_to_end(&mut plain);
                    if !plain.is_empty() {
                        out.push((p.clone(), plain));
                    }
                }
                i = start + 4;
            }
            out.push((p, bytes));
        }
    }
    out
}

pub(crate) fn files_contain(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    stored_bytes(dir)
        .into_iter()
        .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle))
        .map(|(p, _)| p)
        .collect()
}
