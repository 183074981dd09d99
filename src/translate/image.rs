//! Image checks done before any upstream call: the real format from the
//! bytes (PNG or JPEG, whatever the caller's header says), the size limit,
//! the minimum height, and a content-derived id.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::domain::ImageId;

/// Most bytes of image data the upstream accepts.
pub const MAX_IMAGE_BYTES: usize = 2_000_000;
/// Smallest height the upstream accepts, in pixels.
pub const MIN_HEIGHT: u32 = 167;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
}

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    NotBase64,
    TooLarge(usize),
    UnsupportedFormat,
    Unreadable(ImageFormat),
    TooShort(u32),
}

impl ImageError {
    pub fn reason(&self) -> String {
        match self {
            Self::NotBase64 => "must be standard base64".into(),
            Self::TooLarge(n) => {
                format!("is {n} bytes; images may be at most {MAX_IMAGE_BYTES} bytes")
            }
            Self::UnsupportedFormat => "must be a PNG or JPEG image".into(),
            Self::Unreadable(f) => format!("is not a readable {f:?} image (no dimensions found)"),
            Self::TooShort(h) => {
                format!("is {h} px high; images must be at least {MIN_HEIGHT} px high")
            }
        }
    }
}

/// A checked image, ready to upload.
#[derive(Debug, Clone)]
pub struct CheckedImage {
    pub format: ImageFormat,
    pub height: u32,
    pub bytes: Vec<u8>,
}

impl CheckedImage {
    /// The id derived from the content: the same bytes always get the same id.
    pub fn content_id(&self) -> ImageId {
        let digest = Sha256::digest(&self.bytes);
        let mut id = String::with_capacity(7 + 64);
        id.push_str("sha256-");
        for b in digest {
            id.push_str(&format!("{b:02x}"));
        }
        // 71 characters of [0-9a-z-]: always a valid image id.
        ImageId::parse(&id).unwrap_or_else(|_| unreachable!("hex digest is a valid id"))
    }

    /// The upstream's `src`: base64 of the bytes.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.bytes)
    }
}

/// Decodes base64 image data and checks it.
pub fn check_base64(data: &str) -> Result<CheckedImage, ImageError> {
    // Reject by length before decoding, so a huge string is not decoded.
    if data.len() / 4 * 3 > MAX_IMAGE_BYTES + 3 {
        return Err(ImageError::TooLarge(data.len() / 4 * 3));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| ImageError::NotBase64)?;
    check_bytes(bytes)
}

/// Checks raw image bytes.
pub fn check_bytes(bytes: Vec<u8>) -> Result<CheckedImage, ImageError> {
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(ImageError::TooLarge(bytes.len()));
    }
    let (format, height) = if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        (
            ImageFormat::Png,
            png_height(&bytes).ok_or(ImageError::Unreadable(ImageFormat::Png))?,
        )
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        (
            ImageFormat::Jpeg,
            jpeg_height(&bytes).ok_or(ImageError::Unreadable(ImageFormat::Jpeg))?,
        )
    } else {
        return Err(ImageError::UnsupportedFormat);
    };
    if height < MIN_HEIGHT {
        return Err(ImageError::TooShort(height));
    }
    Ok(CheckedImage {
        format,
        height,
        bytes,
    })
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Height from the IHDR chunk, which a PNG must start with.
fn png_height(b: &[u8]) -> Option<u32> {
    if b.get(12..16)? != b"IHDR" {
        return None;
    }
    be_u32(b.get(20..24)?).filter(|h| *h > 0)
}

/// Height from the first start-of-frame segment (SOF0–SOF15 but DHT, JPG, DAC).
fn jpeg_height(b: &[u8]) -> Option<u32> {
    let mut i = 2;
    loop {
        // Skip fill bytes before a marker.
        while *b.get(i)? == 0xFF && *b.get(i + 1)? == 0xFF {
            i += 1;
        }
        if *b.get(i)? != 0xFF {
            return None;
        }
        let marker = *b.get(i + 1)?;
        match marker {
            // Markers without a length.
            0x01 | 0xD0..=0xD7 => {
                i += 2;
                continue;
            }
            0xD9 | 0xDA => return None,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*b.get(i + 2)?, *b.get(i + 3)?]));
        if len < 2 {
            return None;
        }
        if (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let h = u16::from_be_bytes([*b.get(i + 5)?, *b.get(i + 6)?]);
            return Some(u32::from(h)).filter(|h| *h > 0);
        }
        i += 2 + len;
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A PNG signature and IHDR chunk of the given size (enough for the checks).
    pub fn png(width: u32, height: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
        v.extend_from_slice(&13u32.to_be_bytes());
        v.extend_from_slice(b"IHDR");
        v.extend_from_slice(&width.to_be_bytes());
        v.extend_from_slice(&height.to_be_bytes());
        v.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
        v
    }

    /// A JPEG with an APP0 segment before its SOF0.
    pub fn jpeg(width: u16, height: u16) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x4A, 0x46];
        v.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08]);
        v.extend_from_slice(&height.to_be_bytes());
        v.extend_from_slice(&width.to_be_bytes());
        v.extend_from_slice(&[0x01, 0x01, 0x11, 0x00, 0xFF, 0xD9]);
        v
    }

    #[test]
    fn detects_format_from_bytes_and_checks_height() {
        assert_eq!(
            check_bytes(png(10, 167)).map(|i| (i.format, i.height)),
            Ok((ImageFormat::Png, 167))
        );
        assert_eq!(
            check_bytes(jpeg(10, 300)).map(|i| (i.format, i.height)),
            Ok((ImageFormat::Jpeg, 300))
        );
        assert_eq!(
            check_bytes(png(500, 166)).map(|i| i.height),
            Err(ImageError::TooShort(166))
        );
        assert_eq!(
            check_bytes(jpeg(500, 20)).map(|i| i.height),
            Err(ImageError::TooShort(20))
        );
        assert_eq!(
            check_bytes(b"GIF89a....".to_vec()).map(|i| i.height),
            Err(ImageError::UnsupportedFormat)
        );
        assert_eq!(
            check_bytes(vec![0xFF, 0xD8, 0xFF]).map(|i| i.height),
            Err(ImageError::Unreadable(ImageFormat::Jpeg))
        );
        let mut big = png(10, 200);
        big.resize(MAX_IMAGE_BYTES + 1, 0);
        assert_eq!(
            check_bytes(big).map(|i| i.height),
            Err(ImageError::TooLarge(MAX_IMAGE_BYTES + 1))
        );
    }

    #[test]
    fn content_id_is_stable_and_valid() {
        let a = check_bytes(png(1, 200)).map(|i| i.content_id());
        let b = check_bytes(png(1, 200)).map(|i| i.content_id());
        let c = check_bytes(png(2, 200)).map(|i| i.content_id());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a
            .map(|id| id.as_str().starts_with("sha256-") && id.as_str().len() == 71)
            .unwrap_or(false));
    }
}
