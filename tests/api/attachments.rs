//! Files sent with messages, over real connections to both stores windi knows: the local
//! default (a folder served by windi with signed links) and a real S3-protocol server
//! (`s3s-fs`, in process on a free port) with presigned URLs. Upload, send, download by a
//! member, 404 to anyone else, expired and forged links refused, oversize and wrong-type
//! refused, thumbnails and dimensions made, deleted messages' files out of reach, and
//! garbage collection.

use std::{io::Cursor, time::Duration};

use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use windi_shared::{AppState, blobs::Presentation, service::attachments};
use windi_tests::{TestApp, TestUser, eventually, relay_settings, s3::S3Server, ws::WsClient};

const WAIT: Duration = Duration::from_secs(10);

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    windi_shared::blobs::install_tls_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A PNG of `width` × `height` with a gradient (so it is not all one colour).
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A PNG header claiming `width` × `height` (8-bit RGBA) with a little data: what a
/// decompression bomb looks like before it is decoded.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    // A zlib stream of zeros: tiny compressed, enormous decompressed.
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// `POST /chat/attachments`: status and body.
async fn announce(
    app: &TestApp,
    user: &TestUser,
    filename: &str,
    content_type: &str,
    size: usize,
) -> (StatusCode, Value) {
    app.post(
        "/chat/attachments",
        user,
        json!({"filename": filename, "content_type": content_type, "size": size}),
    )
    .await
}

/// PUTs `bytes` with an upload answer's link and headers: status and body text.
async fn put_bytes(upload: &Value, bytes: Vec<u8>) -> (StatusCode, String) {
    let link = &upload["upload"];
    assert_eq!(link["method"], "PUT", "{upload}");
    let mut request = no_redirects().put(link["url"].as_str().unwrap());
    for (name, value) in link["headers"].as_object().unwrap() {
        request = request.header(name.as_str(), value.as_str().unwrap());
    }
    let response = request.body(bytes).send().await.unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

/// Announces and uploads a file; answers its id. Asserts both steps succeed.
async fn upload(
    app: &TestApp,
    user: &TestUser,
    filename: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> i64 {
    let (status, answer) = announce(app, user, filename, content_type, bytes.len()).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (status, body) = put_bytes(&answer, bytes).await;
    assert!(status.is_success(), "{status}: {body}");
    answer["id"].as_i64().unwrap()
}

/// `GET /chat/attachments/{id}[/thumbnail]` as `user`: the status, and the `Location` of a
/// redirect.
async fn link(app: &TestApp, user: &TestUser, path: &str) -> (StatusCode, Option<String>) {
    let response = no_redirects()
        .get(app.url(path))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    let location = response
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), location)
}

