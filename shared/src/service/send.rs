//! The send path: one function used by `POST /chat/message` and by the relay's `send` frame, so
//! both get the same seq allocation, deduplication and events.
//!
//! Invariants kept here:
//! - **Gap-free seq and rev.** Both come from the chat's counter row, updated in the same
//!   transaction as the INSERT; the row lock orders every change of the chat, and a rollback
//!   returns the numbers. The membership check is repeated under that lock, so a member removed
//!   while their send waited cannot commit it.
//! - **Idempotency.** `(sender_id, dedup_key)` is unique in Postgres. A replay with the same chat
//!   and text answers the original message (`created: false`); other content is a 409. Concurrent
//!   duplicates: the INSERT's `ON CONFLICT DO NOTHING` waits for the winner, then this transaction
//!   rolls back (returning its seq) and answers the winner's row.
//! - **Files go once.** The attachments a send carries are the sender's checked, unsent
//!   uploads, locked in its transaction and marked sent in it: two sends naming the same file
//!   cannot both carry it.

use sha2::{Digest, Sha256};

use crate::{
    domain::{
        error::{Error, Result},
        model::{MessageOut, Target},
        validate,
    },
    events::Event,
    service::{attachments, state::AppState, write},
    store::{
        attachments as files, blocks, chats, members,
        messages::{self, Inserted, NewMessage},
        users,
    },
};

/// The outcome of a send: the message, and whether this call stored it (false for a replay).
#[derive(Debug)]
pub struct Sent {
    pub message: MessageOut,
    pub created: bool,
}

/// What a sender asks to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub text: &'a str,
    pub dedup_key: Option<&'a str>,
    /// A message of the same chat this one answers.
    pub reply_to: Option<i64>,
    /// The sender's uploads this message carries (`POST /chat/attachments`); with any, the
    /// text may be empty.
    pub attachments: &'a [i64],
    /// Members of the chat the message mentions.
    pub mentions: &'a [i64],
}

pub async fn send_message(
    state: &AppState,
    sender: i64,
    target: Target,
    out: Outgoing<'_>,
) -> Result<Sent> {
    let Outgoing {
        text,
        dedup_key,
        reply_to,
        attachments: file_ids,
        mentions,
    } = out;
    let mentions = validate::mentions(mentions)?;
    // Only a message of files may have no words.
    if !text.is_empty() || file_ids.is_empty() {
        validate::message_text(text)?;
    }
    if let Some(key) = dedup_key {
        validate::dedup_key(key)?;
    }
    state.limits.sends.check(sender)?;
    // Uploads whose bytes were not yet checked are checked now, before any lock is taken.
    attachments::prepare_for_send(state, sender, file_ids).await?;

    // A chat that exists takes its turn before taking a connection (see `gates::ChatGates`).
    let _turn = match target {
        Target::Chat(id) => Some(state.gates.enter(id).await?),
        Target::Recipient(_) => None,
    };
    let mut tx = state.db.begin().await?;
    // The chat, and the other member when this message creates their private chat. A chat
    // named by id is not looked up here: the insert checks membership itself, under the
    // chat's lock, and only a failed send pays for finding out why (one round trip saved on
    // every send).
    let (chat_id, new_peer) = match target {
        Target::Chat(id) => (id, None),
        Target::Recipient(recipient) => {
            if recipient == sender {
                return Err(Error::invalid("recipient_id", "cannot be yourself"));
            }
            if !users::exists(&mut *tx, recipient).await? {
                return Err(Error::NotFound("recipient"));
            }
            if blocks::between(&mut *tx, sender, recipient).await? {
                return Err(Error::blocked());
            }
            let (id, created) = chats::private_between(&mut tx, sender, recipient).await?;
            if created {
                members::add(&mut *tx, id, &[sender, recipient], "member", false).await?;
            }
            (id, created.then_some(recipient))
        }
    };
    let hash = content_hash(chat_id, text, reply_to, file_ids, &mentions);

    if let Some(key) = dedup_key
        && let Some(existing) = messages::by_dedup_key(&mut *tx, sender, key).await?
    {
        tx.rollback().await?;
        return replay(existing, chat_id, &hash);
    }

    // Only a member takes the chat's lock: a stranger's send is refused without touching it.
    let Some(position) = messages::take_seq(&mut *tx, chat_id, sender).await? else {
        return Err(Error::NotFound("chat"));
    };
    // Under the chat's lock, so no one mentioned leaves before the message commits.
    if !mentions.is_empty() {
        let strangers = members::not_among(&mut *tx, chat_id, &mentions).await?;
        if !strangers.is_empty() {
            tx.rollback().await?;
            return Err(Error::invalid(
                "mentions",
                format!("{strangers:?} are not members of the chat"),
            ));
        }
    }
    let carried: Vec<_> = attachments::lock_for_send(&mut tx, sender, file_ids)
        .await?
        .iter()
        .map(files::Attachment::out)
        .collect();
    let new = NewMessage {
        chat_id,
        sender_id: sender,
        text,
        dedup_key,
        content_hash: &hash,
        reply_to,
        attachments: &carried,
        mentions: &mentions,
    };
    let Some(Inserted {
        message,
        marker,
        marker_hidden,
    }) = messages::insert(&mut *tx, &new, position).await?
    else {
        // Not a member (or no longer: removed while this send waited for the chat), a private
        // chat closed by a block, a reply to a message of another chat, or a concurrent send
        // with this key that committed first.
        // Ours must not take a seq or a rev, and the answer says which it was.
        tx.rollback().await?;
        return why_not_sent(state, sender, chat_id, dedup_key, reply_to, &hash).await;
    };
    if !file_ids.is_empty() {
        files::mark_sent(&mut tx, file_ids, chat_id, message.id).await?;
    }
    let member_revs = match new_peer {
        Some(peer) => users::bump_member_revs(&mut *tx, &[sender, peer]).await?,
        None => Vec::new(),
    };
    let (seq, rev) = position;
    let mut events = Vec::with_capacity(4);
    // A new private chat: both members get it from its first message (they joined at rev 0).
    for (user_id, member_rev) in member_revs {
        events.push(Event::ChatAdded {
            user_id,
            chat_id,
            rev: 0,
            member_rev,
        });
    }
    events.push(Event::MessageCreated {
        chat_id,
        rev,
        seq,
        message: message.clone(),
    });
    // Every marker move is published, this one too: a reply can make earlier messages "read".
    if let Some(last_read_seq) = marker {
        events.push(Event::MessageRead {
            chat_id,
            user_id: sender,
            last_read_seq,
            rev,
            hidden: marker_hidden,
        });
    }
    write::commit(state, tx, events).await?;
    metrics::counter!("windi_messages_sent_total").increment(1);
    Ok(Sent {
        message,
        created: true,
    })
}

