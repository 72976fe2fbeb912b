//! Presence: who is online, away or offline, and when they were last seen (issue 21).
//!
//! Pure: the rules that turn what is stored into what a viewer is shown. Where it is stored and
//! how it moves: `store::presence` (rows per relay, kept alive by heartbeats) and the relay's
//! `presence` module (connections counted per user, changes batched per connection).
//!
//! A user is **online** while at least one of their devices holds a relay connection on a live
//! relay, **away** when online and their client said so, **offline** otherwise. A relay is
//! live while its heartbeat is younger than [`EXPIRY`]: a relay that dies leaves no one online
//! for longer than that.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How often a relay writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a relay's connections count after its last heartbeat: three missed beats. The
/// bound on how long a dead relay's users still read as online.
pub const EXPIRY: Duration = Duration::from_secs(15);
/// The most often a connection gets a `presence` frame: changes in between are gathered into
/// the next one, the latest state of each user only.
pub const FRAME_EVERY: Duration = Duration::from_secs(2);
/// Most users one `GET /users/presence` may ask about.
pub const MAX_IDS: usize = 200;

/// What a viewer is shown of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Away,
    Offline,
}

/// One user's presence as `GET /users/presence`, `/chat/list` and `presence` frames show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Presence {
    pub user_id: i64,
    pub status: Status,
    /// When they were last online: now while they are, null if never (or not shown).
    pub last_seen: Option<DateTime<Utc>>,
}

/// Who may see a user's presence: everyone they share a chat with, or nobody (then they see
/// no one's either, as in most messengers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    #[default]
    Contacts,
    Nobody,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Contacts => "contacts",
            Self::Nobody => "nobody",
        }
    }

    /// From the column (`users.presence_visibility`, checked there to be one of the two).
    pub fn from_column(text: &str) -> Self {
        match text {
            "nobody" => Self::Nobody,
            _ => Self::Contacts,
        }
    }
}

/// Query of `GET /users/presence`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PresenceQuery {
    /// User ids, comma-separated: `ids=1,2,3` (at least one, at most 200; a repeat counts
    /// once).
    #[param(
        example = "2,3",
        min_length = 1,
        pattern = "^[1-9][0-9]{0,17}(,[1-9][0-9]{0,17}){0,199}$"
    )]
    pub ids: String,
}

/// The answer of `GET /users/presence`: the users asked about whom the caller may see, in the
/// order asked; people they share no chat with, and anyone hiding theirs, are left out.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PresenceList {
    pub presence: Vec<Presence>,
}

/// A user's privacy settings (`GET`/`PATCH /users/me/privacy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Privacy {
    /// Who sees their presence: `contacts` (everyone they share a chat with, the default) or
    /// `nobody` (then they see no one's, and no one their last seen time).
    #[sqlx(try_from = "String")]
    pub presence: Visibility,
    /// Whether they send read receipts (default true); off, they see no one's either.
    /// Delivered receipts are sent regardless.
    pub read_receipts: bool,
}

/// `PATCH /users/me/privacy`: a field left out stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivacyPatch {
    pub presence: Option<Visibility>,
    pub read_receipts: Option<bool>,
}

impl From<String> for Visibility {
    fn from(text: String) -> Self {
        Self::from_column(&text)
    }
}

/// What is stored of a user's presence, read at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub user_id: i64,
    /// Whether some live relay holds a connection of theirs.
    pub connected: bool,
    /// Their client said "away".
    pub away: bool,
    /// When their last connection ended (or the relay holding it last beat), if ever.
    pub last_seen: Option<DateTime<Utc>>,
}

/// What `viewer_visibility`'s holder is shown of `stored`, whose owner chose `visibility`:
/// nothing when either chose nobody.
pub fn shown(
    stored: Stored,
    visibility: Visibility,
    viewer_visibility: Visibility,
    now: DateTime<Utc>,
) -> Option<Presence> {
    if visibility == Visibility::Nobody || viewer_visibility == Visibility::Nobody {
        return None;
    }
    let (status, last_seen) = match (stored.connected, stored.away) {
        (true, false) => (Status::Online, Some(now)),
        (true, true) => (Status::Away, Some(now)),
        (false, _) => (Status::Offline, stored.last_seen),
    };
    Some(Presence {
        user_id: stored.user_id,
        status,
        last_seen,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stored(connected: bool, away: bool) -> Stored {
        Stored {
            user_id: 7,
            connected,
            away,
            last_seen: Some(DateTime::from_timestamp(1_000, 0).unwrap()),
        }
    }

    #[test]
    fn online_away_and_offline_with_last_seen_and_nobody_sees_nothing() {
        let now = DateTime::from_timestamp(2_000, 0).unwrap();
        let (c, n) = (Visibility::Contacts, Visibility::Nobody);
        let show = |s, v, w| shown(s, v, w, now).map(|p| (p.status, p.last_seen));
        assert_eq!(
            show(stored(true, false), c, c),
            Some((Status::Online, Some(now)))
        );
        assert_eq!(
            show(stored(true, true), c, c),
            Some((Status::Away, Some(now)))
        );
        let offline = show(stored(false, true), c, c).unwrap();
        assert_eq!(offline.0, Status::Offline, "away only while online");
        assert_eq!(offline.1.unwrap().timestamp(), 1_000);
        assert_eq!(show(stored(true, false), n, c), None, "hidden by its owner");
        assert_eq!(show(stored(true, false), c, n), None, "hiding sees no one");
    }
}
