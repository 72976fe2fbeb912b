//! The shapes the API speaks: request bodies, answers, and the limits that bound them.
//!
//! Field names follow the seed project, so a client written for it keeps working.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::error::{Error, Result};
use crate::domain::whole;

/// Longest message text, in Unicode scalar values (the same bound as Telegram's).
pub const MAX_TEXT_CHARS: usize = 4096;
/// Longest user or group name, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 100;
/// Longest email address (RFC 5321 path limit).
pub(crate) const MAX_EMAIL_CHARS: usize = 254;
/// Password length bounds. The minimum is an operator's setting (`PASSWORD_MIN_LENGTH`, see
/// [`crate::domain::validate::PasswordRules`]): 8 by default, NIST SP 800-63B's minimum, and never
/// below 6, so no setting switches the check off while the seed project's own examples (`secret`)
/// can still run as written. The maximum keeps one hash cheap enough that long inputs cannot be
/// used to burn CPU.
pub(crate) const DEFAULT_MIN_PASSWORD_CHARS: usize = 8;
pub(crate) const MIN_PASSWORD_CHARS_FLOOR: usize = 6;
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Search: shortest and longest `q`, default and largest page.
pub const MIN_SEARCH_CHARS: usize = 2;
pub const MAX_SEARCH_CHARS: usize = 100;
pub const DEFAULT_SEARCH_LIMIT: i64 = 20;
pub const MAX_SEARCH_LIMIT: i64 = 50;
/// Longest idempotency key.
pub(crate) const MAX_DEDUP_KEY_CHARS: usize = 128;
/// Largest group, creator included.
pub const MAX_GROUP_MEMBERS: usize = 1000;
/// Page sizes of history and the chat list.
pub(crate) const DEFAULT_PAGE: i64 = 100;
pub(crate) const MAX_PAGE: i64 = 200;
/// Largest request body any route accepts. A 4096-character message is at most 16 KiB of UTF-8.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest reaction, in bytes of UTF-8: room for any emoji sequence (flags, skin tones, ZWJ
/// families), not for a sentence.
pub(crate) const MAX_EMOJI_BYTES: usize = 32;
/// Members one message may mention.
pub const MAX_MENTIONS: usize = 50;
/// Distinct reactions one message can carry; the next new one is refused with 409.
pub(crate) const MAX_REACTIONS: usize = 20;
/// Pinned messages per chat: a pin past it is refused (409 `too_many_pins`).
pub const MAX_PINS: usize = 50;
/// Reactors listed per reaction in [`Reaction::user_ids`]; `count` stays exact beyond it.
pub const MAX_REACTORS_LISTED: usize = 100;

/// A stored message, as every route and event shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct MessageOut {
    pub id: i64,
    pub chat_id: i64,
    /// Position in the chat: 1, 2, 3 … with no gaps. Order by this, never by `timestamp`.
    pub seq: i64,
    pub sender_id: i64,
    pub text: String,
    /// When the message was committed (UTC, RFC 3339).
    pub timestamp: DateTime<Utc>,
    /// True once every member other than the sender has read up to this message.
    pub read: bool,
    /// The sender's idempotency key, if the send carried one.
    pub dedup_key: Option<String>,
    /// The chat's rev of this message's latest change (creation, edit, deletion, reaction).
    pub rev: i64,
    /// When the text was last edited; null if never.
    pub edited_at: Option<DateTime<Utc>>,
    /// A deleted message is a tombstone: same id and seq, empty text, no reactions.
    pub deleted: bool,
    /// The message of the same chat this one replies to.
    pub reply_to: Option<i64>,
    /// One entry per emoji, in the order they were first used.
    #[sqlx(json)]
    pub reactions: Vec<Reaction>,
    /// The files sent with the message, in the order the sender listed them; empty once the
    /// message is deleted. Absent in what older servers stored, hence the default.
    #[sqlx(json)]
    #[serde(default)]
    pub attachments: Vec<AttachmentOut>,
    /// The members this message mentions (`@`), in the order the sender listed them, each
    /// once; empty once the message is deleted. The text keeps its own form of the names.
    #[serde(default)]
    pub mentions: Vec<i64>,
    /// When the message was pinned in its chat; null when it is not pinned.
    #[serde(default)]
    pub pinned_at: Option<DateTime<Utc>>,
}

