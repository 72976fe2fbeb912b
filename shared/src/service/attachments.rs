//! Files sent with messages: announcing an upload, checking its bytes, handing out download
//! links, and pruning what is no longer reachable. The same for HTTP, the relay and Lambda.
//!
//! The bytes never pass through an API function on their way up when the store is S3: the
//! client PUTs them to a presigned link. So windi checks them afterwards — when the local
//! upload route has them, or else when a send (or a download by the uploader) first needs
//! them: the size must be the declared one, the first bytes must be of the declared type, and
//! an image must decode within bounds, which also gives its dimensions and thumbnail.
//!
//! Uploads land under `uploads/…`; a checked file moves to `files/…`, the key every link and
//! message names. A second PUT with the same (still valid) upload link after the check lands
//! under `uploads/` again, where nothing reads it and the bucket's lifecycle rule (or the
//! pruning) removes it: what was checked is what is served.

use std::time::Duration;

use chrono::Utc;

use crate::{
    blobs::{self, Presentation},
    domain::{
        attachments as rules,
        error::{Error, Result},
        images,
        model::{AttachmentOut, AttachmentUpload, NewAttachment, UploadLink},
    },
    service::{files::Files, state::AppState, write},
    store::attachments::{self as store, Attachment},
};

/// How long making one thumbnail may take before the upload is refused (a decoder that
/// crawls on hostile bytes; the decoding limits already refuse a bomb before it allocates).
const THUMBNAIL_TIME: Duration = Duration::from_secs(10);

/// How many bytes of a file are read to check its type.
const SNIFF_BYTES: u64 = 8 * 1024;

fn files(state: &AppState) -> Result<&Files> {
    state.files.as_ref().ok_or_else(|| {
        Error::Unavailable(
            "file storage is not configured (set FILES_BUCKET to an S3 bucket)".into(),
        )
    })
}

fn storage(e: blobs::Error) -> Error {
    Error::Unavailable(format!("file storage: {e}"))
}

/// The key an upload link writes to, for the object key a checked file is kept under.
pub fn upload_key(object_key: &str) -> String {
    format!(
        "uploads/{}",
        object_key.strip_prefix("files/").unwrap_or(object_key)
    )
}

/// The object key a file will be kept under, for its upload key (`None` if it is not one).
pub fn object_key_of_upload(upload_key: &str) -> Option<String> {
    let name = upload_key.strip_prefix("uploads/")?;
    (name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("files/{name}"))
}

