//! `upload`: file uploads (attachments) through windi's local store, against the same bytes
//! PUT to a bare server, and images against their decoding alone.
//!
//! One `windi serve` (API only: an upload publishes no event) keeps its files in a fresh folder
//! of its own (`FILES_DIR`, under `target/bench/`, removed afterwards). An upload is what a
//! client does: `POST /chat/attachments` (201, a signed link on windi's own origin), then `PUT`
//! of the bytes to that link with the headers given (200, the checked file). Every answer is
//! checked: 201 with a `PUT` link, then 200 with the right size (and for images the width,
//! height and a thumbnail). Nothing is sent in a message: the figures are announce + PUT only.
//!
//! Limits: uploads count against the per-user send rate, which the harness raises on every
//! windi it starts (`LIMIT_SENDS_PER_SEC`, `LIMIT_SENDS_BURST`); the 50 unsent uploads and
//! the 1 GiB quota per user are constants, so the uploads go round-robin over enough bulk
//! users that none takes more than [`PER_USER`] (of either kind, over the whole run).
//!
//! - **1 MiB files**: random bytes declared `application/octet-stream` (no type to sniff, no
//!   decoding), [`CLIENTS`] concurrent clients, each one upload at a time. Baseline: a bare
//!   axum server in this process on 127.0.0.1 whose `PUT /files/{*key}` writes the body to a
//!   file in a folder on the same disk and answers 200: the same bytes over the same HTTP
//!   client, no announce, no database, no check (it shares the bench process and its runtime
//!   with the clients; windi is a process of its own). Also the latencies (p50, p99) of both,
//!   and of windi's announce alone (in the p50 figure's note).
//! - **Images**: a 1600×1200 JPEG (a gradient under noise, quality 85, made once here) as
//!   `image/jpeg`: windi decodes it and makes a ≤ 320 px thumbnail before answering, on at
//!   most one blocking thread per core. Baseline: the same `images::inspect` in this process
//!   on `available_parallelism()` blocking threads, with nothing else to do: what HTTP, the
//!   store, the database and the check add to the decoding itself.
//!
//! The files both sides write are deleted after each run (outside the timing), and a run
//! writes at most 1.5 GiB, so the disk's page cache and writeback weigh on each side alike:
//! the figures are of the servers, not of the disk.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use axum::body::Bytes;
use serde_json::{Value, json};
use windi_shared::domain::images;

use crate::{
    harness::{Ctx, User, Windi, WindiOptions, bulk_users},
    probe::{self, Rng},
    report::{Figure, Target},
};

/// Concurrent upload clients.
const CLIENTS: usize = 8;
/// The most uploads of one user over the run (windi allows 50 unsent).
const PER_USER: usize = 40;
/// The plain file's size.
const FILE_BYTES: usize = 1024 * 1024;
/// The photo's size in pixels.
const PHOTO: (u32, u32) = (1600, 1200);
/// The JPEG quality of the photo (a phone camera's is about this).
const PHOTO_QUALITY: u8 = 85;
const GENERIC: &str = "application/octet-stream";
const JPEG: &str = "image/jpeg";

