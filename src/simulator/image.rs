//! Just enough of PNG and JPEG to apply the upstream's image rules: the format
//! (from the magic bytes, never from a declared type) and the height.

use serde::Serialize;

/// The image formats the upstream accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
}

/// What the header of an accepted image says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub height: u32,
}

const PNG_MAGIC: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// Reads the format and the height from the first bytes of an image.
pub fn sniff(bytes: &[u8]) -> Result<ImageInfo, &'static str> {
    if bytes.starts_with(PNG_MAGIC) {
        png_height(bytes).map(|height| ImageInfo {
            format: ImageFormat::Png,
            height,
        })
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        jpeg_height(bytes).map(|height| ImageInfo {
            format: ImageFormat::Jpeg,
            height,
        })
    } else {
        Err("must be a PNG or JPEG image")
    }
}

fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn be_u16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}

/// The first chunk of a PNG is IHDR: length, "IHDR", width, height.
fn png_height(bytes: &[u8]) -> Result<u32, &'static str> {
    const BAD: &str = "is a PNG without a readable IHDR chunk";
    let chunk = bytes.get(8..).ok_or(BAD)?;
    if chunk.get(4..8) != Some(b"IHDR".as_slice()) {
        return Err(BAD);
    }
    be_u32(chunk.get(12..).ok_or(BAD)?).ok_or(BAD)
}

/// Walks the JPEG marker segments up to the first start-of-frame (SOFn), which
/// carries the height.
fn jpeg_height(bytes: &[u8]) -> Result<u32, &'static str> {
    const BAD: &str = "is a JPEG without a readable start-of-frame segment";
    let mut i = 2;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        if *bytes.get(i).ok_or(BAD)? != 0xFF {
            return Err(BAD);
        }
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let marker = *bytes.get(i).ok_or(BAD)?;
        i += 1;
        match marker {
            // Stand-alone markers carry no length.
            0x01 | 0xD0..=0xD7 => continue,
            0xD8..=0xDA => return Err(BAD),
            _ => {}
        }
        let len = usize::from(be_u16(bytes.get(i..).ok_or(BAD)?).ok_or(BAD)?);
        if len < 2 {
            return Err(BAD);
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            // length(2) precision(1) height(2) width(2)
            let height = be_u16(bytes.get(i + 3..).ok_or(BAD)?).ok_or(BAD)?;
            if height == 0 {
                return Err("is a JPEG whose height is not given in its start-of-frame segment");
            }
            return Ok(u32::from(height));
        }
        i += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_png_height_from_ihdr() {
        let mut png = PNG_MAGIC.to_vec();
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&300u32.to_be_bytes());
        png.extend_from_slice(&200u32.to_be_bytes());
        assert_eq!(
            sniff(&png),
            Ok(ImageInfo {
                format: ImageFormat::Png,
                height: 200
            })
        );
    }

    #[test]
    fn skips_jpeg_segments_before_the_frame() {
        let jpeg = [
            0xFF, 0xD8, // SOI
            0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00, // APP0 with 2 bytes of data
            0xFF, 0xFF, 0xC2, 0x00, 0x0B, 0x08, 0x01, 0x2C, 0x00, 0x10, // SOF2, height 300
        ];
        assert_eq!(
            sniff(&jpeg),
            Ok(ImageInfo {
                format: ImageFormat::Jpeg,
                height: 300
            })
        );
    }

    #[test]
    fn rejects_other_formats_and_truncated_headers() {
        assert!(sniff(b"GIF89a\x01\x00\x01\x00").is_err());
        assert!(sniff(PNG_MAGIC).is_err());
        assert!(sniff(&[0xFF, 0xD8, 0xFF]).is_err());
    }
}