/// 128 random bits as hex: an object's name, which no one can guess from an id.
fn random_name() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("getrandom: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `POST /chat/attachments`: records the upload and answers where to PUT its bytes. The
/// declared size and type are checked here (nothing is uploaded when they break a rule), and
/// the uploader's quota and unsent uploads are counted under their lock.
pub async fn announce(
    state: &AppState,
    uploader: i64,
    request: &NewAttachment,
) -> Result<AttachmentUpload> {
    let files = files(state)?;
    let filename = rules::filename(&request.filename);
    let content_type = rules::content_type(&request.content_type)?;
    rules::size(request.size)?;
    // An upload is the first half of a message: it counts against the same budget.
    state.limits.sends.check(uploader)?;

    let object_key = format!("files/{}", random_name()?);
    let ttl = Duration::from_secs(rules::UPLOAD_LINK_SECONDS.unsigned_abs());
    let expires_at = Utc::now() + chrono::Duration::seconds(rules::UPLOAD_LINK_SECONDS);
    let mut tx = state.db.begin().await?;
    store::lock_uploader(&mut tx, uploader).await?;
    let held = store::holdings(&mut *tx, uploader).await?;
    if held.unsent >= rules::MAX_UNSENT {
        return Err(Error::Conflict {
            code: "too_many_uploads",
            detail: format!(
                "you have {} uploads not yet sent (the limit is {}); send or wait for them to \
                 expire ({} hours)",
                held.unsent,
                rules::MAX_UNSENT,
                rules::UNSENT_HOURS
            ),
        });
    }
    if held.bytes + request.size > rules::USER_QUOTA_BYTES {
        return Err(Error::Conflict {
            code: "quota_exceeded",
            detail: format!(
                "size: your files hold {} bytes; {} more would pass your quota of {} (1 GiB)",
                held.bytes,
                request.size,
                rules::USER_QUOTA_BYTES
            ),
        });
    }
    let row = store::create(
        &mut *tx,
        &store::New {
            uploader_id: uploader,
            object_key: &object_key,
            filename: &filename,
            content_type: &content_type,
            size: request.size,
            upload_expires_at: expires_at,
        },
    )
    .await?;
    write::commit_without_events(tx).await?;
    let link = files
        .blobs
        .upload_link(&upload_key(&object_key), &content_type, ttl)
        .await
        .map_err(storage)?;
    Ok(AttachmentUpload {
        id: row.id,
        upload: UploadLink {
            method: link.method.to_owned(),
            url: link.url,
            headers: link
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        },
        expires_at,
    })
}

/// The local upload route: the bytes of a pending upload, PUT with a valid link. Stores and
/// checks them; answers the file as a message will show it, or why it was refused (its bytes
/// are then dropped, and the link may be used again until it expires).
pub async fn receive(
    state: &AppState,
    upload_key: &str,
    content_type: Option<&str>,
    bytes: Vec<u8>,
) -> Result<AttachmentOut> {
    let files = files(state)?;
    let row = match object_key_of_upload(upload_key) {
        Some(object_key) => store::by_object_key(&state.db, &object_key).await?,
        None => None,
    };
    let Some(row) = row else {
        return Err(Error::NotFound("upload"));
    };
    if !row.is_pending() {
        return Err(Error::Conflict {
            code: "already_uploaded",
            detail: format!("attachment {} was uploaded and checked already", row.id),
        });
    }
    // The header the link was made for, as S3 requires of its presigned PUTs.
    if content_type.map(|t| rules::content_type(t).ok()) != Some(Some(row.content_type.clone())) {
        return Err(Error::invalid(
            "Content-Type",
            format!("must be {}, as announced", row.content_type),
        ));
    }
    if i64::try_from(bytes.len()).ok() != Some(row.size) {
        return Err(Error::invalid(
            "size",
            format!(
                "the upload is {} bytes; {} were announced",
                bytes.len(),
                row.size
            ),
        ));
    }
    files.blobs.put(upload_key, bytes).await.map_err(storage)?;
    finish(state, &row).await
}

/// Checks a pending upload's bytes and makes it ready (see the module docs); a ready one is
/// answered as it is. Refused bytes are deleted, so a fixed upload can take their place.
pub async fn finish(state: &AppState, row: &Attachment) -> Result<AttachmentOut> {
    if !row.is_pending() {
        return Ok(row.out());
    }
    let files = files(state)?;
    let upload = upload_key(&row.object_key);
    let refuse = |reason: &str| {
        Error::invalid(
            "attachments",
            format!("file {} ({}): {reason}", row.id, row.filename),
        )
    };
    let size = match files.blobs.size(&upload).await {
        Ok(size) => size,
        Err(blobs::Error::NotFound) => {
            return concurrent_or(state, row, refuse("was not uploaded")).await;
        }
        Err(e) => return Err(storage(e)),
    };
    let checked = check(files, row, &upload, size).await;
    let (dimensions, thumbnail) = match checked {
        Ok(found) => found,
        Err(Refusal::Bytes(reason)) => {
            files.blobs.delete(&upload).await.map_err(storage)?;
            return Err(refuse(&reason));
        }
        Err(Refusal::Storage(e)) => return Err(storage(e)),
    };
    let thumbnail_key = match thumbnail {
        Some(jpeg) => {
            let key = format!("thumbs/{}.jpg", random_name()?);
            files.blobs.put(&key, jpeg).await.map_err(storage)?;
            Some(key)
        }
        None => None,
    };
    match files.blobs.rename(&upload, &row.object_key).await {
        Ok(()) => {}
        Err(blobs::Error::NotFound) => {
            // A concurrent check moved it first.
            if let Some(key) = &thumbnail_key {
                files.blobs.delete(key).await.map_err(storage)?;
            }
            return concurrent_or(state, row, refuse("was not uploaded")).await;
        }
        Err(e) => return Err(storage(e)),
    }
    if !store::mark_ready(&state.db, row.id, dimensions, thumbnail_key.as_deref()).await? {
        if let Some(key) = &thumbnail_key {
            files.blobs.delete(key).await.map_err(storage)?;
        }
        return concurrent_or(state, row, refuse("was not uploaded")).await;
    }
    Ok(Attachment {
        state: "ready".into(),
        width: dimensions.map(|d| d.0),
        height: dimensions.map(|d| d.1),
        thumbnail_key,
        ..row.clone()
    }
    .out())
}

/// After a check found the upload gone: a concurrent check that finished it wins (its answer
/// is this one's); otherwise `refusal`.
async fn concurrent_or(
    state: &AppState,
    row: &Attachment,
    refusal: Error,
) -> Result<AttachmentOut> {
    match store::for_reader(&state.db, row.id, row.uploader_id).await? {
        Some(now) if !now.is_pending() => Ok(now.out()),
        _ => Err(refusal),
    }
}

enum Refusal {
    /// The bytes break a rule: the reason, for the client.
    Bytes(String),
    Storage(blobs::Error),
}

/// Size, type and (for images) dimensions and thumbnail of the uploaded bytes.
async fn check(
    files: &Files,
    row: &Attachment,
    upload: &str,
    size: u64,
) -> std::result::Result<(Option<(i32, i32)>, Option<Vec<u8>>), Refusal> {
    if i64::try_from(size).ok() != Some(row.size) {
        return Err(Refusal::Bytes(format!(
            "the upload is {size} bytes; {} were announced",
            row.size
        )));
    }
    let head = files
        .blobs
        .head_bytes(upload, SNIFF_BYTES)
        .await
        .map_err(Refusal::Storage)?;
    rules::matches(&row.content_type, &head).map_err(Refusal::Bytes)?;
    if !rules::is_image(&row.content_type) {
        return Ok((None, None));
    }
    let bytes = files.blobs.get(upload).await.map_err(Refusal::Storage)?;
    let permit = files
        .thumbnails()
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Refusal::Bytes("the server is shutting down".into()))?;
    let declared = row.content_type.clone();
    // The permit goes with the work: a decode that outlives its timeout still holds it.
    let work = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        images::inspect(&bytes, &declared)
    });
    let inspected = match tokio::time::timeout(THUMBNAIL_TIME, work).await {
        Ok(Ok(inspected)) => inspected.map_err(Refusal::Bytes)?,
        Ok(Err(_)) => return Err(Refusal::Bytes("the image could not be decoded".into())),
        Err(_) => {
            return Err(Refusal::Bytes(format!(
                "the image took longer than {} s to decode",
                THUMBNAIL_TIME.as_secs()
            )));
        }
    };
    let side = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    Ok((
        Some((side(inspected.width), side(inspected.height))),
        Some(inspected.thumbnail),
    ))
}

