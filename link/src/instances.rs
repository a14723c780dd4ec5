//! Several central instances behind one `uplink.central`: a list of
//! `HOST:PORT` separated by commas, each name possibly with several
//! addresses. Each box prefers one instance by rendezvous hashing of its
//! identity, so boxes spread evenly over the instances and the loss of one
//! moves only its own boxes (each to its own next choice).

use std::net::SocketAddr;

use sha2::{Digest, Sha256};

/// The entries of `uplink.central`, in the order written.
pub fn central_entries(central: &str) -> Vec<&str> {
    central
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect()
}

/// The first entry: where one-off requests (enrollment, renewal) go, and
/// the name checked in central's certificate unless told otherwise.
pub fn first_entry(central: &str) -> &str {
    central_entries(central)
        .into_iter()
        .next()
        .unwrap_or(central)
}

/// `addrs` ordered by this box's preference: highest rendezvous score
/// (SHA-256 of the box's key and the address) first. Duplicates go.
pub fn by_preference(key: &str, mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    addrs.sort_unstable();
    addrs.dedup();
    let score = |a: &SocketAddr| {
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        h.update([0]);
        h.update(a.to_string().as_bytes());
        let d = h.finalize();
        u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    };
    addrs.sort_by_key(|a| std::cmp::Reverse(score(a)));
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn entries_are_split_on_commas() {
        assert_eq!(
            central_entries(" hub-a:4433, hub-b:4433 ,,"),
            ["hub-a:4433", "hub-b:4433"]
        );
        assert_eq!(first_entry("hub-a:4433,hub-b:4433"), "hub-a:4433");
        assert_eq!(first_entry("hub:4433"), "hub:4433");
    }

    #[test]
    fn boxes_spread_over_instances_and_losing_one_moves_only_its_boxes() {
        let three = vec![
            addr("10.0.0.1:4433"),
            addr("10.0.0.2:4433"),
            addr("10.0.0.3:4433"),
        ];
        let mut first = std::collections::HashMap::new();
        let boxes: Vec<String> = (0..3000)
            .map(|i| format!("county/clinic-{i}/box-1"))
            .collect();
        for b in &boxes {
            *first.entry(by_preference(b, three.clone())[0]).or_insert(0) += 1;
        }
        for (a, n) in &first {
            assert!(
                (800..1200).contains(n),
                "{a} is first for {n} of 3000 boxes"
            );
        }
        // Instance 2 gone: a box that preferred 1 or 3 keeps it.
        let two = vec![three[0], three[2]];
        for b in &boxes {
            let before = by_preference(b, three.clone());
            let after = by_preference(b, two.clone());
            if before[0] != three[1] {
                assert_eq!(
                    after[0], before[0],
                    "{b} moved although its instance stayed"
                );
            } else {
                assert_eq!(after[0], before[1], "{b} goes to its own second choice");
            }
        }
        // The order does not depend on how the addresses were listed.
        let mut shuffled = three.clone();
        shuffled.reverse();
        assert_eq!(
            by_preference("x/y/z", shuffled),
            by_preference("x/y/z", three)
        );
    }
}