/// A file sent with a message. The bytes are fetched through `GET /chat/attachments/{id}`
/// (members of the chat only), the thumbnail through the `thumbnail` path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttachmentOut {
    pub id: i64,
    /// Made safe: no path, no control characters, at most 255 bytes.
    #[schema(example = "photo.jpg")]
    pub filename: String,
    #[schema(example = "image/jpeg")]
    pub content_type: String,
    /// In bytes.
    pub size: i64,
    /// Pixels, for images (as shown, after their EXIF orientation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i32>,
    /// For images: the path of a JPEG thumbnail at most 320 pixels on a side, on this API
    /// (`/chat/attachments/{id}/thumbnail`, authenticated like the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "/chat/attachments/7/thumbnail")]
    pub thumbnail: Option<String>,
}

/// One emoji on a message and who used it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Reaction {
    #[schema(example = "👍")]
    pub emoji: String,
    pub count: i64,
    /// The reactors, earliest first; complete up to 100 (`count` is always exact).
    pub user_ids: Vec<i64>,
}

/// `POST /chat/message`. Exactly one of `recipient_id` (a private chat, created on the first
/// message) and `chat_id` (any chat the sender belongs to).
#[derive(Debug, Deserialize, ToSchema)]
pub struct SendMessage {
    #[serde(default, deserialize_with = "whole::option")]
    pub recipient_id: Option<i64>,
    #[serde(default, deserialize_with = "whole::option")]
    pub chat_id: Option<i64>,
    /// 1–4096 characters, not blank, no NUL; may be empty (or left out) when the message
    /// carries attachments.
    #[schema(example = "Привет, как дела?", max_length = 4096)]
    #[serde(default)]
    pub text: String,
    /// Idempotency key, scoped to the sender; the `Idempotency-Key` header works too.
    #[schema(min_length = 1, max_length = 128)]
    pub dedup_key: Option<String>,
    /// A message of the same chat this one answers.
    #[serde(default, deserialize_with = "whole::option")]
    pub reply_to: Option<i64>,
    /// Ids of the sender's uploads (`POST /chat/attachments`) to send with the message, at
    /// most 10, each once; their bytes must have been uploaded.
    #[serde(default, deserialize_with = "whole::list")]
    pub attachments: Vec<i64>,
    /// Members of the chat this message mentions (`@`), at most 50; anyone else is a 422.
    /// A repeated id counts once.
    #[serde(default, deserialize_with = "whole::list")]
    pub mentions: Vec<i64>,
}

/// `POST /chat/attachments`: what the client is about to upload.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NewAttachment {
    /// Shown to the chat and used when saving; made safe (see [`AttachmentOut::filename`]).
    #[schema(example = "photo.jpg")]
    pub filename: String,
    /// The type of the bytes (`type/subtype`; parameters such as `; charset=…` are accepted
    /// and dropped); checked against them after upload.
    #[schema(
        example = "image/jpeg",
        max_length = 127,
        pattern = r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$"
    )]
    pub content_type: String,
    /// The exact size in bytes, 1 to 25 MiB.
    #[schema(example = 48213, minimum = 1, maximum = 26_214_400)]
    #[serde(deserialize_with = "whole::one")]
    pub size: i64,
}

/// The answer to `POST /chat/attachments`: where to PUT the bytes, until `expires_at`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttachmentUpload {
    /// What to pass in `attachments` when sending.
    pub id: i64,
    pub upload: UploadLink,
    pub expires_at: DateTime<Utc>,
}

/// A request the client makes with the bytes as its body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UploadLink {
    #[schema(example = "PUT")]
    pub method: String,
    pub url: String,
    /// Headers to send with it (the declared `Content-Type`).
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Where a message goes: what [`SendMessage`]'s two optional fields (and the relay's `send`
/// frame's) say once read. A rule without I/O, so it lives with the shapes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The private chat with this user, created on the first message.
    Recipient(i64),
    /// Any chat the sender is a member of.
    Chat(i64),
}

