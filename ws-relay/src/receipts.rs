//! Delivered receipts, pure: what this relay handed to whose devices since the last write.
//!
//! A connection notes each message it hands its user ([`Pending::note`]); the keeper takes the
//! notes once a second ([`Pending::take`]) and writes them in one statement
//! ([`windi_shared::store::receipts::record_delivered`]), putting them back if the write
//! failed ([`Pending::put_back`]). Only the highest seq per chat and user is kept: a delivered
//! marker covers every message up to it, so a thousand messages to one member cost one row
//! per second, and a group's message costs one note per member connected here.
//!
//! Bounded: past [`MAX_PENDING`] pairs, notes of new pairs are dropped (counted); a later note
//! of the same pair, or their reading the chat, covers what was dropped.

use std::collections::HashMap;

/// The most (chat, user) pairs held between two writes.
pub const MAX_PENDING: usize = 65_536;

/// Notes since the last write: the highest seq handed out per (chat, user).
#[derive(Debug, Default)]
pub struct Pending {
    seqs: HashMap<(i64, i64), i64>,
    /// Notes dropped because the map was full.
    pub dropped: u64,
}

impl Pending {
    /// Message `seq` of `chat_id` was handed to a device of `user_id`.
    pub fn note(&mut self, chat_id: i64, user_id: i64, seq: i64) {
        let full = self.seqs.len() >= MAX_PENDING;
        match self.seqs.get_mut(&(chat_id, user_id)) {
            Some(at) => *at = (*at).max(seq),
            None if full => self.dropped += 1,
            None => {
                self.seqs.insert((chat_id, user_id), seq);
            }
        }
    }

    /// Everything noted, as (chat, user, seq) in (chat, user) order; nothing is left.
    pub fn take(&mut self) -> Vec<(i64, i64, i64)> {
        let mut out: Vec<_> = self.seqs.drain().map(|((c, u), s)| (c, u, s)).collect();
        out.sort_unstable();
        out
    }

    /// A write of these failed: they are written with the next.
    pub fn put_back(&mut self, moves: &[(i64, i64, i64)]) {
        for &(c, u, s) in moves {
            let at = self.seqs.entry((c, u)).or_default();
            *at = (*at).max(s);
        }
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Note(i64, i64, i64),
        /// A write: it succeeds or fails (then its notes are put back).
        Write(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0i64..3, 0i64..3, 1i64..50).prop_map(|(c, u, s)| Op::Note(c, u, s)),
            1 => any::<bool>().prop_map(Op::Write),
        ]
    }

    proptest! {
        /// Against a reference that writes every note at once: after any schedule of notes,
        /// successful writes and failed ones, what was written plus what is pending holds the
        /// highest seq noted for every pair, and a write never goes below what was written.
        #[test]
        fn every_pair_reaches_its_highest_seq_whatever_fails(ops in prop::collection::vec(op(), 0..60)) {
            let mut pending = Pending::default();
            let mut written: HashMap<(i64, i64), i64> = HashMap::new();
            let mut reference: HashMap<(i64, i64), i64> = HashMap::new();
            for op in ops {
                match op {
                    Op::Note(c, u, s) => {
                        pending.note(c, u, s);
                        let r = reference.entry((c, u)).or_default();
                        *r = (*r).max(s);
                    }
                    Op::Write(ok) => {
                        let batch = pending.take();
                        prop_assert!(pending.is_empty());
                        prop_assert!(batch.windows(2).all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
                        if ok {
                            for (c, u, s) in batch {
                                // The store's rule: a marker only moves forward.
                                let w = written.entry((c, u)).or_default();
                                *w = (*w).max(s);
                            }
                        } else {
                            pending.put_back(&batch);
                        }
                    }
                }
            }
            for (c, u, s) in pending.take() {
                let w = written.entry((c, u)).or_default();
                *w = (*w).max(s);
            }
            prop_assert_eq!(written, reference);
        }
    }

    #[test]
    fn a_full_map_drops_new_pairs_but_still_raises_known_ones() {
        let mut pending = Pending::default();
        for i in 0..MAX_PENDING as i64 {
            pending.note(i, 1, 1);
        }
        pending.note(-1, 1, 5);
        pending.note(0, 1, 9);
        assert_eq!(pending.dropped, 1);
        assert_eq!(pending.len(), MAX_PENDING);
        let taken = pending.take();
        assert!(taken.contains(&(0, 1, 9)));
        assert!(!taken.iter().any(|&(c, _, _)| c == -1));
    }
}
