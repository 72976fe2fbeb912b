//! Files sent with messages: the limits, a filename made safe to show and to save, and the
//! rule that a file's bytes must be what its declared type says.
//!
//! Pure: the bytes are given, never read here. Which types exist is the `infer` crate's table
//! of magic numbers (a maintained one, instead of windi's own list).

use crate::domain::error::{Error, Result};

/// The largest file, in bytes (25 MiB, as most messengers' defaults).
pub const MAX_FILE_BYTES: i64 = 25 * 1024 * 1024;
/// The most files one message carries.
pub const MAX_PER_MESSAGE: usize = 10;
/// The most bytes one user's files may hold, sent or not (1 GiB).
pub const USER_QUOTA_BYTES: i64 = 1024 * 1024 * 1024;
/// The most uploads one user may have begun and not yet sent.
pub const MAX_UNSENT: i64 = 50;
/// How long an upload link works, and a download link, in seconds.
pub const UPLOAD_LINK_SECONDS: i64 = 15 * 60;
pub const DOWNLOAD_LINK_SECONDS: i64 = 5 * 60;
/// Uploads not sent with a message this long after they began are deleted, in hours.
pub const UNSENT_HOURS: i64 = 24;
/// The longest filename kept, in bytes of UTF-8 (what most filesystems store).
pub const MAX_FILENAME_BYTES: usize = 255;
/// The longest content type accepted.
pub const MAX_CONTENT_TYPE_CHARS: usize = 127;

/// A filename as the client gave it, made safe: only the last path component, without
/// control, bidirectional-override or zero-width characters, without the characters Windows
/// refuses in names (`< > : " / \ | ? *`, each made `_`), trimmed of spaces and dots, at most
/// [`MAX_FILENAME_BYTES`] with its extension kept; `file` when nothing is left.
pub fn filename(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !super::validate::is_invisible_format(*c))
        .map(|c| match c {
            '<' | '>' | ':' | '"' | '|' | '?' | '*' => '_',
            c => c,
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| c.is_whitespace() || c == '.');
    if trimmed.is_empty() {
        return "file".to_owned();
    }
    if trimmed.len() <= MAX_FILENAME_BYTES {
        return trimmed.to_owned();
    }
    // Keep a short extension; cut the stem on a character boundary.
    let (stem, ext) = match trimmed.rfind('.') {
        Some(dot) if trimmed.len() - dot <= 16 => trimmed.split_at(dot),
        _ => (trimmed, ""),
    };
    let mut end = MAX_FILENAME_BYTES - ext.len();
    while !stem.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ext}", &stem[..end])
}

/// A declared content type: `type/subtype`, lower-cased, parameters (`; charset=…`) dropped.
/// 422 naming `content_type` when it is not one.
pub fn content_type(raw: &str) -> Result<String> {
    let essence = raw
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match essence.split_once('/') {
        Some((kind, sub))
            if essence.len() <= MAX_CONTENT_TYPE_CHARS && token(kind) && token(sub) =>
        {
            Ok(essence)
        }
        _ => Err(Error::invalid(
            "content_type",
            "must be a media type such as image/png or application/pdf",
        )),
    }
}

/// The declared size: 1..=[`MAX_FILE_BYTES`]. 413-like refusals are 422 naming `size`, before
/// any byte is sent.
pub fn size(size: i64) -> Result<()> {
    if size < 1 {
        return Err(Error::invalid("size", "must be at least 1 byte"));
    }
    if size > MAX_FILE_BYTES {
        return Err(Error::invalid(
            "size",
            format!("is {size} bytes; the limit is {MAX_FILE_BYTES} (25 MiB)"),
        ));
    }
    Ok(())
}

/// The ids a message carries: at most [`MAX_PER_MESSAGE`], each once. 422 naming
/// `attachments`.
pub fn ids(ids: &[i64]) -> Result<()> {
    if ids.len() > MAX_PER_MESSAGE {
        return Err(Error::invalid(
            "attachments",
            format!(
                "{} files; a message carries at most {MAX_PER_MESSAGE}",
                ids.len()
            ),
        ));
    }
    if let Some((_, id)) = ids
        .iter()
        .enumerate()
        .find(|(i, id)| ids[..*i].contains(id))
    {
        return Err(Error::invalid(
            "attachments",
            format!("{id} is listed twice"),
        ));
    }
    Ok(())
}

/// The type that claims nothing about the bytes: any file may be declared it (it is then
/// served as a download, never shown).
pub const GENERIC: &str = "application/octet-stream";

/// The type the bytes are, when they start with a signature `infer` knows.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    infer::get(head).map(|t| t.mime_type())
}

