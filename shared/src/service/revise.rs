//! Changes to messages that exist: edit, delete, react, pin. Each is one change of the chat, with
//! the chat's next rev, recorded in `chat_changes` and published as `message.updated`.
//!
//! Every change here runs the same way: the caller's standing is checked without a lock (so
//! strangers and the unauthorised never touch the chat's row), then the chat's next rev is
//! taken (its row lock orders the change among all others of the chat), then the message is
//! read again under that lock and checked again, since a deletion or a removal may have
//! committed while this change waited. A request that changes nothing rolls back: it takes no
//! rev and publishes nothing, and answers the message as it stands.
//!
//! A private chat closed by a block (either way) takes no new words from either side, as for
//! sends: edits and reactions answer 403 `blocked`. Taking words back stays open: either may
//! still delete their own messages and remove their own reactions.

use ::http::StatusCode;
use sqlx::{Postgres, Transaction};

use crate::{
    domain::{
        error::{Error, Result},
        model::{MAX_PINS, MAX_REACTIONS, MessageOut},
        validate,
    },
    events::Event,
    service::{gates::Pass, state::AppState, write},
    store::{
        attachments, chats,
        messages::{self, Subject},
    },
};

/// New text for the caller's own message.
pub async fn edit(
    state: &AppState,
    user_id: i64,
    message_id: i64,
    text: &str,
) -> Result<MessageOut> {
    validate::message_text(text)?;
    let allowed = |s: &Subject| {
        if s.sender_id != user_id {
            return Err(forbidden(
                "not_sender",
                "only the sender can edit a message",
            ));
        }
        takes_words(s)
    };
    let (mut tx, subject, rev, _turn) = begin(state, message_id, user_id, allowed).await?;
    if subject.text == text {
        return unchanged(state, tx, message_id, user_id).await;
    }
    let message = messages::edit(&mut *tx, message_id, rev, user_id, text).await?;
    commit(state, tx, "edited", message).await
}

/// Turns a message into its tombstone. The sender may; in a group, so may the owner.
pub async fn delete(state: &AppState, user_id: i64, message_id: i64) -> Result<MessageOut> {
    let allowed = |s: &Subject| {
        if s.sender_id == user_id || (s.is_group && s.role == "owner") {
            Ok(())
        } else {
            Err(forbidden(
                "not_allowed",
                "only the sender (or a group's owner) can delete a message",
            ))
        }
    };
    let (mut tx, subject, rev, _turn) = begin(state, message_id, user_id, allowed).await?;
    if subject.deleted {
        return unchanged(state, tx, message_id, user_id).await;
    }
    let message = messages::tombstone(&mut *tx, message_id, rev, user_id).await?;
    // Its files leave reach with it; pruning removes their bytes later.
    attachments::mark_deleted_with_message(&mut *tx, message_id).await?;
    commit(state, tx, "deleted", message).await
}

/// Adds the caller's reaction. Any member may react to a message that is not deleted; a 21st
/// distinct emoji is refused with 409 `too_many_reactions`.
pub async fn react(
    state: &AppState,
    user_id: i64,
    message_id: i64,
    emoji: &str,
) -> Result<MessageOut> {
    validate::emoji(emoji)?;
    let allowed = takes_words;
    let (mut tx, _, rev, _turn) = begin(state, message_id, user_id, allowed).await?;
    if !messages::add_reaction(&mut *tx, message_id, user_id, emoji).await? {
        return unchanged(state, tx, message_id, user_id).await;
    }
    // Counted under the chat's lock, so concurrent reactions cannot pass the cap together.
    if messages::reaction_kinds(&mut *tx, message_id).await? > MAX_REACTIONS as i64 {
        tx.rollback().await?;
        return Err(Error::Conflict {
            code: "too_many_reactions",
            detail: format!(
                "emoji: a message carries at most {MAX_REACTIONS} different reactions; \
                 add to one of those"
            ),
        });
    }
    let message =
        messages::refresh_reactions(&mut *tx, message_id, rev, user_id, "reaction_added").await?;
    commit(state, tx, "reaction_added", message).await
}