impl Target {
    /// From the request's two optional fields, exactly one of which must be set.
    pub fn from_fields(recipient_id: Option<i64>, chat_id: Option<i64>) -> Result<Self> {
        match (recipient_id, chat_id) {
            (Some(r), None) => Ok(Self::Recipient(r)),
            (None, Some(c)) => Ok(Self::Chat(c)),
            (Some(_), Some(_)) => Err(Error::invalid(
                "recipient_id",
                "give either recipient_id or chat_id, not both",
            )),
            (None, None) => Err(Error::invalid(
                "recipient_id",
                "one of recipient_id or chat_id is required",
            )),
        }
    }
}

/// `PATCH /chat/message/{id}`: the new text, under the same rules as a send.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EditMessage {
    #[schema(example = "Привет! (исправлено)", min_length = 1, max_length = 4096)]
    pub text: String,
}

/// One change of a chat, as `GET /chat/changes/{chat_id}` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    pub rev: i64,
    /// `message` (a new message), `message_updated` (edited, deleted, a reaction added or
    /// removed) or `member` (joined or left).
    #[serde(rename = "type")]
    #[schema(example = "message")]
    pub kind: String,
    pub chat_id: i64,
    /// For `message_updated`: `edited`, `deleted`, `reaction_added`, `reaction_removed`,
    /// `pinned`, `unpinned`; for `member`: `joined` or `left`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// For `member`: who joined or left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    /// For `member`: their name now (so a client can show a member it shares no other chat
    /// with).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For message changes: the message in its current state (a later change of the same
    /// message may already show in it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageOut>,
}

/// A page of changes. Apply `changes` in order, then you are up to date with `rev`; if `more`,
/// ask again with `after_rev = rev`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChangesPage {
    pub changes: Vec<Change>,
    pub rev: i64,
    pub more: bool,
}

/// Query of `GET /chat/changes/{chat_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChangesQuery {
    /// The rev you have applied (0 for none): the page starts after it.
    #[param(minimum = 0)]
    pub after_rev: Option<i64>,
    /// Page size, 1–200 (default 100).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterUser {
    /// Trimmed; not blank, no control characters.
    #[schema(
        example = "Alice",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// An address with one `@` and a dot in its domain, at most 254 characters.
    #[schema(example = "alice@example.com", format = Email, max_length = 254)]
    pub email: String,
    /// At least `PASSWORD_MIN_LENGTH` characters (8 unless the operator chose otherwise, never
    /// fewer than 6; the served contract states the operator's value), at most 1 KiB.
    #[schema(example = "correct horse battery", min_length = 8, max_length = 1024)]
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct UserOut {
    pub id: i64,
    pub name: String,
    pub email: String,
}

/// The caller's own profile.
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Me {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

/// `POST /auth/login`, as an OAuth2 password form (`username` is the email) or as JSON.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginForm {
    /// The email address. JSON bodies may call it `email`.
    #[serde(alias = "email")]
    #[schema(example = "alice@example.com")]
    pub username: String,
    #[schema(example = "correct horse battery")]
    pub password: String,
}

/// What a login or a refresh answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenOut {
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: String,
    /// Seconds until the access token expires; refresh before then.
    pub expires_in: u64,
    /// Opaque and single-use: `POST /auth/refresh` exchanges it for a new pair. Presenting one
    /// that was already used ends the session (it was copied).
    pub refresh_token: String,
}

/// `POST /auth/refresh`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshIn {
    pub refresh_token: String,
}

/// One live session of the caller, as `GET /auth/sessions` lists it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionOut {
    pub id: i64,
    /// When the login happened.
    pub created_at: DateTime<Utc>,
    /// The last refresh or request (kept to the minute).
    pub last_used_at: DateTime<Utc>,
    /// What the client said it was at login.
    pub user_agent: Option<String>,
    /// True for the session of the token that asked.
    pub current: bool,
}