/// Why an insert stored nothing, found after its rollback (the rare path). A concurrent send
/// with the same key that committed first is a replay like any other: its message is the answer.
async fn why_not_sent(
    state: &AppState,
    sender: i64,
    chat_id: i64,
    dedup_key: Option<&str>,
    reply_to: Option<i64>,
    hash: &[u8],
) -> Result<Sent> {
    if let Some(key) = dedup_key
        && let Some(existing) = messages::by_dedup_key(&state.db, sender, key).await?
    {
        metrics::counter!("windi_dedup_races_total").increment(1);
        return replay(existing, chat_id, hash);
    }
    let found = async {
        if chats::for_member(&state.db, chat_id, sender)
            .await?
            .is_none()
        {
            return Ok(Error::NotFound("chat"));
        }
        if blocks::in_private_chat(&state.db, chat_id).await? {
            return Ok(Error::blocked());
        }
        Ok::<_, Error>(match reply_to {
            Some(reply_to) => {
                Error::invalid("reply_to", format!("no message {reply_to} in this chat"))
            }
            None => Error::Internal("insert stored nothing for a member".into()),
        })
    };
    Err(found.await.unwrap_or_else(|e| e))
}

/// A stored message found under the same key: the original if the content matches, else 409.
fn replay(
    (message, stored_hash): (MessageOut, Vec<u8>),
    chat_id: i64,
    hash: &[u8],
) -> Result<Sent> {
    if message.chat_id == chat_id && stored_hash == hash {
        metrics::counter!("windi_dedup_replays_total").increment(1);
        Ok(Sent {
            message,
            created: false,
        })
    } else {
        metrics::counter!("windi_dedup_conflicts_total").increment(1);
        Err(Error::Conflict {
            code: "dedup_conflict",
            detail: format!(
                "dedup_key: already used for message {} with a different chat or text",
                message.id
            ),
        })
    }
}

/// sha256(chat_id ‖ text [‖ reply_to] [‖ attachments]): equal only for the same text in the
/// same chat, as a reply to the same message, with the same files. A message with neither
/// hashes as before replies existed, so keys stored then still replay.
fn content_hash(
    chat_id: i64,
    text: &str,
    reply_to: Option<i64>,
    files: &[i64],
    mentions: &[i64],
) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(chat_id.to_be_bytes());
    hasher.update(text.as_bytes());
    if let Some(reply_to) = reply_to {
        hasher.update(b"\0reply_to");
        hasher.update(reply_to.to_be_bytes());
    }
    if !files.is_empty() {
        hasher.update(b"\0attachments");
        for id in files {
            hasher.update(id.to_be_bytes());
        }
    }
    // Only when there are some: the hashes of messages without stay as they were stored.
    if !mentions.is_empty() {
        hasher.update(b"\0mentions");
        for id in mentions {
            hasher.update(id.to_be_bytes());
        }
    }
    hasher.finalize().to_vec()
}