/// Removes the caller's reaction; without one (or on a deleted message) nothing changes.
pub async fn unreact(
    state: &AppState,
    user_id: i64,
    message_id: i64,
    emoji: &str,
) -> Result<MessageOut> {
    validate::emoji(emoji)?;
    let (mut tx, _, rev, _turn) = begin(state, message_id, user_id, |_| Ok(())).await?;
    if !messages::remove_reaction(&mut *tx, message_id, user_id, emoji).await? {
        return unchanged(state, tx, message_id, user_id).await;
    }
    let message =
        messages::refresh_reactions(&mut *tx, message_id, rev, user_id, "reaction_removed").await?;
    commit(state, tx, "reaction_removed", message).await
}

/// Pins or unpins a message (`pin`). In a group only the owner may (windi's groups have no
/// other admin role); in a private chat either member. A deleted message cannot be pinned; a
/// pin past [`MAX_PINS`] is refused with 409 `too_many_pins`. Pinning a pinned message (or
/// unpinning one that is not) changes nothing.
pub async fn pin(state: &AppState, user_id: i64, message_id: i64, pin: bool) -> Result<MessageOut> {
    let allowed = |s: &Subject| {
        if s.is_group && s.role != "owner" {
            return Err(forbidden(
                "not_allowed",
                "only a group's owner can pin or unpin its messages",
            ));
        }
        if pin && s.deleted {
            return Err(deleted());
        }
        Ok(())
    };
    let (mut tx, subject, rev, _turn) = begin(state, message_id, user_id, allowed).await?;
    if subject.pinned == pin {
        return unchanged(state, tx, message_id, user_id).await;
    }
    // Counted under the chat's lock, so concurrent pins cannot pass the cap together.
    if pin && messages::pinned_count(&mut *tx, subject.chat_id).await? >= MAX_PINS as i64 {
        tx.rollback().await?;
        return Err(Error::Conflict {
            code: "too_many_pins",
            detail: format!("message: a chat has at most {MAX_PINS} pinned messages; unpin one"),
        });
    }
    let message = messages::set_pinned(&mut *tx, message_id, rev, user_id, pin).await?;
    commit(state, tx, if pin { "pinned" } else { "unpinned" }, message).await
}

/// Checks the caller, takes the chat's next rev, and checks again under its lock.
async fn begin(
    state: &AppState,
    message_id: i64,
    user_id: i64,
    allowed: impl Fn(&Subject) -> Result<()>,
) -> Result<(Transaction<'static, Postgres>, Subject, i64, Pass)> {
    // Edits, deletions and reactions draw on the same per-user budget as sends.
    state.limits.sends.check(user_id)?;
    let before = messages::subject(&state.db, message_id, user_id, false)
        .await?
        .ok_or(Error::NotFound("message"))?;
    allowed(&before)?;
    let turn = state.gates.enter(before.chat_id).await?;
    let mut tx = state.db.begin().await?;
    let rev = chats::take_revs(&mut *tx, before.chat_id, 1).await?;
    let now = messages::subject(&mut *tx, message_id, user_id, true)
        .await?
        .ok_or(Error::NotFound("message"))?;
    allowed(&now)?;
    Ok((tx, now, rev, turn))
}

/// A no-op: hands the rev back and answers the message as it stands.
async fn unchanged(
    state: &AppState,
    tx: Transaction<'static, Postgres>,
    message_id: i64,
    user_id: i64,
) -> Result<MessageOut> {
    tx.rollback().await?;
    messages::for_member(&state.db, message_id, user_id)
        .await?
        .ok_or(Error::NotFound("message"))
}

async fn commit(
    state: &AppState,
    tx: Transaction<'static, Postgres>,
    change: &str,
    message: MessageOut,
) -> Result<MessageOut> {
    let updated = Event::MessageUpdated {
        chat_id: message.chat_id,
        rev: message.rev,
        change: change.to_owned(),
        message: message.clone(),
    };
    write::commit(state, tx, vec![updated]).await?;
    Ok(message)
}

fn forbidden(code: &'static str, detail: &str) -> Error {
    Error::Rejected {
        status: StatusCode::FORBIDDEN,
        code,
        detail: detail.to_owned(),
    }
}

/// Whether a message can take new words (an edit, a reaction): not deleted, and not in a
/// private chat closed by a block.
fn takes_words(s: &Subject) -> Result<()> {
    if s.deleted {
        Err(deleted())
    } else if s.blocked {
        Err(Error::blocked())
    } else {
        Ok(())
    }
}

fn deleted() -> Error {
    Error::Conflict {
        code: "deleted",
        detail: "message: was deleted; it can no longer change".into(),
    }
}