/// Follows a download link: status, headers and bytes.
async fn fetch(url: &str) -> (StatusCode, header::HeaderMap, Vec<u8>) {
    let response = no_redirects().get(url).send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// The download link of attachment `id` for `user`, asserting the redirect.
async fn download_url(app: &TestApp, user: &TestUser, path: &str) -> String {
    let (status, location) = link(app, user, path).await;
    assert_eq!(status, StatusCode::FOUND, "{path}");
    location.unwrap()
}

/// A download link of attachment `id` (a PNG named x.png) valid for `ttl`, made by the app's
/// store directly and answered once the clock has passed its expiry (whole seconds).
async fn expired_link(app: &TestApp, id: i64, ttl: Duration) -> String {
    let object_key: String = sqlx::query_scalar("SELECT object_key FROM attachments WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let shown = Presentation {
        content_type: "image/png".into(),
        filename: "x.png".into(),
        inline: true,
    };
    let files = app.state.files.as_ref().unwrap();
    let link = files
        .blobs
        .download_link(&object_key, &shown, ttl)
        .await
        .unwrap();
    let expires = chrono::Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap();
    eventually(
        ttl + Duration::from_secs(3),
        "the clock passes the link's expiry",
        || async { chrono::Utc::now().timestamp() > expires },
    )
    .await;
    link
}

/// An app whose files go to `s3`.
async fn on_s3(s3: &S3Server) -> TestApp {
    let blobs = s3.blobs();
    TestApp::spawn_adjusted(|state: AppState| state.with_files(blobs)).await
}

/// The files under a folder, at any depth.
fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| {
                if e.path().is_dir() {
                    files_in(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

/// The whole round on one store: an image and a document uploaded, sent without text,
/// downloaded by the other member (bytes, type, disposition), its thumbnail made, a stranger
/// refused; the uploader may look before sending, the recipient may not.
async fn round_trip(app: &TestApp) {
    let (alice, bob, carol) = (
        app.user("Alice").await,
        app.user("Bob").await,
        app.user("Carol").await,
    );
    let image = png(640, 480);
    let photo = upload(app, &alice, "photo.png", "image/png", image.clone()).await;
    let doc_bytes = b"%PDF-1.4\n% a tiny document\n".to_vec();
    let doc = upload(
        app,
        &alice,
        "notes.pdf",
        "application/pdf",
        doc_bytes.clone(),
    )
    .await;

    // Before sending: the uploader may look; no one else may.
    let path = format!("/chat/attachments/{photo}");
    let mine = download_url(app, &alice, &path).await;
    assert_eq!(fetch(&mine).await.2, image);
    assert_eq!(link(app, &bob, &path).await.0, StatusCode::NOT_FOUND);

    let (status, sent) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": bob.id, "attachments": [photo, doc]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_eq!(sent["text"], "");
    let files = sent["attachments"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{sent}");
    assert_eq!(files[0]["id"], photo);
    assert_eq!(files[0]["filename"], "photo.png");
    assert_eq!(files[0]["content_type"], "image/png");
    assert_eq!(files[0]["size"], image.len());
    assert_eq!(
        (files[0]["width"].clone(), files[0]["height"].clone()),
        (json!(640), json!(480))
    );
    assert_eq!(
        files[0]["thumbnail"],
        format!("/chat/attachments/{photo}/thumbnail")
    );
    assert_eq!(files[1]["id"], doc);
    assert!(files[1].get("width").is_none_or(Value::is_null), "{sent}");
    assert!(
        files[1].get("thumbnail").is_none_or(Value::is_null),
        "{sent}"
    );

    // The member downloads: an image inline with its type, a document as a download.
    let (status, headers, bytes) = fetch(&download_url(app, &bob, &path).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, image);
    assert_eq!(headers[header::CONTENT_TYPE], "image/png");
    let disposition = headers[header::CONTENT_DISPOSITION].to_str().unwrap();
    assert!(disposition.starts_with("inline"), "{disposition}");
    let doc_path = format!("/chat/attachments/{doc}");
    let (status, headers, bytes) = fetch(&download_url(app, &bob, &doc_path).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, doc_bytes);
    assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
    let disposition = headers[header::CONTENT_DISPOSITION].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment") && disposition.contains("notes.pdf"),
        "{disposition}"
    );

    // The thumbnail: a JPEG that fits 320 px, aspect kept.
    let thumb_path = format!("/chat/attachments/{photo}/thumbnail");
    let (status, headers, bytes) = fetch(&download_url(app, &bob, &thumb_path).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "image/jpeg");
    let thumb = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (320, 240));
    assert_eq!(
        link(app, &bob, &format!("{doc_path}/thumbnail")).await.0,
        StatusCode::NOT_FOUND
    );

    // A stranger: 404, as for a message of a chat they are not in.
    for p in [&path, &doc_path, &thumb_path] {
        assert_eq!(link(app, &carol, p).await.0, StatusCode::NOT_FOUND, "{p}");
    }

    // History and changes carry the files as the send answered them.
    let chat_id = sent["chat_id"].as_i64().unwrap();
    let history = app.history(&bob, chat_id, "").await;
    assert_eq!(history.last().unwrap()["attachments"], sent["attachments"]);
    let changes = app.changes(&bob, chat_id, 0).await;
    assert!(
        changes.to_string().contains(&format!(
            "\"thumbnail\":\"/chat/attachments/{photo}/thumbnail\""
        )),
        "{changes}"
    );
}

#[tokio::test]
async fn files_in_the_local_folder_go_up_out_and_only_to_members() {
    let app = TestApp::spawn().await;
    round_trip(&app).await;
}

#[tokio::test]
async fn files_on_a_real_s3_server_go_up_out_and_only_to_members() {
    let s3 = S3Server::start().await;
    let app = on_s3(&s3).await;
    round_trip(&app).await;
    // What was kept: the two checked files and one thumbnail, nothing left under uploads/.
    assert_eq!(s3.object_count(), 3);
}

#[tokio::test]
async fn a_declared_size_over_the_limit_or_a_body_other_than_declared_is_refused() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let (status, body) = announce(
        &app,
        &alice,
        "big.bin",
        "application/zip",
        25 * 1024 * 1024 + 1,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"].as_str().unwrap().starts_with("size"),
        "{body}"
    );
    let (status, body) = announce(&app, &alice, "none.bin", "application/zip", 0).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // JSON Schema's integer: a whole number written as 830.0 is one (found by the fuzzer),
    // 830.5 is not.
    let whole =
        |size: f64| json!({"filename": "a.bin", "content_type": "application/zip", "size": size});
    let (status, body) = app.post("/chat/attachments", &alice, whole(830.0)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app.post("/chat/attachments", &alice, whole(830.5)).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_body")),
        "{body}"
    );
    assert!(body["detail"].as_str().unwrap().contains("size"), "{body}");
    let (status, body) = announce(&app, &alice, "x.png", "not a type", 10).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("content_type"),
        "{body}"
    );

    // More bytes than announced, then fewer: refused, and the link still works for the right ones.
    let image = png(8, 8);
    let (status, answer) = announce(&app, &alice, "x.png", "image/png", image.len()).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    // Announced, not uploaded: the uploader's look finds it not ready.
    let (status, body) = app
        .get(&format!("/chat/attachments/{}", answer["id"]), &alice)
        .await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::CONFLICT, json!("not_ready"))
    );
    let mut longer = image.clone();
    longer.extend_from_slice(b"tail");
    let (status, body) = put_bytes(&answer, longer).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("announced"), "{body}");
    let (status, body) = put_bytes(&answer, image[..10].to_vec()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = put_bytes(&answer, image.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Once checked, the link is spent.
    let (status, body) = put_bytes(&answer, image).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("already_uploaded"), "{body}");
}

