//! Where a key lives in a sharded CAS: rendezvous (highest-random-weight) hashing.
//!
//! Every member gets a score for every key; a key's *preference order* is the members by
//! falling score, and its owners are the first R of it. Scores depend only on the member's name
//! and the key, so every process that knows the same member list computes the same owners with
//! no coordination, and adding a member changes a key's owners only when the newcomer scores
//! into its top R: it takes 1/(N+1) of all placements and no key moves between two old members
//! (the old members keep their relative order for every key).

use scoot_core::Digest;
use sha2::{Digest as _, Sha256};

/// The members of a sharded CAS (by name: the address as configured) and their seeds.
#[derive(Clone, Debug)]
pub struct Ring {
    seeds: Vec<u64>,
}

impl Ring {
    /// A ring over `members`, identified by their names. Callers keep names unique (a repeated
    /// name would get the same score as its twin, and so the same share).
    pub fn new<S: AsRef<str>>(members: &[S]) -> Ring {
        Ring {
            seeds: members
                .iter()
                .map(|m| hash64(m.as_ref().as_bytes()))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.seeds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seeds.is_empty()
    }

    /// The indices of all members in `digest`'s preference order (highest score first; ties,
    /// which need two equal 64-bit scores, go to the lower index).
    pub fn preference(&self, digest: &Digest) -> Vec<usize> {
        let key = key_of(digest);
        let mut scored: Vec<(u64, usize)> = self
            .seeds
            .iter()
            .enumerate()
            .map(|(i, seed)| (mix(seed ^ key), i))
            .collect();
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, i)| i).collect()
    }

    /// The first `replicas` members of `digest`'s preference order.
    pub fn owners(&self, digest: &Digest, replicas: usize) -> Vec<usize> {
        let mut order = self.preference(digest);
        order.truncate(replicas);
        order
    }
}

/// A digest's key: 64 bits of a hash of its hash and size (digests from clients are not trusted
/// to be well-formed hex, so they are hashed rather than parsed).
fn key_of(digest: &Digest) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(digest.hash.as_bytes());
    hasher.update(digest.size_bytes.to_le_bytes());
    first_u64(&hasher.finalize())
}

fn hash64(bytes: &[u8]) -> u64 {
    first_u64(&Sha256::digest(bytes))
}

fn first_u64(hash: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first)
}

/// SplitMix64's finaliser: a bijection that spreads every input bit over the output, so the
/// scores of one key under different seeds behave as independent random numbers.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::digest_of;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("apiserver-{i}:12100")).collect()
    }

    fn keys(count: usize) -> Vec<Digest> {
        (0..count)
            .map(|i| digest_of(format!("blob {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn owners_are_distinct_stable_and_a_prefix_of_the_preference() {
        let ring = Ring::new(&names(5));
        for key in keys(200) {
            let order = ring.preference(&key);
            assert_eq!(order.len(), 5);
            assert_eq!(order.iter().collect::<HashSet<_>>().len(), 5);
            assert_eq!(ring.owners(&key, 2), order[..2]);
            // Another process with the same list agrees.
            assert_eq!(Ring::new(&names(5)).preference(&key), order);
        }
    }

    #[test]
    fn keys_spread_evenly() {
        let ring = Ring::new(&names(4));
        let mut counts = [0usize; 4];
        let total = 40_000;
        for key in keys(total) {
            counts[ring.preference(&key)[0]] += 1;
        }
        for count in counts {
            let share = count as f64 / total as f64;
            assert!((share - 0.25).abs() < 0.02, "{counts:?}");
        }
    }

    /// Adding a member moves only its share: 1/(N+1) of the placements, each from an old member
    /// to the new one, never between two old members.
    #[test]
    fn adding_a_member_moves_only_its_share() {
        let total = 20_000;
        for (n, replicas) in [(3, 1), (3, 2), (5, 2), (5, 3)] {
            let old = Ring::new(&names(n));
            let new = Ring::new(&names(n + 1));
            let newcomer = n;
            let mut moved = 0usize;
            for key in keys(total) {
                let before = old.owners(&key, replicas);
                let after = new.owners(&key, replicas);
                let gained: Vec<usize> = after
                    .iter()
                    .filter(|m| !before.contains(m))
                    .copied()
                    .collect();
                let lost: Vec<usize> = before
                    .iter()
                    .filter(|m| !after.contains(m))
                    .copied()
                    .collect();
                // Whatever changed, changed to the newcomer.
                assert!(
                    gained.iter().all(|&m| m == newcomer),
                    "{before:?} → {after:?}"
                );
                assert_eq!(gained.len(), lost.len());
                moved += gained.len();
                // The old members keep their order: the new preference is the old one with the
                // newcomer inserted somewhere.
                let old_order = old.preference(&key);
                let new_without: Vec<usize> = new
                    .preference(&key)
                    .into_iter()
                    .filter(|&m| m != newcomer)
                    .collect();
                assert_eq!(new_without, old_order);
            }
            let fraction = moved as f64 / (total * replicas) as f64;
            let expected = 1.0 / (n + 1) as f64;
            assert!(
                (fraction - expected).abs() < 0.02,
                "N={n} R={replicas}: moved {fraction:.3} of placements, expected {expected:.3}"
            );
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let old = Ring::new(&names(4));
        // The same names minus the last: what an operator gets by dropping it from the list.
        let new = Ring::new(&names(3));
        for key in keys(5000) {
            let before = old.owners(&key, 2);
            let after = new.owners(&key, 2);
            if !before.contains(&3) {
                assert_eq!(before, after);
            }
        }
    }
}
