//! The delivery cursor: what one connection owes, per chat, in revs. Pure bookkeeping, no I/O,
//! so every rule of delivery is tested here on its own.
//!
//! For each chat the connection delivers, the cursor keeps `next`, the rev it must deliver
//! next, and `known`, the highest rev it knows exists (from live events and the poller). A live
//! change at `next` is delivered; one below it was delivered already; one above it means
//! something is missing, and the connection reads from Postgres everything from `next` on
//! (a backfill) before going on. A chat is **behind** while `next <= known`: until a backfill
//! succeeds, it stays behind, so a failed one is retried rather than forgotten.

use std::collections::HashMap;

/// What to do with a live change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// It is the next one: send it, then [`Cursor::delivered`].
    Deliver,
    /// Already delivered (or covered by a backfill): drop it.
    Duplicate,
    /// It is ahead: earlier changes are missing; backfill first.
    Gap,
    /// The connection does not deliver this chat.
    NotHere,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chat {
    next: i64,
    known: i64,
}

#[derive(Debug, Default)]
pub struct Cursor {
    chats: HashMap<i64, Chat>,
}

impl Cursor {
    /// Delivers `chat` from the change after `after` on; `current` is the chat's rev now (so
    /// the changes between are owed). Reopening moves the cursor: `resume` may go back.
    pub fn open(&mut self, chat: i64, after: i64, current: i64) {
        let after = after.max(0);
        self.chats.insert(
            chat,
            Chat {
                next: after + 1,
                known: current.max(after),
            },
        );
    }

    /// Stops delivering `chat` (the member left); answers whether it was delivered.
    pub fn close(&mut self, chat: i64) -> bool {
        self.chats.remove(&chat).is_some()
    }

    pub fn contains(&self, chat: i64) -> bool {
        self.chats.contains_key(&chat)
    }