/// What one run of uploads measured.
#[derive(Debug)]
struct Run {
    per_sec: f64,
    p50: f64,
    p99: f64,
    /// p50 of the announce alone (windi only; NaN for the bare server).
    announce_p50: f64,
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    // At most 1.5 GiB per run: below the kernel's background writeback threshold on the
    // benchmark machine (10% of 23 GiB), so neither side waits on the disk for the other's
    // files (each run's are deleted after it).
    let file_count = ctx.pick(48, 1_500);
    let photo_count = ctx.pick(16, 400);
    let budget = Duration::from_secs(ctx.pick(1, 8));
    let warmup = ctx.pick(8, 16);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    let dir = ctx
        .repo
        .join(format!("target/bench/tmp-upload-{}", std::process::id()));
    let windi_dir = dir.join("windi");
    let bare_dir = dir.join("bare");
    std::fs::create_dir_all(&windi_dir)?;
    std::fs::create_dir_all(&bare_dir)?;
    let measured = measure(
        ctx,
        &windi_dir,
        &bare_dir,
        file_count,
        photo_count,
        budget,
        warmup,
        cores,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let m = measured?;

    let secs = budget.as_secs();
    let photo_note = format!(
        "a {}×{} JPEG of {} KiB (gradient and noise, quality {PHOTO_QUALITY}) as {JPEG}, \
         {CLIENTS} clients, up to {photo_count} or {secs} s per rep; each answer checked: \
         201, then 200 with width, height and a thumbnail. Baseline: `images::inspect` (what \
         windi runs) on {cores} blocking threads in the bench process (windi's thumbnail \
         semaphore allows one per core), same count and time bound",
        PHOTO.0,
        PHOTO.1,
        m.photo_bytes / 1024
    );
    Ok(vec![
        Figure::new(
            "upload",
            format!("1 MiB files, {CLIENTS} clients"),
            "uploads/s",
            &per_rep(&m.files, |r| r.per_sec),
        )
        .against("bare axum PUT to a file", &per_rep(&m.bare, |r| r.per_sec))
        .target(Target::RatioAtLeast(0.5))
        .note(format!(
            "POST /chat/attachments then PUT of 1 MiB of random bytes as {GENERIC} to the \
             signed link (windi's folder store, FILES_DIR on the same disk as the baseline's \
             folder), {CLIENTS} clients one upload at a time, up to {file_count} or {secs} s \
             per rep, round-robin over bulk users (≤ {PER_USER} each, none sent); each answer \
             checked: 201, then 200 with the size. Baseline: an axum server in the bench \
             process, PUT /files/{{*key}} writing the body to a file, 200; the same bytes and \
             HTTP client. Files deleted after each run"
        )),
        Figure::new(
            "upload",
            format!("1 MiB files, {CLIENTS} clients, throughput"),
            "MiB/s",
            &per_rep(&m.files, |r| r.per_sec),
        )
        .against("bare axum PUT to a file", &per_rep(&m.bare, |r| r.per_sec)),
        Figure::new(
            "upload",
            "1 MiB file p50, announce + PUT",
            "ms",
            &per_rep(&m.files, |r| r.p50),
        )
        .against("bare PUT", &per_rep(&m.bare, |r| r.p50))
        .note(format!(
            "from the announce to the PUT's answer, per client; of it, the announce alone \
             (POST /chat/attachments, 201): p50 {:.1} ms (median over reps)",
            crate::report::Stats::of(&per_rep(&m.files, |r| r.announce_p50)).median
        )),
        Figure::new(
            "upload",
            "1 MiB file p99, announce + PUT",
            "ms",
            &per_rep(&m.files, |r| r.p99),
        )
        .against("bare PUT", &per_rep(&m.bare, |r| r.p99)),
        Figure::new(
            "upload",
            format!("{}×{} JPEG, {CLIENTS} clients", PHOTO.0, PHOTO.1),
            "images/s",
            &per_rep(&m.photos, |r| r.per_sec),
        )
        .against(
            format!("images::inspect in-process, {cores} threads"),
            &m.inspect,
        )
        .note(photo_note),
        Figure::new(
            "upload",
            format!("{}×{} JPEG p50, announce + PUT", PHOTO.0, PHOTO.1),
            "ms",
            &per_rep(&m.photos, |r| r.p50),
        ),
        Figure::new(
            "upload",
            format!("{}×{} JPEG p99, announce + PUT", PHOTO.0, PHOTO.1),
            "ms",
            &per_rep(&m.photos, |r| r.p99),
        ),
    ])
}

/// One figure of every rep of `runs`.
fn per_rep(runs: &[Run], figure: impl Fn(&Run) -> f64) -> Vec<f64> {
    runs.iter().map(figure).collect()
}

/// Every repetition's samples.
#[derive(Debug, Default)]
struct Measured {
    files: Vec<Run>,
    bare: Vec<Run>,
    photos: Vec<Run>,
    /// Images per second of the in-process baseline.
    inspect: Vec<f64>,
    photo_bytes: usize,
}

/// Starts windi and the bare server, and runs the repetitions (A, B, A, B …).
#[allow(clippy::too_many_arguments)]
async fn measure(
    ctx: &Ctx,
    windi_dir: &Path,
    bare_dir: &Path,
    file_count: usize,
    photo_count: usize,
    budget: Duration,
    warmup: usize,
    cores: usize,
) -> anyhow::Result<Measured> {
    let file = Bytes::from(random_bytes(FILE_BYTES, 11));
    let photo = Bytes::from(tokio::task::spawn_blocking(photo).await??);

    let options = WindiOptions::api_only().env("FILES_DIR", windi_dir.display());
    let windi = Windi::start(ctx, "upload", options).await?;
    let api = windi.api(ctx);
    // Every upload windi takes in the run, each user getting at most PER_USER of them.
    let uploads = ctx.reps * (file_count + photo_count) + 2 * warmup;
    let users = bulk_users(&windi, &api, uploads.div_ceil(PER_USER) + 1, "upload").await?;
    let users = Arc::new(users);
    let next_upload = Arc::new(AtomicUsize::new(0));
    let (bare, server) = bare_server(bare_dir.to_owned()).await?;

    let windi_files = |count: usize| Uploads {
        ctx,
        base: &windi.api_url,
        users: &users,
        next_upload: &next_upload,
        bytes: file.clone(),
        content_type: GENERIC,
        count,
        budget,
    };
    let windi_photos = |count: usize| Uploads {
        bytes: photo.clone(),
        content_type: JPEG,
        ..windi_files(count)
    };

    let mut m = Measured {
        photo_bytes: photo.len(),
        ..Measured::default()
    };
    let outcome = async {
        // Warm both sides up (connections, caches, the database's plans) outside the figures;
        // every answer is checked here too.
        windi_files(warmup).to_windi().await?;
        bare_puts(ctx, bare, &file, warmup, budget).await?;
        windi_photos(warmup / 2).to_windi().await?;
        inspect_in_process(&photo, cores, warmup / 2, budget).await?;
        clear(windi_dir)?;
        clear(bare_dir)?;
        for rep in 0..ctx.reps {
            let files = windi_files(file_count).to_windi().await?;
            clear(windi_dir)?;
            let b = bare_puts(ctx, bare, &file, file_count, budget).await?;
            clear(bare_dir)?;
            let photos = windi_photos(photo_count).to_windi().await?;
            clear(windi_dir)?;
            let inspected = inspect_in_process(&photo, cores, photo_count, budget).await?;
            eprintln!(
                "  upload rep {rep}: 1 MiB files windi {:.0}/s (p50 {:.1} ms of which announce \
                 {:.1}, p99 {:.1} ms), bare {:.0}/s (p50 {:.1} ms, p99 {:.1} ms); JPEG windi \
                 {:.1}/s (p50 {:.0} ms, p99 {:.0} ms), in-process {inspected:.1}/s",
                files.per_sec,
                files.p50,
                files.announce_p50,
                files.p99,
                b.per_sec,
                b.p50,
                b.p99,
                photos.per_sec,
                photos.p50,
                photos.p99
            );
            m.files.push(files);
            m.bare.push(b);
            m.photos.push(photos);
            m.inspect.push(inspected);
        }
        anyhow::Ok(())
    }
    .await;
    server.abort();
    windi.stop().await;
    outcome.map(|()| m)
}

/// One load of uploads to windi: `count` of `bytes` (or `budget`), [`CLIENTS`] at a time.
#[derive(Debug, Clone)]
struct Uploads<'a> {
    ctx: &'a Ctx,
    base: &'a str,
    users: &'a Arc<Vec<User>>,
    /// Numbers every upload of the run, to pick its user round-robin.
    next_upload: &'a Arc<AtomicUsize>,
    bytes: Bytes,
    content_type: &'static str,
    count: usize,
    budget: Duration,
}