#[tokio::test]
async fn bytes_that_are_not_the_declared_type_are_refused_at_upload_and_at_send() {
    // The folder checks at upload.
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    // Bytes of no known type, declared as an image (which has a signature).
    let plain = b"just words, this is no PNG".to_vec();
    let (status, answer) = announce(&app, &alice, "x.png", "image/png", plain.len()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = put_bytes(&answer, plain).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("bytes are not image/png"), "{body}");
    let id = answer["id"].as_i64().unwrap();
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": bob.id, "attachments": [id]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(files_in(&app.files.0), 0, "refused bytes are not kept");

    // S3 takes any bytes through a presigned link: the send checks them.
    let s3 = S3Server::start().await;
    let app = on_s3(&s3).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    // Bytes of another known type (a PDF) declared as an image.
    let fake = b"%PDF-1.4\n% no PNG at all\n".to_vec();
    let id = upload(&app, &alice, "x.png", "image/png", fake).await;
    assert_eq!(s3.object_count(), 1);
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": bob.id, "attachments": [id]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("attachments") && detail.contains("bytes are application/pdf"),
        "{body}"
    );
    assert_eq!(s3.object_count(), 0, "refused bytes are deleted");
    // Nothing was sent.
    let (status, list) = app.get("/chat/list", &bob).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["chats"].as_array().map_or(0, Vec::len), 0, "{list}");
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_and_the_server_carries_on() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    for (width, height) in [(100_000, 100_000), (11_000, 11_000)] {
        let bomb = png_claiming(width, height);
        let (status, answer) = announce(&app, &alice, "bomb.png", "image/png", bomb.len()).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = put_bytes(&answer, bomb).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{width}: {body}");
        assert!(body.contains("attachments"), "{body}");
    }
    // Still serving, and a real image after the bombs is fine.
    let id = upload(&app, &alice, "ok.png", "image/png", png(4, 4)).await;
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": bob.id, "attachments": [id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn forged_and_expired_links_are_refused() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let image = png(16, 16);
    let (status, answer) = announce(&app, &alice, "x.png", "image/png", image.len()).await;
    assert_eq!(status, StatusCode::CREATED);

    // An upload link with its signature or expiry changed.
    let url = answer["upload"]["url"].as_str().unwrap().to_owned();
    let forged_sig = {
        let (head, sig) = url.rsplit_once("sig=").unwrap();
        let flipped = if sig.starts_with('0') { "1" } else { "0" };
        format!("{head}sig={flipped}{}", &sig[1..])
    };
    let later = url.replacen("exp=", "exp=9", 1);
    for bad in [forged_sig, later] {
        let mut forged = answer.clone();
        forged["upload"]["url"] = json!(bad);
        let (status, body) = put_bytes(&forged, image.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{bad}: {body}");
        assert!(body.contains("invalid_link"), "{body}");
    }
    let id = answer["id"].as_i64().unwrap();
    assert!(put_bytes(&answer, image.clone()).await.0.is_success());
    let (status, sent) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": bob.id, "attachments": [id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sent}");

    // A download link whose type or disposition was changed to show the file otherwise.
    let good = download_url(&app, &bob, &format!("/chat/attachments/{id}")).await;
    assert_eq!(fetch(&good).await.0, StatusCode::OK);
    for bad in [
        good.replace("type=image%2Fpng", "type=text%2Fhtml"),
        good.replace("inline=1", "inline=0"),
        good.replace("name=x.png", "name=y.png"),
    ] {
        assert_ne!(bad, good);
        let (status, _, body) = fetch(&bad).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{bad}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    // An expired link: made to expire now, tried once the clock has passed it.
    let expiring = expired_link(&app, id, Duration::ZERO).await;
    let (status, _, body) = fetch(&app.url(&expiring)).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(String::from_utf8_lossy(&body).contains("invalid_link"));
}

