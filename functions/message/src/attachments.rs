//! Files: `POST /chat/attachments` (begin an upload), `GET /chat/attachments/{id}` and its
//! `/thumbnail` (a redirect to a short-lived download link), and — when files are kept in a
//! folder rather than S3 — the signed links' own routes, `PUT` and `GET /files/{key}`.
//!
//! The work is in [`windi_shared::service::attachments`]; this module maps HTTP onto it and
//! makes the folder's links absolute, from the request's own origin.

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::put,
};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};
use windi_shared::{
    AppState, Error, Result,
    blobs::Presentation,
    domain::{
        attachments::MAX_FILE_BYTES,
        model::{AttachmentOut, AttachmentUpload, NewAttachment},
    },
    http::{
        error::ErrorBody,
        extract::{AuthUser, Json, Path, Query},
    },
    service::attachments,
};

pub fn routes() -> OpenApiRouter<AppState> {
    // The body limit of every other route is 64 KiB; an upload's is the file limit (plus a
    // byte, so one over it is read far enough to be refused as too large).
    let limit = usize::try_from(MAX_FILE_BYTES).unwrap_or(usize::MAX) + 1;
    OpenApiRouter::new()
        .routes(routes!(announce))
        .routes(routes!(download))
        .routes(routes!(thumbnail))
        // The folder's links: signed, not authenticated, and not part of the API a client
        // codes against (it follows the URLs it is given), so left out of the OpenAPI file.
        .route(
            "/files/{*key}",
            put(upload)
                .get(serve)
                .layer(axum::extract::DefaultBodyLimit::max(limit)),
        )
}

/// Begin an upload: declare the file, get a link to PUT its bytes to (with the headers
/// given), then send its `id` in a message's `attachments`.
#[utoipa::path(
    post, path = "/chat/attachments", tag = "chat",
    security(("oauth2" = [])),
    request_body = NewAttachment,
    responses(
        (status = 201, description = "Upload the bytes with `upload` before `expires_at`", body = AttachmentUpload),
        (status = 409, description = "`quota_exceeded` (1 GiB per user) or `too_many_uploads` (50 unsent)", body = ErrorBody),
        (status = 422, description = "`size` over 25 MiB or not positive, or a malformed `content_type`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: uploads count as sends; wait `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "File storage is not configured or not reachable", body = ErrorBody),
    )
)]
async fn announce(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<NewAttachment>,
) -> Result<(StatusCode, axum::Json<AttachmentUpload>)> {
    let mut answer = attachments::announce(&state, user.id, &body).await?;
    answer.upload.url = absolute(&headers, answer.upload.url);
    Ok((StatusCode::CREATED, axum::Json(answer)))
}

/// Download a file: a redirect to a link valid for 5 minutes. Images windi decoded are shown
/// inline with their type; any other file is a download of `application/octet-stream`.
#[utoipa::path(
    get, path = "/chat/attachments/{id}", tag = "chat",
    security(("oauth2" = [])),
    params(("id" = i64, Path, description = "Attachment id")),
    responses(
        (status = 302, description = "`Location` is the download link"),
        (status = 404, description = "No such file in a chat of the caller's (nor an unsent upload of theirs)", body = ErrorBody),
        (status = 409, description = "`not_ready`: the caller's unsent upload has no bytes yet, or they were checked now and refused (`detail` says why)", body = ErrorBody),
    )
)]
async fn download(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response> {
    let link = attachments::download_link(&state, user.id, id, false).await?;
    Ok(redirect(absolute(&headers, link)))
}

/// An image's thumbnail (JPEG, at most 320 px on its longer side): a redirect as for the file.
#[utoipa::path(
    get, path = "/chat/attachments/{id}/thumbnail", tag = "chat",
    security(("oauth2" = [])),
    params(("id" = i64, Path, description = "Attachment id")),
    responses(
        (status = 302, description = "`Location` is the thumbnail's download link"),
        (status = 404, description = "No such file for the caller, or it is not an image", body = ErrorBody),
        (status = 409, description = "`not_ready`: the caller's unsent upload has no bytes yet, or they were refused", body = ErrorBody),
    )
)]
async fn thumbnail(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response> {
    let link = attachments::download_link(&state, user.id, id, true).await?;
    Ok(redirect(absolute(&headers, link)))
}

/// A link's expiry and signature.
#[derive(Debug, Deserialize)]
struct UploadQuery {
    exp: i64,
    sig: String,
}

/// The folder's upload link: the bytes of one announced file, checked on arrival.
async fn upload(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(link): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<AttachmentOut>> {
    let _place = attachments::admit_upload(&state, &key, link.exp, &link.sig)?;
    let too_large = || Error::Rejected {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "payload_too_large",
        detail: format!("size: a file is at most {MAX_FILE_BYTES} bytes"),
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<i64>().ok());
    if declared.is_some_and(|n| n > MAX_FILE_BYTES) {
        return Err(too_large());
    }
    let limit = usize::try_from(MAX_FILE_BYTES).unwrap_or(usize::MAX);
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let file = attachments::receive(&state, &key, content_type, bytes.to_vec()).await?;
    Ok(axum::Json(file))
}

/// A download link's expiry, how it is answered, and signature.
#[derive(Debug, Deserialize)]
struct DownloadQuery {
    exp: i64,
    #[serde(rename = "type")]
    content_type: String,
    name: String,
    inline: String,
    sig: String,
}

/// The folder's download link: the bytes, with the type and disposition the link was signed
/// for, in a sandbox (no script in a file ever runs with windi's origin).
async fn serve(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(link): Query<DownloadQuery>,
) -> Result<Response> {
    let shown = Presentation {
        content_type: link.content_type,
        filename: link.name,
        inline: link.inline == "1",
    };
    let file = attachments::open_download(&state, &key, link.exp, shown, &link.sig).await?;
    let header = |value: String| {
        HeaderValue::from_str(&value).map_err(|e| Error::Internal(format!("a header: {e}")))
    };
    let mut response = Body::from_stream(file.chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header(file.shown.content_type.clone())?,
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        header(file.shown.disposition())?,
    );
    headers.insert(header::CONTENT_LENGTH, header(file.size.to_string())?);
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(response)
}

/// `302 Found` to `location`, never cached (the link expires).
fn redirect(location: String) -> Response {
    match HeaderValue::from_str(&location) {
        Ok(value) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, value),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(e) => {
            Error::Internal(format!("a download link is not a header value: {e}")).into_response()
        }
    }
}

/// A link on windi's own origin (`/files/…`) made absolute, from the request's `Host` and
/// `X-Forwarded-Proto` (a proxy that ends TLS sets it); S3's links are absolute already, and
/// a request without a usable `Host` gets the path, which a browser resolves alike.
fn absolute(headers: &HeaderMap, link: String) -> String {
    if !link.starts_with('/') {
        return link;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let Some(host) = host.filter(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    }) else {
        return link;
    };
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some(proto) if proto.trim().eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}{link}")
}
