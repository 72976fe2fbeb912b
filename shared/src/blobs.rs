//! Where the bytes of attachments live: a folder or an S3 bucket behind one interface (the
//! `object_store` crate, so windi writes no storage client of its own), and the short-lived
//! links through which clients upload and download them without the bytes passing through an
//! API function.
//!
//! - **A folder** (the local binary's default, under `WINDI_DATA_DIR`): `object_store`'s local
//!   filesystem has no signer, so windi signs its own links (HMAC-SHA256 with a key derived
//!   from the token secret, and an expiry) and serves them itself at `/files/{key}`.
//! - **S3** (compose, Lambda): presigned URLs. An upload link pins the `Content-Type` the
//!   object is stored with; a download link pins the type and the `Content-Disposition` it is
//!   answered with, so a file never decides how a browser treats it.
//!
//! Neither kind of link can bound the size of what is uploaded (S3 does not sign
//! `Content-Length`), so the service checks an object's size and first bytes after upload.
//! Beside the store and the events: imports only the domain.

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use hmac::{KeyInit, Mac};
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload,
    aws::{AmazonS3, AmazonS3Builder},
    local::LocalFileSystem,
    path::Path,
    signer::{SignedUrlOptions, Signer},
};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Where the bytes go, as the operator configured it.
#[derive(Clone)]
pub enum Settings {
    /// A folder on this machine, served by windi with links signed by `secret`.
    Folder { root: PathBuf, secret: Vec<u8> },
    /// An S3 bucket. Credentials and region come from the usual `AWS_*` variables (on Lambda,
    /// the function's role); `endpoint` names an S3-compatible server other than AWS.
    S3 {
        bucket: String,
        endpoint: Option<String>,
    },
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Folder { root, .. } => f.debug_struct("Folder").field("root", root).finish(),
            Self::S3 { bucket, endpoint } => f
                .debug_struct("S3")
                .field("bucket", bucket)
                .field("endpoint", endpoint)
                .finish(),
        }
    }
}

/// A storage failure. Not the client's fault: the service answers it 503.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such object")]
    NotFound,
    #[error("object storage: {0}")]
    Storage(String),
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => Self::NotFound,
            e => Self::Storage(e.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// An object's bytes as they are read.
pub type Chunks = futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>;

/// A request a client makes with a link: the URL, and the headers it must send with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub method: &'static str,
    /// Absolute for S3; for the folder a path on windi's own origin (`/files/…`), which the
    /// HTTP edge makes absolute.
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
}

/// How a download is answered: the type and whether the browser may show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presentation {
    pub content_type: String,
    pub filename: String,
    /// Shown in the page (images windi decoded itself); otherwise saved as a file.
    pub inline: bool,
}

impl Presentation {
    /// The `Content-Disposition` value: the filename as RFC 6266's `filename*`, percent-encoded
    /// UTF-8, with a plain ASCII fallback.
    pub fn disposition(&self) -> String {
        let kind = if self.inline { "inline" } else { "attachment" };
        let ascii: String = self
            .filename
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '%' || c == ' ' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{}",
            url::form_urlencoded::byte_serialize(self.filename.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        )
    }
}

/// The object store and how its links are made. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    links: Links,
}

#[derive(Clone)]
enum Links {
    /// windi signs and serves the links itself.
    Folder {
        key: Arc<[u8]>,
    },
    S3(Arc<AmazonS3>),
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blobs")
            .field("store", &self.store.to_string())
            .finish_non_exhaustive()
    }
}

