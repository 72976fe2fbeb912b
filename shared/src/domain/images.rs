//! An uploaded image's dimensions and its thumbnail.
//!
//! Bounded, so that a decompression bomb (a few kilobytes whose header promises 100000×100000
//! pixels) is refused with an error before anything is allocated, instead of taking the
//! process's memory or crashing it: the sides are checked against [`MAX_SIDE`] and the decoded
//! size against [`MAX_DECODE_BYTES`] as soon as the header is read, before the pixels are.
//!
//! Pure: the bytes are given and the thumbnail is returned, nothing is read or written here, so
//! the tests need no files, no store and no runtime. The decoding is the `image` crate's (no
//! codec windi wrote); only the first frame of an animation is decoded.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

/// The longest side an image may have, in pixels.
pub const MAX_SIDE: u32 = 12_000;
/// The most memory decoding one image may take (bytes).
pub const MAX_DECODE_BYTES: u64 = 256 * 1024 * 1024;
/// The thumbnail fits in a square of this side, aspect kept (never enlarged).
pub const THUMBNAIL_SIDE: u32 = 320;
/// The thumbnail's content type.
pub const THUMBNAIL_TYPE: &str = "image/jpeg";

/// The JPEG quality of thumbnails (1–100).
const THUMBNAIL_QUALITY: u8 = 80;

/// What [`inspect`] found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The width in pixels, as the image is shown (after its EXIF orientation).
    pub width: u32,
    /// The height in pixels, as the image is shown (after its EXIF orientation).
    pub height: u32,
    /// JPEG bytes, quality 80: the image fitted in a [`THUMBNAIL_SIDE`] square (never
    /// enlarged), oriented, and any transparency composited onto white.
    pub thumbnail: Vec<u8>,
}

/// Measures an image and makes its thumbnail ([`THUMBNAIL_TYPE`]).
///
/// `declared` is one of "image/png", "image/jpeg", "image/gif", "image/webp"; the bytes are
/// decoded as that type only. Err is a human-readable reason such as "the image is
/// 100000×100000 pixels; the limit is 12000 on a side" or "the bytes are not a readable
/// image/png: <decoder's message>": an unknown type, bytes that are not a whole image of the
/// declared type, a side over [`MAX_SIDE`], or decoding that would take more than
/// [`MAX_DECODE_BYTES`]. Never panics, whatever the bytes.
pub fn inspect(bytes: &[u8], declared: &str) -> Result<Inspected, String> {
    let format = format_of(declared)?;
    let unreadable = |e: ImageError| format!("the bytes are not a readable {declared}: {e}");

    // The sides are left out of the reader's limits so that a too-large image is reported with
    // its size (the decoders would only say "limits exceeded"); they are checked just below,
    // and then given to the decoder as well.
    let mut header_limits = Limits::default();
    header_limits.max_image_width = None;
    header_limits.max_image_height = None;
    header_limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(header_limits);
    let mut decoder = reader.into_decoder().map_err(unreadable)?;

    let (width, height) = decoder.dimensions();
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "the image is {width}×{height} pixels; the limit is {MAX_SIDE} on a side"
        ));
    }
    if width == 0 || height == 0 {
        return Err(format!(
            "the image is {width}×{height} pixels: it has none to show"
        ));
    }

    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    // `into_decoder` hands the decoder the limits but never reserves the decoded buffer itself
    // against `max_alloc`: reserve it here, or a small file could still decode to gigabytes.
    let needed = decoder.total_bytes();
    if limits.reserve(needed).is_err() {
        return Err(format!(
            "the image is {width}×{height} pixels and would take {} MiB to decode; the limit is {} MiB",
            needed.div_ceil(1024 * 1024),
            MAX_DECODE_BYTES / (1024 * 1024)
        ));
    }
    decoder.set_limits(limits).map_err(unreadable)?;

    // A broken EXIF block is no reason to refuse the pixels: show them as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(unreadable)?;

    let mut small = if width > THUMBNAIL_SIDE || height > THUMBNAIL_SIDE {
        image.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    } else {
        image
    };
    // Oriented after shrinking (the box is square, so the result is the same), which turns a
    // copy of the thumbnail instead of a copy of the whole image.
    small.apply_orientation(orientation);
    let (width, height) = if turns_sideways(orientation) {
        (height, width)
    } else {
        (width, height)
    };

    let thumbnail =
        encode_thumbnail(&small).map_err(|e| format!("the thumbnail could not be made: {e}"))?;
    Ok(Inspected {
        width,
        height,
        thumbnail,
    })
}

