//! `DirectAppend` against a real file system: every byte appended is in
//! the file after `finish`, across block and chunk boundaries, through a
//! cut and a resume.
#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::path::Path;

use yilian_proof::direct::{ALIGN, DirectAppend};

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Appends in pieces of `piece`, finishes at `cut` (a stream's end),
/// resumes from the file's length, finishes: the file is the input.
/// `direct`: whether the writes go to the disk directly (else through the
/// page cache, as where the file system refuses `O_DIRECT`).
fn round_trip(dir: &Path, total: usize, piece: usize, cut: usize, chunk: usize) -> bool {
    let path = dir.join(format!("f-{total}-{piece}-{cut}-{chunk}"));
    let data = bytes(total, piece as u8);
    let open = |offset: u64| -> DirectAppend {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        f.set_len(offset).unwrap();
        DirectAppend::open(&path, f, offset, chunk).unwrap()
    };
    let mut d = open(0);
    let direct = d.is_direct();
    for c in data[..cut].chunks(piece) {
        d.append(c).unwrap();
    }
    d.finish().unwrap();
    assert_eq!(
        d.is_direct(),
        direct,
        "direct writes refused after the open"
    );
    drop(d);
    let held = std::fs::metadata(&path).unwrap().len();
    assert_eq!(held, cut as u64, "every byte before the cut is in the file");
    let mut d = open(held);
    for c in data[cut..].chunks(piece) {
        d.append(c).unwrap();
        // Finishing mid-stream changes nothing in what follows.
        if c.len() == 4096 {
            d.finish().unwrap();
        }
    }
    d.finish().unwrap();
    drop(d);
    assert!(
        std::fs::read(&path).unwrap() == data,
        "{total} {piece} {cut} {chunk}"
    );
    std::fs::remove_file(&path).unwrap();
    direct
}

/// Sizes on both sides of every block and chunk boundary, pieces of
/// several sizes, cut and resumed at several points, in `dir`. Returns
/// whether the writes went to the disk directly.
fn every_boundary(dir: &Path) -> bool {
    let mut direct = false;
    for chunk in [ALIGN, 64 * 1024, 1024 * 1024] {
        for total in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            chunk - 1,
            chunk,
            chunk + 1,
            3 * chunk + 777,
        ] {
            for piece in [1000, 4096, 65536, 1 << 20] {
                for cut in [0, total / 3, total.saturating_sub(1), total] {
                    if total > 100_000 && piece == 1000 {
                        continue;
                    }
                    direct |= round_trip(dir, total, piece, cut.min(total), chunk);
                }
            }
        }
    }
    direct
}

#[test]
fn sizes_across_every_boundary_survive_a_cut_and_a_resume() {
    // Under the target directory, on the disk's file system.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("direct-append");
    std::fs::create_dir_all(&dir).unwrap();
    if !every_boundary(&dir) {
        eprintln!(
            "O_DIRECT refused in {}: only the page-cache path ran",
            dir.display()
        );
    }
}

/// The same on a file system that refuses `O_DIRECT` at the open (ramfs):
/// everything goes through the ordinary file, and nothing is lost. Needs
/// root, to mount it.
#[test]
fn where_direct_writes_are_refused_the_file_still_gets_every_byte() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("direct-append-ramfs");
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(mounted, "mounting ramfs needs root (the tests run as root)");
    let direct = std::panic::catch_unwind(|| every_boundary(&dir));
    let _ = std::process::Command::new("umount").arg(&dir).status();
    assert!(!direct.unwrap(), "ramfs took direct writes");
}