/// The files a send carries: `uploader`'s uploads `ids` (at most [`rules::MAX_PER_MESSAGE`],
/// each once), checked now if their bytes were not yet. Answers nothing for an empty list.
/// Refuses with a 422 naming `attachments` when one is not the sender's unsent upload.
pub async fn prepare_for_send(state: &AppState, uploader: i64, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    rules::ids(ids)?;
    let rows = store::unsent_of(&state.db, ids, uploader).await?;
    for row in rows.iter().filter(|r| r.is_pending()) {
        finish(state, row).await?;
    }
    Ok(())
}

/// A 302 target for `GET /chat/attachments/{id}` (`thumbnail`: its thumbnail's), if `reader`
/// may read it. A file is shown in the page only if it is an image windi decoded; anything
/// else is a download of `application/octet-stream`, so no upload is ever run as a page.
pub async fn download_link(
    state: &AppState,
    reader: i64,
    id: i64,
    thumbnail: bool,
) -> Result<String> {
    let files = files(state)?;
    let Some(mut row) = store::for_reader(&state.db, id, reader).await? else {
        return Err(Error::NotFound("attachment"));
    };
    if row.is_pending() {
        // The uploader looks at an upload before sending it: check it first.
        // Its bytes missing or refused: not a bad request, a file not ready (yet).
        finish(state, &row).await.map_err(|e| match e {
            Error::Validation { detail, .. } => Error::Conflict {
                code: "not_ready",
                detail,
            },
            e => e,
        })?;
        // Read again: the check moved it and may have made a thumbnail.
        row = store::for_reader(&state.db, id, reader)
            .await?
            .ok_or(Error::NotFound("attachment"))?;
    }
    let ttl = Duration::from_secs(rules::DOWNLOAD_LINK_SECONDS.unsigned_abs());
    let (key, shown) = if thumbnail {
        let Some(key) = row.thumbnail_key.clone() else {
            return Err(Error::NotFound("thumbnail"));
        };
        let stem = row
            .filename
            .rsplit_once('.')
            .map_or(row.filename.as_str(), |s| s.0);
        (
            key,
            Presentation {
                content_type: images::THUMBNAIL_TYPE.into(),
                filename: format!("{stem}.thumbnail.jpg"),
                inline: true,
            },
        )
    } else {
        let image = rules::is_image(&row.content_type);
        (
            row.object_key.clone(),
            Presentation {
                content_type: if image {
                    row.content_type.clone()
                } else {
                    rules::GENERIC.into()
                },
                filename: row.filename.clone(),
                inline: image,
            },
        )
    };
    files
        .blobs
        .download_link(&key, &shown, ttl)
        .await
        .map_err(storage)
}

/// What one pruning pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Uploads not sent within [`rules::UNSENT_HOURS`], now deleted.
    pub expired: u64,
    /// Deleted uploads whose objects were removed and rows forgotten.
    pub removed: u64,
}