impl Uploads<'_> {
    /// Announce + PUT from [`CLIENTS`] clients, each answer checked; uploads per second and
    /// the latencies of the whole (announce to the PUT's answer).
    async fn to_windi(&self) -> anyhow::Result<Run> {
        let issued = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            let (http, issued, users) = (self.ctx.http.clone(), issued.clone(), self.users.clone());
            let (next_upload, bytes) = (self.next_upload.clone(), self.bytes.clone());
            let (base, content_type) = (self.base.to_owned(), self.content_type);
            let (count, budget) = (self.count, self.budget);
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut announces = Vec::new();
                while issued.fetch_add(1, Ordering::Relaxed) < count && started.elapsed() < budget {
                    let n = next_upload.fetch_add(1, Ordering::Relaxed);
                    ensure!(
                        n < users.len() * PER_USER,
                        "more uploads than the users were made for"
                    );
                    let user = &users[n % users.len()];
                    let sent = Instant::now();
                    let announced =
                        upload(&http, &base, &user.token, n, &bytes, content_type).await?;
                    latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                    announces.push((announced - sent).as_secs_f64() * 1e3);
                }
                anyhow::Ok((latencies, announces))
            }));
        }
        finish(tasks, started, self.budget).await
    }
}

/// One upload to windi: announce, then PUT to the link; checks both answers. Answers when
/// the announce's answer had arrived.
async fn upload(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    n: usize,
    bytes: &Bytes,
    content_type: &str,
) -> anyhow::Result<Instant> {
    let filename = if content_type == JPEG {
        format!("photo-{n}.jpg")
    } else {
        format!("file-{n}.bin")
    };
    let response = http
        .post(format!("{base}/chat/attachments"))
        .bearer_auth(token)
        .json(&json!({"filename": filename, "content_type": content_type, "size": bytes.len()}))
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(
        status == reqwest::StatusCode::CREATED,
        "POST /chat/attachments: {status} {text}"
    );
    let announced_at = Instant::now();
    let announced: Value = serde_json::from_str(&text)?;
    let link = &announced["upload"];
    ensure!(
        link["method"] == "PUT",
        "the upload link is not a PUT: {text}"
    );
    let url = link["url"].as_str().context("the upload link has no url")?;
    let url = if url.starts_with('/') {
        format!("{base}{url}")
    } else {
        url.to_owned()
    };
    let mut put = http
        .put(url)
        .body(bytes.clone())
        .timeout(Duration::from_secs(60));
    for (name, value) in link["headers"].as_object().into_iter().flatten() {
        put = put.header(name, value.as_str().context("a header that is not text")?);
    }
    let response = put.send().await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(status.is_success(), "PUT of the upload: {status} {text}");
    let file: Value = serde_json::from_str(&text)?;
    ensure!(
        file["size"].as_u64() == Some(bytes.len() as u64) && file["id"] == announced["id"],
        "the upload answered another file: {text}"
    );
    if content_type == JPEG {
        ensure!(
            file["width"].as_u64() == Some(u64::from(PHOTO.0))
                && file["height"].as_u64() == Some(u64::from(PHOTO.1))
                && file["thumbnail"].is_string(),
            "the photo was not measured or has no thumbnail: {text}"
        );
    }
    Ok(announced_at)
}