impl Blobs {
    /// Opens the folder (creating it) or builds the S3 client. The error names what is wrong.
    pub fn open(settings: &Settings) -> std::result::Result<Self, String> {
        match settings {
            Settings::Folder { root, secret } => Self::folder(root.clone(), secret),
            Settings::S3 { bucket, endpoint } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                Self::s3(builder)
            }
        }
    }

    /// A folder store whose links are signed with a key derived from `secret`.
    pub fn folder(root: PathBuf, secret: &[u8]) -> std::result::Result<Self, String> {
        std::fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create the files folder {}: {e}", root.display()))?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| format!("cannot use the files folder {}: {e}", root.display()))?
            .with_automatic_cleanup(true);
        // A key of its own, so a file link can never be mistaken for a token or the reverse.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
            .map_err(|e| format!("the token secret cannot key HMAC: {e}"))?;
        mac.update(b"windi file links v1");
        Ok(Self {
            store: Arc::new(store),
            links: Links::Folder {
                key: mac.finalize().into_bytes().to_vec().into(),
            },
        })
    }

    /// An S3 store from a builder (tests and `open` fill in the endpoint and credentials).
    pub fn s3(builder: AmazonS3Builder) -> std::result::Result<Self, String> {
        install_tls_provider();
        let s3 = Arc::new(
            builder
                .build()
                .map_err(|e| format!("cannot configure the S3 bucket: {e}"))?,
        );
        Ok(Self {
            store: s3.clone(),
            links: Links::S3(s3),
        })
    }

    /// Whether windi serves the links itself (`/files/…`).
    pub fn is_folder(&self) -> bool {
        matches!(self.links, Links::Folder { .. })
    }

    /// A link to PUT the bytes of `key`, valid for `ttl`. The client must send `Content-Type:
    /// content_type` (S3 refuses the upload otherwise).
    pub async fn upload_link(&self, key: &str, content_type: &str, ttl: Duration) -> Result<Link> {
        let headers = vec![("Content-Type", content_type.to_owned())];
        let url = match &self.links {
            Links::Folder { key: secret } => {
                let exp = expiry(ttl);
                let sig = sign(secret, &["PUT", key, &exp.to_string()]);
                format!("/files/{key}?exp={exp}&sig={sig}")
            }
            Links::S3(s3) => {
                let options = SignedUrlOptions::new().with_signed_header(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_str(content_type)
                        .map_err(|e| Error::Storage(e.to_string()))?,
                );
                s3.signed_url_opts(http::Method::PUT, &Path::from(key), ttl, &options)
                    .await?
                    .to_string()
            }
        };
        Ok(Link {
            method: "PUT",
            url,
            headers,
        })
    }

    /// A link to GET `key`, answered as `shown`, valid for `ttl`.
    pub async fn download_link(
        &self,
        key: &str,
        shown: &Presentation,
        ttl: Duration,
    ) -> Result<String> {
        match &self.links {
            Links::Folder { key: secret } => {
                let exp = expiry(ttl).to_string();
                let inline = if shown.inline { "1" } else { "0" };
                let sig = sign(
                    secret,
                    &[
                        "GET",
                        key,
                        &exp,
                        &shown.content_type,
                        &shown.filename,
                        inline,
                    ],
                );
                let query = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("exp", &exp)
                    .append_pair("type", &shown.content_type)
                    .append_pair("name", &shown.filename)
                    .append_pair("inline", inline)
                    .append_pair("sig", &sig)
                    .finish();
                Ok(format!("/files/{key}?{query}"))
            }
            Links::S3(s3) => {
                let options = SignedUrlOptions::new().with_query([
                    ("response-content-type", shown.content_type.clone()),
                    ("response-content-disposition", shown.disposition()),
                ]);
                Ok(s3
                    .signed_url_opts(http::Method::GET, &Path::from(key), ttl, &options)
                    .await?
                    .to_string())
            }
        }
    }

    /// Whether a folder link's signature is windi's and it has not expired. `parts` are what
    /// the link was signed over after the method and key, in order (see the two link makers).
    /// Always false for S3, whose links S3 checks.
    pub fn verify(
        &self,
        method: &str,
        key: &str,
        exp: i64,
        extra: &[&str],
        signature: &str,
    ) -> bool {
        let Links::Folder { key: secret } = &self.links else {
            return false;
        };
        if exp < chrono::Utc::now().timestamp() {
            return false;
        }
        let Ok(given) = hex_decode(signature) else {
            return false;
        };
        let exp = exp.to_string();
        let mut parts = vec![method, key, exp.as_str()];
        parts.extend_from_slice(extra);
        mac(secret, &parts).verify_slice(&given).is_ok()
    }

    /// The size of `key`, or [`Error::NotFound`].
    pub async fn size(&self, key: &str) -> Result<u64> {
        Ok(self.store.head(&Path::from(key)).await?.size)
    }

    /// The first `len` bytes of `key` (fewer if it is shorter).
    pub async fn head_bytes(&self, key: &str, len: u64) -> Result<Vec<u8>> {
        let path = Path::from(key);
        let size = self.store.head(&path).await?.size;
        if size == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .store
            .get_range(&path, 0..len.min(size))
            .await?
            .to_vec())
    }

    /// All of `key` (the caller has checked its size).
    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        Ok(self
            .store
            .get(&Path::from(key))
            .await?
            .bytes()
            .await?
            .to_vec())
    }

    /// `key`'s size and its bytes as a stream of chunks, for the folder's own download route.
    pub async fn stream(&self, key: &str) -> Result<(u64, Chunks)> {
        use futures::StreamExt;
        let got = self.store.get(&Path::from(key)).await?;
        let size = got.meta.size;
        let chunks = got
            .into_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .boxed();
        Ok((size, chunks))
    }

    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&Path::from(key), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// Moves `from` to `to` (replacing it); [`Error::NotFound`] if `from` is not there.
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.store
            .rename(&Path::from(from), &Path::from(to))
            .await?;
        Ok(())
    }

    /// Deletes `key`; one already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Installs ring as the process's TLS crypto provider. object_store's S3 client needs reqwest