#[tokio::test]
async fn an_expired_presigned_s3_link_is_refused_by_s3() {
    let s3 = S3Server::start().await;
    let app = on_s3(&s3).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let image = png(16, 16);
    let id = upload(&app, &alice, "x.png", "image/png", image.clone()).await;
    let (status, _) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": bob.id, "attachments": [id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let good = download_url(&app, &bob, &format!("/chat/attachments/{id}")).await;
    assert!(good.starts_with(&s3.endpoint), "{good}");
    let (status, headers, bytes) = fetch(&good).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (bytes, &headers[header::CONTENT_TYPE]),
        (image, &"image/png".parse::<header::HeaderValue>().unwrap())
    );

    let expiring = expired_link(&app, id, Duration::from_secs(1)).await;
    let (status, _, body) = fetch(&expiring).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn a_send_carries_only_the_senders_own_unsent_checked_files_each_once() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let mine = upload(&app, &alice, "a.png", "image/png", png(4, 4)).await;
    let bobs = upload(&app, &bob, "b.png", "image/png", png(4, 4)).await;
    let send = |ids: Value| {
        let body = json!({"recipient_id": bob.id, "text": "see", "attachments": ids});
        async { app.post("/chat/message", &alice, body).await }
    };
    for ids in [
        json!([bobs]),
        json!([mine, mine]),
        json!([mine, 999_999_999]),
        json!((0..11).collect::<Vec<_>>()),
    ] {
        let (status, body) = send(ids.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{ids}: {body}");
        assert!(
            body["detail"].as_str().unwrap().starts_with("attachments"),
            "{body}"
        );
    }
    let (status, first) = send(json!([mine])).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    // Sent once: a second message cannot carry it.
    let (status, body) = send(json!([mine])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // A replay with the same key answers the original; other files under that key are a 409.
    let other = upload(&app, &alice, "c.png", "image/png", png(4, 4)).await;
    let keyed = |ids: Value| {
        let body =
            json!({"recipient_id": bob.id, "text": "k", "attachments": ids, "dedup_key": "k1"});
        async { app.post("/chat/message", &alice, body).await }
    };
    let (status, original) = keyed(json!([other])).await;
    assert_eq!(status, StatusCode::CREATED, "{original}");
    let (status, replay) = keyed(json!([other])).await;
    assert_eq!(
        (status, replay["id"].clone()),
        (StatusCode::OK, original["id"].clone())
    );
    let third = upload(&app, &alice, "d.png", "image/png", png(4, 4)).await;
    let (status, body) = keyed(json!([third])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // No text and no files: still refused.
    let (status, body) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": bob.id, "attachments": []}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

#[tokio::test]
async fn filenames_are_made_safe_and_the_quota_is_kept() {
    let app = TestApp::spawn().await;
    let alice = app.user("Alice").await;
    let bytes = png(4, 4);
    let id = upload(
        &app,
        &alice,
        "../../etc/pass\u{202e}gnp.exe<wd>.png",
        "image/png",
        bytes,
    )
    .await;
    let name: String = sqlx::query_scalar("SELECT filename FROM attachments WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(name, "passgnp.exe_wd_.png");

    // Just under the quota of 1 GiB: one more byte than fits is refused by name.
    sqlx::query("UPDATE attachments SET size = $2 WHERE id = $1")
        .bind(id)
        .bind(1024_i64 * 1024 * 1024 - 100)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let (status, body) = announce(&app, &alice, "y.zip", "application/zip", 101).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "quota_exceeded");
    let (status, body) = announce(&app, &alice, "y.zip", "application/zip", 100).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn deleting_a_message_takes_its_files_out_of_reach_and_pruning_removes_them() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let sent_id = upload(&app, &alice, "a.png", "image/png", png(40, 30)).await;
    let (status, sent) = app
        .post(
            "/chat/message",
            &alice,
            json!({"recipient_id": bob.id, "attachments": [sent_id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // An upload never sent, and one begun and never uploaded, both from a day ago.
    let unsent = upload(&app, &alice, "b.png", "image/png", png(4, 4)).await;
    let (_, begun) = announce(&app, &alice, "c.png", "image/png", 10).await;
    let begun = begun["id"].as_i64().unwrap();
    // A fresh unsent upload, which stays.
    let fresh = upload(&app, &alice, "d.png", "image/png", png(4, 4)).await;
    sqlx::query(
        "UPDATE attachments SET created_at = now() - interval '25 hours' WHERE id = ANY($1)",
    )
    .bind([unsent, begun])
    .execute(&app.db.pool)
    .await
    .unwrap();
    // sent: object + thumbnail; unsent: object + thumbnail; fresh: object + thumbnail.
    assert_eq!(files_in(&app.files.0), 6);

    let path = format!("/chat/attachments/{sent_id}");
    assert_eq!(link(&app, &bob, &path).await.0, StatusCode::FOUND);
    let (status, deleted) = app
        .delete(&format!("/chat/message/{}", sent["id"]), &alice)
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["attachments"], json!([]));
    for who in [&alice, &bob] {
        assert_eq!(link(&app, who, &path).await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            link(&app, who, &format!("{path}/thumbnail")).await.0,
            StatusCode::NOT_FOUND
        );
    }

    let pruned = attachments::prune(&app.state.db, app.state.files.as_ref(), 100)
        .await
        .unwrap();
    assert_eq!((pruned.expired, pruned.removed), (2, 3), "{pruned:?}");
    assert_eq!(
        files_in(&app.files.0),
        2,
        "only the fresh upload's file and thumbnail stay"
    );
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM attachments ORDER BY id")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(left, vec![fresh]);
    // A second pass finds nothing.
    let again = attachments::prune(&app.state.db, app.state.files.as_ref(), 100)
        .await
        .unwrap();
    assert_eq!((again.expired, again.removed), (0, 0));
}

#[tokio::test]
async fn pruning_on_s3_removes_what_no_message_carries() {
    let s3 = S3Server::start().await;
    let app = on_s3(&s3).await;
    let alice = app.user("Alice").await;
    let unsent = upload(&app, &alice, "b.png", "image/png", png(4, 4)).await;
    // Checked on first read by the uploader: moved to files/ with a thumbnail.
    download_url(&app, &alice, &format!("/chat/attachments/{unsent}")).await;
    assert_eq!(s3.object_count(), 2);
    sqlx::query("UPDATE attachments SET created_at = now() - interval '25 hours'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let pruned = attachments::prune(&app.state.db, app.state.files.as_ref(), 100)
        .await
        .unwrap();
    assert_eq!((pruned.expired, pruned.removed), (1, 1));
    assert_eq!(s3.object_count(), 0);
}

#[tokio::test]
async fn the_relays_send_carries_files_and_the_frames_show_them() {
    let app = TestApp::spawn().await;
    let relay = app.relay(relay_settings()).await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let first = app.send_to_user(&alice, &bob, "hi").await;
    let chat_id = first["chat_id"].as_i64().unwrap();
    let mut alice_ws = WsClient::connect(relay.addr, &alice.token).await;
    let mut bob_ws = WsClient::connect(relay.addr, &bob.token).await;
    let id = upload(&app, &alice, "p.png", "image/png", png(100, 50)).await;
    alice_ws
        .send(json!({"type": "send", "chat_id": chat_id, "attachments": [id], "dedup_key": "w1"}))
        .await;
    let ack = alice_ws.expect("ack", WAIT).await;
    assert_eq!(ack["created"], true, "{ack}");
    let files = &ack["message"]["attachments"];
    assert_eq!(files[0]["id"], id, "{ack}");
    assert_eq!(
        (files[0]["width"].clone(), files[0]["height"].clone()),
        (json!(100), json!(50))
    );
    let frame = bob_ws.expect("message", WAIT).await;
    assert_eq!(frame["message"]["attachments"], *files, "{frame}");
    // A send naming someone else's file is an error frame naming the field.
    alice_ws
        .send(json!({"type": "send", "chat_id": chat_id, "attachments": [id], "dedup_key": "w2"}))
        .await;
    let error = alice_ws.expect("error", WAIT).await;
    assert_eq!(error["dedup_key"], "w2");
    assert!(
        error["detail"].as_str().unwrap().starts_with("attachments"),
        "{error}"
    );
}

#[tokio::test]
async fn a_member_removed_from_a_group_can_no_longer_download_its_files() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.user("Alice").await, app.user("Bob").await);
    let group = app.group(&alice, &[&bob]).await;
    let id = upload(&app, &alice, "plan.png", "image/png", png(8, 8)).await;
    let (status, _) = app
        .post(
            "/chat/message",
            &alice,
            json!({"chat_id": group, "attachments": [id]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let path = format!("/chat/attachments/{id}");
    assert_eq!(link(&app, &bob, &path).await.0, StatusCode::FOUND);
    let (status, body) = app
        .delete(&format!("/chat/group/{group}/members/{}", bob.id), &alice)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(link(&app, &bob, &path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        link(&app, &bob, &format!("{path}/thumbnail")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(link(&app, &alice, &path).await.0, StatusCode::FOUND);
}
