//! Deterministic payloads: content derived from a seed, so a test knows each
//! file's SHA-256 without keeping it in memory.

use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// Writes `size` pseudo-random bytes derived from `seed` to `path`, in
/// blocks, calling `pause` between blocks (to make slow writers).
/// Returns the SHA-256 in hex.
pub fn write_seeded(
    path: &Path,
    seed: u64,
    size: u64,
    mut pause: impl FnMut(),
) -> std::io::Result<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut f = std::fs::File::create(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
        if left > 0 {
            pause();
        }
    }
    f.sync_all()?;
    Ok(hex::encode(h.finalize()))
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut HashWriter(&mut h))?;
    Ok(hex::encode(h.finalize()))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