/// A client task's latencies (ms): of the whole, and of the announce alone (none for the bare
/// server).
type Latencies = (Vec<f64>, Vec<f64>);

/// Waits for the client tasks; the rate (answers per second) and p50/p99 of their latencies.
async fn finish(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Latencies>>>,
    started: Instant,
    budget: Duration,
) -> anyhow::Result<Run> {
    let mut latencies = Vec::new();
    let mut announces = Vec::new();
    for task in tasks {
        let (whole, announce) = task.await.context("a client task panicked")??;
        latencies.extend(whole);
        announces.extend(announce);
    }
    ensure!(
        !latencies.is_empty(),
        "no upload finished within {budget:?}"
    );
    let per_sec = latencies.len() as f64 / started.elapsed().as_secs_f64();
    let (p50, p99) = probe::p50_p99(latencies);
    let announce_p50 = crate::report::quantile(&mut announces, 0.5);
    Ok(Run {
        per_sec,
        p50,
        p99,
        announce_p50,
    })
}

/// The bare server: `PUT /files/{*key}` writes the body to a file in `dir` and answers 200
/// with its size. Answers its address and the task serving it (abort it to stop).
async fn bare_server(
    dir: PathBuf,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    use axum::{
        Json, Router,
        extract::{DefaultBodyLimit, Path as UrlPath, State},
        http::StatusCode,
        routing::put,
    };

    async fn store(
        State(dir): State<Arc<PathBuf>>,
        UrlPath(key): UrlPath<String>,
        body: Bytes,
    ) -> Result<Json<Value>, StatusCode> {
        let name: String = key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        tokio::fs::write(dir.join(name), &body)
            .await
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        Ok(Json(json!({"size": body.len()})))
    }

    let router = Router::new()
        .route("/files/{*key}", put(store))
        // windi's limit for an upload (25 MiB).
        .layer(DefaultBodyLimit::max(25 * 1024 * 1024 + 1))
        .with_state(Arc::new(dir));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((
        addr,
        tokio::spawn(async move { axum::serve(listener, router).await }),
    ))
}