/// Whether a file whose first bytes are `head` may be kept as `declared`: when the bytes have
/// a known signature, the declared type must be that type (a "PNG" that is not one, or a
/// program declared as text, is refused); bytes with no known signature may be declared
/// anything but a type that has one (a declared image must look like that image); and
/// [`GENERIC`] claims nothing, so it fits any bytes. Answers the refusal's reason.
pub fn matches(declared: &str, head: &[u8]) -> std::result::Result<(), String> {
    if declared == GENERIC {
        return Ok(());
    }
    match sniff(head) {
        Some(actual) if same_type(actual, declared) => Ok(()),
        Some(actual) => Err(format!(
            "the file was declared {declared} but its bytes are {actual}"
        )),
        None if has_signature(declared) => Err(format!(
            "the file was declared {declared} but its bytes are not {declared}"
        )),
        None => Ok(()),
    }
}

/// The usual name of a type some clients spell otherwise.
fn canonical(content_type: &str) -> &str {
    match content_type {
        "image/jpg" | "image/pjpeg" => "image/jpeg",
        "audio/mp3" => "audio/mpeg",
        "application/x-zip-compressed" => "application/zip",
        t => t,
    }
}

/// Types whose names differ but mean the same bytes.
fn same_type(sniffed: &str, declared: &str) -> bool {
    canonical(sniffed) == canonical(declared)
}

/// Whether `infer` would recognise bytes of type `declared` (so their absence is a lie).
fn has_signature(declared: &str) -> bool {
    infer::is_mime_supported(canonical(declared))
}

/// Image types windi decodes to measure and to make a thumbnail of.
pub fn is_image(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0\0\x10JFIF\0";
    const PDF: &[u8] = b"%PDF-1.7\n";

    #[test]
    fn filenames_lose_paths_controls_and_reserved_characters() {
        assert_eq!(filename("../../etc/passwd"), "passwd");
        assert_eq!(filename("C:\\Users\\me\\cat.png"), "cat.png");
        assert_eq!(filename("a\u{202E}gpj.exe"), "agpj.exe");
        assert_eq!(filename("re:port?<1>.pdf"), "re_port__1_.pdf");
        assert_eq!(filename(" \n.. "), "file");
        assert_eq!(filename("отчёт 2026.docx"), "отчёт 2026.docx");
        let long = format!("{}.tar.gz", "я".repeat(300));
        let kept = filename(&long);
        assert!(kept.len() <= MAX_FILENAME_BYTES, "{}", kept.len());
        assert!(kept.ends_with("я.gz"), "{kept}");
    }

    #[test]
    fn content_types_are_media_types_lower_cased_without_parameters() {
        assert_eq!(content_type("Image/PNG").unwrap(), "image/png");
        assert_eq!(
            content_type("text/plain; charset=utf-8").unwrap(),
            "text/plain"
        );
        for bad in [
            "",
            "png",
            "image/",
            "/png",
            "image/png x",
            "a/b/c",
            "тип/вид",
        ] {
            assert!(
                content_type(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("content_type"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sizes_are_positive_and_at_most_25_mib() {
        assert!(size(1).is_ok());
        assert!(size(MAX_FILE_BYTES).is_ok());
        assert!(size(0).is_err());
        assert!(
            size(MAX_FILE_BYTES + 1)
                .unwrap_err()
                .to_string()
                .contains("the limit is 26214400")
        );
    }

    #[test]
    fn a_message_carries_at_most_ten_files_each_once() {
        assert!(ids(&[]).is_ok());
        assert!(ids(&[1, 2, 3]).is_ok());
        let twice = ids(&[1, 2, 1]).unwrap_err().to_string();
        assert!(twice.contains("attachments: 1 is listed twice"), "{twice}");
        let many: Vec<i64> = (1..=11).collect();
        let over = ids(&many).unwrap_err().to_string();
        assert!(over.contains("at most 10"), "{over}");
    }

    #[test]
    fn the_bytes_must_be_what_the_declared_type_says() {
        assert!(matches("image/png", PNG).is_ok());
        assert!(matches("image/jpg", JPEG).is_ok(), "an alias of image/jpeg");
        assert!(matches("application/pdf", PDF).is_ok());
        let lie = matches("image/png", b"GIF89a....").unwrap_err();
        assert!(lie.contains("its bytes are image/gif"), "{lie}");
        let not_png = matches("image/png", b"just some text").unwrap_err();
        assert!(not_png.contains("are not image/png"), "{not_png}");
        assert!(
            matches("text/plain", PNG).is_err(),
            "an image declared as text"
        );
        assert!(matches("text/plain", b"hello").is_ok());
        assert!(matches("application/octet-stream", PNG).is_ok());
    }
}
