//! Pure functions from façade requests to Vipps requests. No I/O here:
//! money arithmetic, receipt building, image checks.

pub mod image;
pub mod money;
pub mod receipt;