/// Deletes uploads never sent in time, then removes the objects of every deleted upload
/// (sent with a message since deleted, or expired) and forgets their rows, `batch` at a
/// time. A row is forgotten only after its objects are gone, so a failure midway leaves it to
/// the next pass, never an object no row names.
/// Without `files` (storage not configured) only the rows are marked.
pub async fn prune(db: &sqlx::PgPool, files: Option<&Files>, batch: i64) -> Result<Pruned> {
    let mut pruned = Pruned {
        expired: store::expire_unsent(db, rules::UNSENT_HOURS, batch).await?,
        ..Pruned::default()
    };
    let Some(files) = files else {
        return Ok(pruned);
    };
    loop {
        let gone = store::deleted(db, batch).await?;
        if gone.is_empty() {
            return Ok(pruned);
        }
        let mut ids = Vec::with_capacity(gone.len());
        for g in &gone {
            let keys = [
                Some(g.object_key.clone()),
                Some(upload_key(&g.object_key)),
                g.thumbnail_key.clone(),
            ];
            for key in keys.into_iter().flatten() {
                files.blobs.delete(&key).await.map_err(storage)?;
            }
            ids.push(g.id);
        }
        pruned.removed += store::forget(db, &ids).await?;
        if i64::try_from(gone.len()).unwrap_or(i64::MAX) < batch {
            return Ok(pruned);
        }
    }
}

/// The files a send carries, locked in its transaction: every id must be one of the sender's
/// checked, unsent uploads. Answers them as the message will show them.
pub(crate) async fn lock_for_send(
    tx: &mut sqlx::PgConnection,
    uploader: i64,
    ids: &[i64],
) -> Result<Vec<Attachment>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = store::lock_ready(tx, ids, uploader).await?;
    if rows.len() != ids.len() {
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !rows.iter().any(|r| r.id == **id))
            .map(ToString::to_string)
            .collect();
        return Err(Error::invalid(
            "attachments",
            format!(
                "{} {} not among your uploaded, unsent files",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" }
            ),
        ));
    }
    Ok(rows)
}

/// 403 `invalid_link`: a folder link whose signature is not windi's, or that has expired.
fn invalid_link() -> Error {
    Error::Rejected {
        status: http::StatusCode::FORBIDDEN,
        code: "invalid_link",
        detail: "the link is invalid or has expired; ask for a new one".into(),
    }
}

/// The folder store, for its own routes: 404 when files go to S3 (or nowhere), where
/// `/files/…` does not exist.
fn folder(state: &AppState) -> Result<&Files> {
    match state.files.as_ref() {
        Some(files) if files.blobs.is_folder() => Ok(files),
        _ => Err(Error::NotFound("file")),
    }
}

/// `PUT /files/{key}?exp=&sig=`: whether the link is one windi made and still valid, and a
/// place to read its body into (held until the answer). Checked before the body is read, so a
/// stranger cannot make windi take in 25 MiB, and at most
/// [`UPLOADS_AT_ONCE`](crate::service::files::UPLOADS_AT_ONCE) bodies are read at once (503
/// past that).
pub fn admit_upload(
    state: &AppState,
    key: &str,
    exp: i64,
    sig: &str,
) -> Result<tokio::sync::OwnedSemaphorePermit> {
    let files = folder(state)?;
    if !files.blobs.verify("PUT", key, exp, &[], sig) {
        return Err(invalid_link());
    }
    files.upload_permit().ok_or_else(|| {
        Error::Unavailable("too many uploads in progress; retry in a few seconds".into())
    })
}

/// The bytes a folder download link names, and how to answer them.
pub struct Download {
    pub size: u64,
    pub chunks: blobs::Chunks,
    pub shown: Presentation,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("size", &self.size)
            .field("shown", &self.shown)
            .finish_non_exhaustive()
    }
}

/// `GET /files/{key}?exp=&type=&name=&inline=&sig=`: the object, if the link (and with it
/// the type and disposition it is answered with) is one windi made and still valid.
pub async fn open_download(
    state: &AppState,
    key: &str,
    exp: i64,
    shown: Presentation,
    sig: &str,
) -> Result<Download> {
    let files = folder(state)?;
    let inline = if shown.inline { "1" } else { "0" };
    let signed = [shown.content_type.as_str(), shown.filename.as_str(), inline];
    if !files.blobs.verify("GET", key, exp, &signed, sig) {
        return Err(invalid_link());
    }
    match files.blobs.stream(key).await {
        Ok((size, chunks)) => Ok(Download {
            size,
            chunks,
            shown,
        }),
        // Deleted since the link was made: gone from reach, as promised.
        Err(blobs::Error::NotFound) => Err(Error::NotFound("file")),
        Err(e) => Err(storage(e)),
    }
}
