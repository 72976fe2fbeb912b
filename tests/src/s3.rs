//! A real S3-protocol server for the attachment tests, in process on a free loopback port.
//!
//! The attachment tests talk to a real S3 server rather than a mock of the client: windi's own
//! S3 client signs its requests (SigV4) and hands out presigned URLs, and only a server that
//! checks those signatures, stores the bytes and answers with S3's own status codes and XML
//! errors shows that the client, the signing and the URLs really work together. The server is
//! [`s3s`] over [`s3s_fs`]: objects are plain files in a temporary folder, one subfolder per
//! bucket, so a test can also look at what was stored ([`S3Server::object_count`],
//! [`S3Server::has_object`]) without going through S3.
//!
//! Layout of the folder, as `s3s-fs` 0.14.1 writes it: the object with key `a/b` of bucket
//! `windi-test` is the file `<root>/windi-test/a/b`; its metadata
//! (`.bucket-*.object-*.metadata.json`, `.bucket-*.object-*.internal.json`), the files being
//! written (`.tmp.*.internal.part`) and the multipart-upload state (`.upload-*.json`,
//! `.upload_id-*.part-*`) all live in `<root>` itself, never inside a bucket folder. A key
//! ending in `/` is stored as a folder, and deleting a nested key leaves its (empty) folders
//! behind; neither is counted as an object here.

use std::path::{Path, PathBuf};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use s3s::{auth::SimpleAuth, service::S3ServiceBuilder};
use tokio::{net::TcpListener, task::JoinSet};

/// A real S3 server for one test: its own temporary folder, a bucket, and credentials. It
/// checks SigV4 signatures (headers and presigned URLs) against these credentials: unsigned
/// requests and expired presigned URLs get `403 AccessDenied`, a wrong signature `403
/// SignatureDoesNotMatch`. Stops (the accept task is aborted, and with
/// it every open connection) and removes its folder when dropped.
#[derive(Debug)]
pub struct S3Server {
    /// Where to send requests, path-style: `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The one bucket, already created: `windi-test`.
    pub bucket: String,
    /// The access key id requests must be signed with.
    pub access_key: String,
    /// The secret key requests must be signed with.
    pub secret_key: String,
    /// The region to sign for: `us-east-1`.
    pub region: String,
    root: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// Starts a server on `127.0.0.1:0` over a fresh folder under the system's temporary
    /// folder, with the bucket `windi-test` in it. Must run inside a Tokio runtime.
    pub async fn start() -> Self {
        let root = std::env::temp_dir().join(crate::unique("s3"));
        let bucket = "windi-test".to_owned();
        std::fs::create_dir_all(root.join(&bucket)).unwrap();

        let access_key = "windi-test-access-key".to_owned();
        let secret_key = "windi-test-secret-key-0123456789".to_owned();
        let fs = s3s_fs::FileSystem::new(&root)
            .unwrap_or_else(|e| panic!("s3s-fs over {}: {e:?}", root.display()));
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(
            access_key.clone(),
            secret_key.clone(),
        ));
        let service = builder.build();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // The connections belong to this task: aborting it drops the set, which aborts them.
            let mut connections = JoinSet::new();
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    // E.g. out of file descriptors: give the others time to close.
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                while connections.try_join_next().is_some() {}
                let service = service.clone();
                connections.spawn(async move {
                    // A client hanging up mid-request is not the server's failure.
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .http1_only()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });

        Self {
            endpoint: format!("http://{addr}"),
            bucket,
            access_key,
            secret_key,
            region: "us-east-1".to_owned(),
            root,
            task,
        }
    }

    /// How many objects the bucket holds now: the files under the bucket's folder (folders,
    /// which `s3s-fs` makes for nested keys and for keys ending in `/`, are not counted).
    pub fn object_count(&self) -> usize {
        count_files(&self.root.join(&self.bucket))
    }

    /// windi's file store on this server's bucket, path-style, signed with its keys.
    pub fn blobs(&self) -> windi_shared::blobs::Blobs {
        let builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_virtual_hosted_style_request(false);
        windi_shared::blobs::Blobs::s3(builder).unwrap()
    }

    /// Whether an object with this key exists.
    pub fn has_object(&self, key: &str) -> bool {
        self.root.join(&self.bucket).join(key).is_file()
    }
}

/// The regular files under `dir`, at any depth (none if it cannot be read).
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => count_files(&entry.path()),
            Ok(kind) if kind.is_file() => 1,
            _ => 0,
        })
        .sum()
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    /// One HTTP/1.1 request over a fresh connection, the whole response back as text (plain
    /// TCP: reqwest would need a rustls crypto provider installed first).
    async fn send(endpoint: &str, method: &str, path: &str, body: &str) -> std::io::Result<String> {
        let host = endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(host).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    #[tokio::test]
    async fn refuses_unsigned_requests_and_counts_the_bucket_files() {
        let s3 = S3Server::start().await;
        let path = format!("/{}/some/key.bin", s3.bucket);

        let put = send(&s3.endpoint, "PUT", &path, "hello").await.unwrap();
        assert!(put.starts_with("HTTP/1.1 403 "), "{put}");
        assert!(put.contains("AccessDenied"), "{put}");
        let get = send(&s3.endpoint, "GET", &path, "").await.unwrap();
        assert!(get.starts_with("HTTP/1.1 403 "), "{get}");
        assert_eq!(s3.object_count(), 0);
        assert!(!s3.has_object("some/key.bin"));

        // What the server would have stored: files under the bucket folder count, folders and
        // s3s-fs's own files beside the bucket do not.
        let bucket_dir = s3.root.join(&s3.bucket);
        std::fs::create_dir_all(bucket_dir.join("some/empty")).unwrap();
        std::fs::write(bucket_dir.join("some/key.bin"), "hello").unwrap();
        std::fs::write(bucket_dir.join("top.bin"), "hi").unwrap();
        std::fs::write(s3.root.join(".tmp.0.internal.part"), "").unwrap();
        assert_eq!(s3.object_count(), 2);
        assert!(s3.has_object("some/key.bin"));
        assert!(s3.has_object("top.bin"));
        assert!(!s3.has_object("some"));

        let (endpoint, root) = (s3.endpoint.clone(), s3.root.clone());
        drop(s3);
        assert!(!root.exists());
        // Give the runtime a turn to drop the aborted task, and with it the listener.
        tokio::task::yield_now().await;
        let after = send(&endpoint, "GET", &path, "").await;
        assert!(
            !matches!(&after, Ok(response) if response.starts_with("HTTP/")),
            "still serving: {after:?}"
        );
    }
}
