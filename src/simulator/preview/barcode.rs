//! The receipt's `bottomLine.barcode`, drawn as an inline SVG in one of the
//! three formats Order Management 2.1 enumerates (`EAN-13`, `CODE 39`,
//! `CODE 128`), with `barcoders`.

use barcoders::generators::svg::SVG;
use barcoders::sym::code128::Code128;
use barcoders::sym::code39::Code39;
use barcoders::sym::ean13::EAN13;

use crate::simulator::model::BarcodeFormat;

/// Height of the bars in the SVG's own units (one unit per module wide).
const BAR_HEIGHT: u32 = 60;

/// The name Vipps gives the format.
pub fn format_name(format: BarcodeFormat) -> &'static str {
    match format {
        BarcodeFormat::Ean13 => "EAN-13",
        BarcodeFormat::Code39 => "CODE 39",
        BarcodeFormat::Code128 => "CODE 128",
    }
}

/// The SVG of `data` in `format`, or why it cannot be drawn. Vipps takes
/// any string as barcode data, so data the format cannot carry is shown
/// as text with the reason, never as a wrong barcode.
pub fn svg(format: BarcodeFormat, data: &str) -> Result<String, String> {
    let modules = match format {
        BarcodeFormat::Ean13 => {
            // barcoders reads 12 digits (it adds the check digit) or 13
            // (it checks it); anything else is refused here first.
            if !(data.len() == 12 || data.len() == 13) || !data.bytes().all(|b| b.is_ascii_digit())
            {
                return Err("EAN-13 data is 12 or 13 digits".to_owned());
            }
            EAN13::new(data)
                .map_err(|e| format!("not an EAN-13 number: {e}"))?
                .encode()
        }
        BarcodeFormat::Code39 => Code39::new(data)
            .map_err(|_| "CODE 39 carries A-Z, 0-9, space and - . $ / + % only".to_owned())?
            .encode(),
        BarcodeFormat::Code128 => {
            // barcoders starts Code 128 data with its character-set marker;
            // set B carries printable ASCII, which keeps a marker-like
            // character in the data from switching sets.
            if data.is_empty() || !data.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err("CODE 128 data is printable ASCII here".to_owned());
            }
            Code128::new(format!("\u{0181}{data}"))
                .map_err(|e| format!("not CODE 128 data: {e}"))?
                .encode()
        }
    };
    SVG::new(BAR_HEIGHT)
        .generate(&modules)
        .map_err(|e| format!("cannot draw the barcode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bars(svg: &str) -> usize {
        svg.matches("fill=\"#000000\"").count()
    }

    #[test]
    fn ean13_draws_and_checks_the_check_digit() {
        let drawn = svg(BarcodeFormat::Ean13, "7040512345674");
        let svg_text = drawn.as_deref().unwrap_or("");
        assert!(svg_text.starts_with("<svg"), "{drawn:?}");
        // 95 modules: guards, 12 digits of 7 modules, middle guard.
        assert!(svg_text.contains("viewBox=\"0 0 95 60\""), "{svg_text}");
        assert!(bars(svg_text) > 20);
        assert!(
            svg(BarcodeFormat::Ean13, "7040512345678").is_err(),
            "wrong check digit"
        );
        assert!(
            svg(BarcodeFormat::Ean13, "704051234567").is_ok(),
            "12 digits: check digit added"
        );
        assert!(svg(BarcodeFormat::Ean13, "123456").is_err());
        assert!(svg(BarcodeFormat::Ean13, "70405123456x8").is_err());
    }

    #[test]
    fn code39_takes_its_character_set_only() {
        let drawn = svg(BarcodeFormat::Code39, "SC0527013501 ");
        assert!(drawn.as_deref().is_ok_and(|s| bars(s) > 20), "{drawn:?}");
        assert!(svg(BarcodeFormat::Code39, "lower").is_err());
    }

    #[test]
    fn code128_takes_printable_ascii_and_never_a_set_marker() {
        let drawn = svg(BarcodeFormat::Code128, "Order #0527-01");
        assert!(drawn.as_deref().is_ok_and(|s| bars(s) > 20), "{drawn:?}");
        assert!(svg(BarcodeFormat::Code128, "\u{0106}12").is_err());
        assert!(svg(BarcodeFormat::Code128, "").is_err());
        assert!(svg(BarcodeFormat::Code128, "smørbrød").is_err());
    }
}