    /// The chats this connection delivers.
    pub fn chats(&self) -> impl Iterator<Item = i64> + '_ {
        self.chats.keys().copied()
    }

    /// The last rev delivered (or skipped as superseded) in `chat`.
    pub fn position(&self, chat: i64) -> Option<i64> {
        self.chats.get(&chat).map(|c| c.next - 1)
    }

    /// Classifies a live change of `chat` at `rev`.
    pub fn live(&mut self, chat: i64, rev: i64) -> Live {
        let Some(c) = self.chats.get_mut(&chat) else {
            return Live::NotHere;
        };
        c.known = c.known.max(rev);
        match rev.cmp(&c.next) {
            std::cmp::Ordering::Less => Live::Duplicate,
            std::cmp::Ordering::Equal => Live::Deliver,
            std::cmp::Ordering::Greater => Live::Gap,
        }
    }

    /// The change at `rev` was sent.
    pub fn delivered(&mut self, chat: i64, rev: i64) {
        if let Some(c) = self.chats.get_mut(&chat) {
            c.next = c.next.max(rev + 1);
            c.known = c.known.max(rev);
        }
    }

    /// A backfill page brought the chat up to `rev` (changes superseded within it included).
    pub fn covered(&mut self, chat: i64, rev: i64) {
        if let Some(c) = self.chats.get_mut(&chat) {
            c.next = c.next.max(rev + 1);
        }
    }

    /// Postgres has the chat at `rev` (a nudge from the poller); answers whether it is behind.
    pub fn known(&mut self, chat: i64, rev: i64) -> bool {
        match self.chats.get_mut(&chat) {
            Some(c) => {
                c.known = c.known.max(rev);
                c.next <= c.known
            }
            None => false,
        }
    }

    /// Where a backfill of `chat` starts (the rev after which to read), if it is behind.
    pub fn backfill_from(&self, chat: i64) -> Option<i64> {
        self.chats
            .get(&chat)
            .filter(|c| c.next <= c.known)
            .map(|c| c.next - 1)
    }

    /// Every chat that is behind, ascending.
    pub fn behind(&self) -> Vec<i64> {
        let mut chats: Vec<i64> = self
            .chats
            .iter()
            .filter(|(_, c)| c.next <= c.known)
            .map(|(&id, _)| id)
            .collect();
        chats.sort_unstable();
        chats
    }

    /// A backfill read everything Postgres has (up to `rev`): what the cursor believed beyond
    /// it cannot exist, so the chat is not behind any more.
    pub fn caught_up(&mut self, chat: i64, rev: i64) {
        if let Some(c) = self.chats.get_mut(&chat) {
            c.next = c.next.max(rev + 1);
            c.known = c.next - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_change_is_delivered_and_older_ones_are_duplicates() {
        let mut cursor = Cursor::default();
        cursor.open(1, 5, 5);
        assert_eq!(cursor.live(1, 6), Live::Deliver);
        cursor.delivered(1, 6);
        assert_eq!(cursor.live(1, 6), Live::Duplicate);
        assert_eq!(cursor.live(1, 3), Live::Duplicate);
        assert_eq!(cursor.live(1, 7), Live::Deliver);
        // Until it is sent, the chat is behind by that one.
        assert_eq!(cursor.behind(), vec![1]);
        cursor.delivered(1, 7);
        assert!(cursor.behind().is_empty());
    }

    #[test]
    fn a_change_ahead_is_a_gap_that_keeps_the_chat_behind_until_backfilled() {
        let mut cursor = Cursor::default();
        cursor.open(1, 5, 5);
        assert_eq!(cursor.live(1, 9), Live::Gap);
        assert_eq!(cursor.backfill_from(1), Some(5));
        assert_eq!(cursor.behind(), vec![1]);
        // The backfill delivered 6..=9: the live 9 is now a duplicate.
        cursor.covered(1, 9);
        assert_eq!(cursor.behind(), Vec::<i64>::new());
        assert_eq!(cursor.live(1, 9), Live::Duplicate);
        assert_eq!(cursor.live(1, 10), Live::Deliver);
    }

    #[test]
    fn out_of_order_arrival_is_delivered_once_in_rev_order() {
        // Two writers publish revs 6 and 7; NATS hands 7 over first.
        let mut cursor = Cursor::default();
        cursor.open(1, 5, 5);
        assert_eq!(cursor.live(1, 7), Live::Gap);
        // The backfill reads 6 and 7 from Postgres.
        cursor.delivered(1, 6);
        cursor.delivered(1, 7);
        assert_eq!(cursor.live(1, 6), Live::Duplicate);
        assert!(cursor.behind().is_empty());
    }

    #[test]
    fn a_failed_backfill_leaves_the_chat_behind_so_it_is_retried() {
        let mut cursor = Cursor::default();
        cursor.open(1, 5, 5);
        assert_eq!(cursor.live(1, 8), Live::Gap);
        // The backfill query failed: nothing was delivered, nothing recorded.
        assert_eq!(cursor.behind(), vec![1]);
        assert_eq!(cursor.backfill_from(1), Some(5));
        // Later live changes do not deliver past the hole either.
        assert_eq!(cursor.live(1, 9), Live::Gap);
        cursor.covered(1, 9);
        assert!(cursor.behind().is_empty());
    }

    #[test]
    fn a_nudge_from_the_poller_makes_a_chat_behind_only_if_it_is() {
        let mut cursor = Cursor::default();
        cursor.open(1, 5, 5);
        assert!(!cursor.known(1, 5));
        assert!(cursor.known(1, 6));
        assert!(
            !cursor.known(2, 6),
            "a chat not delivered here is never behind"
        );
    }

    #[test]
    fn opening_owes_the_changes_between_after_and_current() {
        let mut cursor = Cursor::default();
        cursor.open(1, 3, 7);
        assert_eq!(cursor.backfill_from(1), Some(3));
        assert_eq!(cursor.position(1), Some(3));
        // Resume may move a cursor back to replay.
        cursor.open(1, 1, 7);
        assert_eq!(cursor.backfill_from(1), Some(1));
    }

    #[test]
    fn after_removal_nothing_of_the_chat_is_delivered() {
        let mut cursor = Cursor::default();
        cursor.open(1, 5, 5);
        assert!(cursor.close(1));
        assert_eq!(cursor.live(1, 6), Live::NotHere);
        assert!(!cursor.known(1, 7));
        assert_eq!(cursor.backfill_from(1), None);
        assert!(!cursor.close(1));
    }

    #[test]
    fn a_backfill_that_found_nothing_more_stops_being_behind() {
        let mut cursor = Cursor::default();
        cursor.open(1, 5, 5);
        assert!(cursor.known(1, 9));
        cursor.caught_up(1, 7);
        assert!(cursor.behind().is_empty());
        assert_eq!(cursor.live(1, 8), Live::Deliver);
    }
}

#[cfg(test)]
mod properties {
    //! The cursor driven the way a connection drives it, under any arrival order: live changes
    //! of a chat with `n` committed changes arrive shuffled, repeated and with some lost; a gap
    //! is filled from "Postgres" (which has every change); finally the poller's nudge comes.
    //! Whatever happened, the connection sends each rev exactly once, in ascending order.

    use proptest::prelude::*;

    use super::*;

    /// Plays the connection: what it sends, in order.
    fn play(n: i64, arrivals: &[i64]) -> Vec<i64> {
        let mut cursor = Cursor::default();
        let mut sent = Vec::new();
        cursor.open(1, 0, 0);
        let backfill = |cursor: &mut Cursor, sent: &mut Vec<i64>| {
            while let Some(after) = cursor.backfill_from(1) {
                // Postgres has all n; a page of at most 3.
                let page: Vec<i64> = (after + 1..=n).take(3).collect();
                let more = page.last().is_some_and(|&last| last < n);
                for &rev in &page {
                    sent.push(rev);
                    cursor.delivered(1, rev);
                }
                let up_to = page.last().copied().unwrap_or(after);
                if more {
                    cursor.covered(1, up_to);
                } else {
                    cursor.caught_up(1, n.max(up_to));
                }
            }
        };
        for &rev in arrivals {
            match cursor.live(1, rev) {
                Live::Deliver => {
                    sent.push(rev);
                    cursor.delivered(1, rev);
                }
                Live::Gap => backfill(&mut cursor, &mut sent),
                Live::Duplicate | Live::NotHere => {}
            }
        }
        if cursor.known(1, n) {
            backfill(&mut cursor, &mut sent);
        }
        sent
    }

    proptest! {
        #[test]
        fn every_rev_is_sent_once_in_order_whatever_arrives(
            n in 1i64..40,
            arrivals in proptest::collection::vec(1i64..40, 0..80),
        ) {
            let arrivals: Vec<i64> = arrivals.into_iter().filter(|&r| r <= n).collect();
            let sent = play(n, &arrivals);
            prop_assert_eq!(sent, (1..=n).collect::<Vec<i64>>());
        }
    }
}