/// `PATCH /auth/me`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateMe {
    #[schema(example = "Alice Smith", min_length = 1, max_length = 100)]
    pub name: String,
}

/// `POST /auth/password`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePassword {
    pub current_password: String,
    /// At least `PASSWORD_MIN_LENGTH` characters (8 unless the operator chose otherwise, never
    /// fewer than 6; the served contract states the operator's value), at most 1 KiB.
    #[schema(min_length = 8, max_length = 1024)]
    pub new_password: String,
}

/// `DELETE /auth/me`: the password again, so a stolen token alone cannot delete an account.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DeleteMe {
    pub password: String,
}

/// Query of `GET /users/search`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// 2–100 characters: the start of any word of a name (case-insensitive), or an exact email.
    #[param(min_length = 2, max_length = 100)]
    pub q: String,
    /// Page size, 1–50 (default 20).
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<i64>,
}

/// Someone found by search or listed as blocked: never their email.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct PersonOut {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateGroup {
    /// Trimmed; not blank, no control characters.
    #[schema(
        example = "Project Team",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// Members besides the creator, who is always included.
    #[schema(example = json!([2, 3]), max_items = 1000)]
    #[serde(deserialize_with = "whole::list")]
    pub participant_ids: Vec<i64>,
}

/// A group as the group routes answer it (the seed's shape; `id` and `chat_id` are the same).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupOut {
    pub id: i64,
    pub name: String,
    pub creator_id: i64,
    pub chat_id: i64,
    /// Every member, the creator included, ascending.
    pub participant_ids: Vec<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AddMembers {
    #[schema(example = json!([4]), min_items = 1, max_items = 1000)]
    #[serde(deserialize_with = "whole::list")]
    pub user_ids: Vec<i64>,
}

/// One chat of `GET /chat/list`, as the caller sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatSummary {
    pub id: i64,
    /// `private` or `group`.
    pub kind: String,
    /// The group's name, or for a private chat the other member's name.
    pub name: Option<String>,
    pub creator_id: i64,
    /// The caller's role: `owner` or `member`.
    pub role: String,
    pub member_ids: Vec<i64>,
    /// The members with their display names, in `member_ids` order.
    pub members: Vec<Member>,
    /// Seq of the newest message (0 for none).
    pub last_seq: i64,
    /// The chat's revision: how many changes it has had. Catch up from here with
    /// `GET /chat/changes/{id}?after_rev=` or a relay `resume` by `revs`.
    pub rev: i64,
    /// How far the caller has read.
    pub last_read_seq: i64,
    /// Messages after the caller's marker that others sent and nobody deleted.
    pub unread_count: i64,
    /// Of those, the ones that mention the caller.
    #[serde(default)]
    pub unread_mentions: i64,
    pub last_message: Option<MessageOut>,
    pub created_at: DateTime<Utc>,
    /// The caller's notification settings for this chat.
    #[serde(default)]
    pub settings: ChatSettings,
    /// In `/chat/list`, for a private chat: the other member's presence, when both let
    /// contacts see it; null otherwise (and in the relay's `chat` frames).
    #[serde(default)]
    pub presence: Option<crate::domain::presence::Presence>,
}

/// A member's notification settings for one chat (`PATCH /chat/{chat_id}/settings`). What the
/// notifications respect; every client of the member shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChatSettings {
    /// Muted until this time (RFC 3339), `"forever"`, or null (not muted; a time past reads
    /// as null).
    #[schema(value_type = Option<String>, example = "forever")]
    pub muted_until: Option<MutedUntil>,
    pub notify: Notify,
}

/// How long a chat is muted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutedUntil {
    Forever,
    Until(DateTime<Utc>),
}

impl Serialize for MutedUntil {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Forever => s.serialize_str("forever"),
            Self::Until(at) => at.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for MutedUntil {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "forever" {
            return Ok(Self::Forever);
        }
        DateTime::parse_from_rfc3339(&text)
            .map(|at| Self::Until(at.with_timezone(&Utc)))
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "muted_until: {text:?} is neither an RFC 3339 time nor \"forever\""
                ))
            })
    }
}