/// The decoder for a declared content type, or why there is none.
fn format_of(declared: &str) -> Result<ImageFormat, String> {
    match declared {
        "image/png" => Ok(ImageFormat::Png),
        "image/jpeg" => Ok(ImageFormat::Jpeg),
        "image/gif" => Ok(ImageFormat::Gif),
        "image/webp" => Ok(ImageFormat::WebP),
        other => Err(format!(
            "{other:?} is not an image type windi reads (image/png, image/jpeg, image/gif, image/webp)"
        )),
    }
}

/// Whether an orientation swaps the width and the height.
fn turns_sideways(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// The image as a JPEG, its transparency composited onto white (JPEG has no alpha).
fn encode_thumbnail(image: &DynamicImage) -> Result<Vec<u8>, ImageError> {
    let rgba = image.to_rgba8();
    let rgb = RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        image::Rgb([onto_white(r, a), onto_white(g, a), onto_white(b, a)])
    });
    let mut out = Vec::new();
    rgb.write_with_encoder(JpegEncoder::new_with_quality(&mut out, THUMBNAIL_QUALITY))?;
    Ok(out)
}

/// One channel of a pixel with alpha `alpha`, blended onto white.
fn onto_white(channel: u8, alpha: u8) -> u8 {
    let (c, a) = (u32::from(channel), u32::from(alpha));
    let blended = (c * a + 255 * (255 - a) + 127) / 255;
    // At most (255·a + 255·(255 − a) + 127) / 255 = 255, so it always fits.
    u8::try_from(blended).unwrap_or(u8::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, Instant};

    use image::codecs::gif::GifEncoder;
    use image::codecs::png::PngEncoder;
    use image::codecs::webp::WebPEncoder;
    use image::{ImageEncoder, Rgb, Rgba, RgbaImage};

    use super::*;

    /// A gradient, so the encoders have something to encode.
    fn rgb(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        })
    }

    fn png(image: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        image.write_with_encoder(PngEncoder::new(&mut out)).unwrap();
        out
    }

    fn jpeg(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image
            .write_with_encoder(JpegEncoder::new_with_quality(&mut out, 90))
            .unwrap();
        out
    }

    /// Decodes a thumbnail, checking that it is a JPEG.
    fn thumbnail_of(inspected: &Inspected) -> DynamicImage {
        image::load_from_memory_with_format(&inspected.thumbnail, ImageFormat::Jpeg).unwrap()
    }

    /// CRC-32 (IEEE, as PNG's chunks use), bit by bit: enough for one IHDR.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = u32::MAX;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
        !crc
    }

    /// A real 1×1 PNG whose header is rewritten to claim another size, bit depth and colour
    /// type (its IHDR's CRC recomputed, so the decoder believes it): a decompression bomb's
    /// header without the work of compressing gigabytes.
    fn png_claiming(width: u32, height: u32, bit_depth: u8, colour_type: u8) -> Vec<u8> {
        let mut bytes = png(&DynamicImage::ImageRgba8(RgbaImage::new(1, 1)));
        // 8 bytes of signature, then IHDR: length (4), "IHDR" (4), 13 bytes of data, CRC (4).
        assert_eq!(&bytes[12..16], b"IHDR");
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        bytes[24] = bit_depth;
        bytes[25] = colour_type;
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn crc32_matches_the_known_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        // And the encoder's own IHDR, unpatched.
        let bytes = png(&DynamicImage::ImageRgb8(rgb(3, 2)));
        assert_eq!(crc32(&bytes[12..29]).to_be_bytes(), bytes[29..33]);
    }

    #[test]
    fn a_large_png_is_measured_and_shrunk_to_fit_keeping_its_aspect() {
        let bytes = png(&DynamicImage::ImageRgb8(rgb(1000, 500)));
        let inspected = inspect(&bytes, "image/png").unwrap();
        assert_eq!((inspected.width, inspected.height), (1000, 500));
        let thumbnail = thumbnail_of(&inspected);
        assert_eq!((thumbnail.width(), thumbnail.height()), (320, 160));
        assert_eq!(THUMBNAIL_TYPE, "image/jpeg");
    }

    #[test]
    fn a_small_jpeg_keeps_its_size_in_the_thumbnail() {
        let inspected = inspect(&jpeg(&rgb(40, 30)), "image/jpeg").unwrap();
        assert_eq!((inspected.width, inspected.height), (40, 30));
        let thumbnail = thumbnail_of(&inspected);
        assert_eq!((thumbnail.width(), thumbnail.height()), (40, 30));
    }

    #[test]
    fn a_tall_image_fits_the_square_by_its_height() {
        let bytes = png(&DynamicImage::ImageRgb8(rgb(100, 640)));
        let inspected = inspect(&bytes, "image/png").unwrap();
        assert_eq!((inspected.width, inspected.height), (100, 640));
        let thumbnail = thumbnail_of(&inspected);
        assert_eq!((thumbnail.width(), thumbnail.height()), (50, 320));
    }

    #[test]
    fn transparency_is_composited_onto_white() {
        // Left half fully transparent black, right half opaque blue.
        let image = RgbaImage::from_fn(64, 32, |x, _| {
            if x < 32 {
                Rgba([0, 0, 0, 0])
            } else {
                Rgba([0, 0, 255, 255])
            }
        });
        let inspected = inspect(&png(&DynamicImage::ImageRgba8(image)), "image/png").unwrap();
        let thumbnail = thumbnail_of(&inspected).to_rgb8();
        let Rgb([r, g, b]) = *thumbnail.get_pixel(8, 16);
        assert!(
            r > 240 && g > 240 && b > 240,
            "transparent became {r},{g},{b}"
        );
        let Rgb([r, g, b]) = *thumbnail.get_pixel(56, 16);
        assert!(
            r < 30 && g < 30 && b > 220,
            "opaque blue became {r},{g},{b}"
        );
    }

    #[test]
    fn half_transparency_is_blended_halfway_to_white() {
        assert_eq!(onto_white(0, 0), 255);
        assert_eq!(onto_white(0, 255), 0);
        assert_eq!(onto_white(200, 255), 200);
        assert_eq!(onto_white(0, 128), 127);
        assert_eq!(onto_white(255, 77), 255);
    }

    #[test]
    fn gif_and_webp_are_measured() {
        let image = RgbaImage::from_fn(24, 16, |x, y| Rgba([x as u8 * 10, y as u8 * 15, 0, 255]));

        let mut gif = Vec::new();
        GifEncoder::new(&mut gif)
            .encode_frame(image::Frame::new(image.clone()))
            .unwrap();
        let inspected = inspect(&gif, "image/gif").unwrap();
        assert_eq!((inspected.width, inspected.height), (24, 16));
        let thumbnail = thumbnail_of(&inspected);
        assert_eq!((thumbnail.width(), thumbnail.height()), (24, 16));

        let mut webp = Vec::new();
        WebPEncoder::new_lossless(&mut webp)
            .write_image(image.as_raw(), 24, 16, image::ExtendedColorType::Rgba8)
            .unwrap();
        let inspected = inspect(&webp, "image/webp").unwrap();
        assert_eq!((inspected.width, inspected.height), (24, 16));
        let thumbnail = thumbnail_of(&inspected);
        assert_eq!((thumbnail.width(), thumbnail.height()), (24, 16));
    }

    #[test]
    fn an_animated_gif_is_measured_by_its_first_frame() {
        let mut gif = Vec::new();
        {
            let mut encoder = GifEncoder::new(&mut gif);
            for shade in [0u8, 128, 255] {
                let frame = RgbaImage::from_pixel(500, 400, Rgba([shade, shade, shade, 255]));
                encoder.encode_frame(image::Frame::new(frame)).unwrap();
            }
        }
        let inspected = inspect(&gif, "image/gif").unwrap();
        assert_eq!((inspected.width, inspected.height), (500, 400));
        let thumbnail = thumbnail_of(&inspected).to_rgb8();
        assert_eq!((thumbnail.width(), thumbnail.height()), (320, 256));
        assert!(
            thumbnail.get_pixel(10, 10).0[0] < 20,
            "the first frame is black"
        );
    }

    #[test]
    fn exif_orientation_is_applied_to_the_size_and_the_thumbnail() {
        // A minimal big-endian TIFF block with one entry: Orientation (0x0112) = 6, "rotate 90°".
        let exif = [
            b'M', b'M', 0, 42, 0, 0, 0, 8, // header, first IFD at offset 8
            0, 1, // one entry
            0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, // tag, SHORT, count 1, value 6
            0, 0, 0, 0, // no next IFD
        ];
        let mut bytes = Vec::new();
        let mut encoder = JpegEncoder::new_with_quality(&mut bytes, 90);
        encoder.set_exif_metadata(exif.to_vec()).unwrap();
        let wide = rgb(40, 20);
        encoder
            .write_image(wide.as_raw(), 40, 20, image::ExtendedColorType::Rgb8)
            .unwrap();

        let inspected = inspect(&bytes, "image/jpeg").unwrap();
        assert_eq!((inspected.width, inspected.height), (20, 40));
        let thumbnail = thumbnail_of(&inspected);
        assert_eq!((thumbnail.width(), thumbnail.height()), (20, 40));
    }

    #[test]
    fn a_side_over_the_limit_is_refused_naming_the_limit() {
        let bytes = png(&DynamicImage::ImageLuma8(image::GrayImage::new(
            MAX_SIDE + 1,
            1,
        )));
        let err = inspect(&bytes, "image/png").unwrap_err();
        assert!(err.contains("12001×1"), "{err}");
        assert!(err.contains("the limit is 12000 on a side"), "{err}");
    }

    #[test]
    fn a_header_claiming_a_huge_image_is_refused_at_once() {
        let started = Instant::now();
        let err = inspect(&png_claiming(100_000, 100_000, 8, 6), "image/png").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            err,
            "the image is 100000×100000 pixels; the limit is 12000 on a side"
        );
    }

    #[test]
    fn a_decompression_bomb_within_the_sides_is_refused_by_its_memory_quickly() {
        // 11000×11000 of 16-bit RGBA: 968 MB decoded, from a file of 70 bytes.
        let bytes = png_claiming(11_000, 11_000, 16, 6);
        const { assert!(11_000u64 * 11_000 * 8 > MAX_DECODE_BYTES) };
        let started = Instant::now();
        let err = inspect(&bytes, "image/png").unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
        assert!(err.contains("11000×11000"), "{err}");
        assert!(err.contains("the limit is 256 MiB"), "{err}");
    }

    #[test]
    fn bytes_of_another_type_are_refused() {
        let err = inspect(&jpeg(&rgb(40, 30)), "image/png").unwrap_err();
        assert!(
            err.starts_with("the bytes are not a readable image/png: "),
            "{err}"
        );

        let png_bytes = png(&DynamicImage::ImageRgb8(rgb(40, 30)));
        let err = inspect(&png_bytes, "image/jpeg").unwrap_err();
        assert!(
            err.starts_with("the bytes are not a readable image/jpeg: "),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_png_is_refused() {
        let bytes = png(&DynamicImage::ImageRgb8(rgb(200, 100)));
        let err = inspect(&bytes[..bytes.len() / 2], "image/png").unwrap_err();
        assert!(
            err.starts_with("the bytes are not a readable image/png: "),
            "{err}"
        );
    }

    #[test]
    fn random_and_empty_bytes_are_refused_by_every_decoder() {
        // A fixed xorshift stream: "random", and the same on every run.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect();
        for declared in ["image/png", "image/jpeg", "image/gif", "image/webp"] {
            assert!(inspect(&noise, declared).is_err(), "{declared} read noise");
            assert!(inspect(&[], declared).is_err(), "{declared} read nothing");
        }
    }

    #[test]
    fn a_type_outside_the_four_is_refused() {
        let bytes = png(&DynamicImage::ImageRgb8(rgb(4, 4)));
        for declared in [
            "image/svg+xml",
            "image/bmp",
            "image/tiff",
            "application/pdf",
            "",
        ] {
            let err = inspect(&bytes, declared).unwrap_err();
            assert!(err.contains("is not an image type windi reads"), "{err}");
        }
    }
}