/// `count` PUTs of `bytes` to the bare server (or `budget`) from [`CLIENTS`] clients, each
/// answer checked; PUTs per second and their latencies.
async fn bare_puts(
    ctx: &Ctx,
    addr: SocketAddr,
    bytes: &Bytes,
    count: usize,
    budget: Duration,
) -> anyhow::Result<Run> {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let issued = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let (http, issued, bytes) = (ctx.http.clone(), issued.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= count || started.elapsed() >= budget {
                    break;
                }
                let sent = Instant::now();
                let response = http
                    .put(format!("http://{addr}/files/uploads/{run}-{n}"))
                    .header(reqwest::header::CONTENT_TYPE, GENERIC)
                    .body(bytes.clone())
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await?;
                let status = response.status();
                let text = response.text().await?;
                ensure!(
                    status.is_success(),
                    "PUT to the bare server: {status} {text}"
                );
                let answer: Value = serde_json::from_str(&text)?;
                ensure!(
                    answer["size"].as_u64() == Some(bytes.len() as u64),
                    "the bare server answered another size: {text}"
                );
                latencies.push(sent.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok((latencies, Vec::new()))
        }));
    }
    finish(tasks, started, budget).await
}

/// `count` `images::inspect` of the photo (or `budget`) on `threads` blocking threads, each
/// result checked; images per second.
async fn inspect_in_process(
    photo: &Bytes,
    threads: usize,
    count: usize,
    budget: Duration,
) -> anyhow::Result<f64> {
    let issued = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(threads);
    for _ in 0..threads {
        let (issued, done, photo) = (issued.clone(), done.clone(), photo.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            while issued.fetch_add(1, Ordering::Relaxed) < count && started.elapsed() < budget {
                let found = images::inspect(&photo, JPEG).map_err(anyhow::Error::msg)?;
                ensure!(
                    (found.width, found.height) == PHOTO && !found.thumbnail.is_empty(),
                    "inspect found {}×{}",
                    found.width,
                    found.height
                );
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("an inspect thread panicked")??;
    }
    let done = done.load(Ordering::Relaxed);
    ensure!(done > 0, "no image inspected within {budget:?}");
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// `n` bytes of the generator's PRNG (incompressible, no known signature at the start).
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The test photo: [`PHOTO`] pixels of a diagonal colour gradient under ±24 of noise per
/// channel (about what a phone photo's detail costs a JPEG), quality [`PHOTO_QUALITY`].
fn photo() -> anyhow::Result<Vec<u8>> {
    let mut rng = Rng::new(85);
    let (w, h) = PHOTO;
    let image = image::RgbImage::from_fn(w, h, |x, y| {
        let mut noisy = |base: u32| {
            let noise = rng.below(49) as i64 - 24;
            (i64::from(base % 256) + noise).clamp(0, 255) as u8
        };
        image::Rgb([
            noisy(x * 255 / w),
            noisy(y * 255 / h),
            noisy((x + y) * 255 / (w + h)),
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, PHOTO_QUALITY)
        .encode_image(&image)?;
    if images::inspect(&out, JPEG).map(|i| (i.width, i.height)) != Ok(PHOTO) {
        bail!(
            "the test photo does not read back as {}×{}",
            PHOTO.0,
            PHOTO.1
        );
    }
    Ok(out)
}

/// Deletes the files under `dir` (not the folders, which a running windi may be about to
/// write into).
fn clear(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            clear(&entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