/// Which messages of a chat notify the member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Notify {
    /// Every message.
    #[default]
    All,
    /// Only messages that mention them.
    Mentions,
    /// None.
    None,
}

impl Notify {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Mentions => "mentions",
            Self::None => "none",
        }
    }

    /// From the column (`chat_members.notify`, checked there to be one of the three).
    pub fn from_column(text: &str) -> Self {
        match text {
            "mentions" => Self::Mentions,
            "none" => Self::None,
            _ => Self::All,
        }
    }
}

/// `PATCH /chat/{chat_id}/settings`: what to change; a field left out stays as it is, a null
/// `muted_until` unmutes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatSettingsPatch {
    /// An RFC 3339 time, `"forever"`, or null to unmute. A time already past unmutes too: a
    /// mute "until 09:00" sent at 09:00:01 is over, not an error.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = muted_until_schema, example = "2026-12-31T09:00:00Z")]
    pub muted_until: Option<Option<MutedUntil>>,
    #[serde(default)]
    pub notify: Option<Notify>,
}

/// `muted_until`'s schema: a date-time, the word `"forever"`, or null (what
/// [`MutedUntil`]'s reader takes, so a fuzzer's date-time is a valid patch).
fn muted_until_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["forever"])),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build()
        .into()
}

/// A field that is present (maybe null) is `Some`; an absent one stays `None` by `default`.
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A chat member as clients show them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub id: i64,
    pub name: String,
}

/// Query of `GET /chat/history/{chat_id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Page size, 1–200 (default 100).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// Messages to skip from the oldest (the seed's paging). Not combined with the seq cursors.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// Only messages with a smaller seq; without `after_seq`, the page ends just before it
    /// (scrolling back).
    #[param(minimum = 0)]
    pub before_seq: Option<i64>,
    /// Only messages with a greater seq; the page starts just after it (catching up).
    #[param(minimum = 0)]
    pub after_seq: Option<i64>,
    /// `me`: only the messages that mention the caller (deleted ones mention no one), paged by
    /// the same cursors. Not with `offset`.
    #[param(example = "me")]
    pub mentions: Option<String>,
}

/// Query of `GET /chat/search`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageSearchQuery {
    /// What to find: words (case and diacritics ignored, `ё` finds `е`), `"quoted phrases"`,
    /// `-excluded` words or phrases; the last plain word of two letters or more also finds
    /// words that start with it. At most 200 characters and 12 terms.
    #[param(
        example = "deploy \"build is green\" -lunch tom",
        min_length = 1,
        max_length = 200
    )]
    pub q: String,
    /// Only this chat (404 if the caller is not a member).
    pub chat_id: Option<i64>,
    /// Hits per page, 1–50 (default 20).
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<i64>,
    /// The previous page's `next`: only messages older than it.
    #[param(minimum = 1)]
    pub before: Option<i64>,
}

/// A page of `GET /chat/search`: newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// Pass as `before` for the next (older) page; null on the last page.
    pub next: Option<i64>,
}

/// One message that matched.
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct SearchHit {
    pub chat_id: i64,
    #[sqlx(flatten)]
    pub message: MessageOut,
    /// The matching part of the text (up to 35 words) as HTML safe to insert: the text
    /// escaped, each matched word in `<mark>…</mark>`, no other markup.
    #[schema(example = "the <mark>build</mark> is <mark>green</mark> again")]
    pub highlight: String,
}

/// Query of `GET /chat/list`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1–200 (default 100).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub status: String,
    pub database: String,
    pub broker: String,
}

/// One member's receipt of a message: who, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, ToSchema)]
pub struct Receipt {
    pub user_id: i64,
    /// When the message reached one of their devices (`delivered`) or they read it (`read`).
    pub at: DateTime<Utc>,
}

/// `GET /chat/message/{id}/receipts`: the other members who were in the chat when the message
/// was sent, by what reached them. Reading implies delivery: a reader is in both lists. Members
/// who hide their reads are left out of `read`, and a caller who hides theirs sees `read` empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Receipts {
    pub delivered: Vec<Receipt>,
    pub read: Vec<Receipt>,
}