/// with rustls, and reqwest's `rustls` feature would bring its own provider, aws-lc (a long C
/// build), so windi takes `rustls-no-provider` and installs ring, which it links already. Cargo
/// unifies reqwest's features across the workspace, so every reqwest client in the process
/// (the CLI's, the tests', the benchmarks') needs this first: each binary calls it at start.
/// Calling it again is harmless (the first provider stays).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Unix seconds `ttl` from now.
fn expiry(ttl: Duration) -> i64 {
    chrono::Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2)
}

/// HMAC over the parts, each ended by a newline (no part holds one: keys are hex, types are
/// tokens, filenames have no control characters), so no two part lists sign alike.
fn mac(secret: &[u8], parts: &[&str]) -> HmacSha256 {
    // HMAC takes a key of any length.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    for part in parts {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    mac
}

fn sign(secret: &[u8], parts: &[&str]) -> String {
    mac(secret, parts)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hex_decode(hex: &str) -> std::result::Result<Vec<u8>, ()> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| ()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn folder() -> (Blobs, PathBuf) {
        let root = std::env::temp_dir().join(format!(
            "windi-blobs-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap()
        ));
        (Blobs::folder(root.clone(), b"secret").unwrap(), root)
    }

    fn query(url: &str) -> std::collections::HashMap<String, String> {
        let (_, q) = url.split_once('?').unwrap();
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn a_folder_upload_link_verifies_and_a_changed_one_does_not() {
        let (blobs, root) = folder();
        let link = futures::executor::block_on(blobs.upload_link(
            "files/abc",
            "image/png",
            Duration::from_secs(60),
        ))
        .unwrap();
        let q = query(&link.url);
        let exp: i64 = q["exp"].parse().unwrap();
        assert!(blobs.verify("PUT", "files/abc", exp, &[], &q["sig"]));
        assert!(!blobs.verify("PUT", "files/abd", exp, &[], &q["sig"]));
        assert!(!blobs.verify("GET", "files/abc", exp, &[], &q["sig"]));
        assert!(!blobs.verify("PUT", "files/abc", exp + 1, &[], &q["sig"]));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_folder_download_link_signs_how_the_file_is_shown() {
        let (blobs, root) = folder();
        let shown = Presentation {
            content_type: "application/octet-stream".into(),
            filename: "отчёт 1.pdf".into(),
            inline: false,
        };
        let url = futures::executor::block_on(blobs.download_link(
            "files/abc",
            &shown,
            Duration::from_secs(60),
        ))
        .unwrap();
        let q = query(&url);
        let exp: i64 = q["exp"].parse().unwrap();
        let extra = [q["type"].as_str(), q["name"].as_str(), q["inline"].as_str()];
        assert!(blobs.verify("GET", "files/abc", exp, &extra, &q["sig"]));
        let as_html = ["text/html", q["name"].as_str(), "1"];
        assert!(!blobs.verify("GET", "files/abc", exp, &as_html, &q["sig"]));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn an_expired_folder_link_does_not_verify() {
        let (blobs, root) = folder();
        let exp = chrono::Utc::now().timestamp() - 1;
        let sig = match &blobs.links {
            Links::Folder { key } => sign(key, &["PUT", "files/abc", &exp.to_string()]),
            Links::S3(_) => unreachable!(),
        };
        assert!(!blobs.verify("PUT", "files/abc", exp, &[], &sig));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn the_disposition_keeps_a_unicode_name_and_gives_an_ascii_fallback() {
        let shown = Presentation {
            content_type: "image/png".into(),
            filename: "фото \"1\".png".into(),
            inline: true,
        };
        assert_eq!(
            shown.disposition(),
            "inline; filename=\"____ _1_.png\"; \
             filename*=UTF-8''%D1%84%D0%BE%D1%82%D0%BE%20%221%22.png"
        );
    }
}
