//! Caller authorization: which merchants a caller may act for. The grant is
//! checked before the merchant's existence, so a caller learns nothing about
//! MSNs it may not use. Only `mode = "none"` exists so far: every caller is
//! granted every merchant.

use std::collections::HashSet;
use std::future::{ready, Ready};

use actix_web::{dev::Payload, FromRequest, HttpRequest};

use crate::error::{ApiError, Kind};

/// The merchants a caller may act for.
#[derive(Debug, Clone)]
pub enum Grant {
    All,
    Msns(HashSet<String>),
}

impl Grant {
    /// Whether the caller may act for `msn` (as written in the request).
    pub fn allows(&self, msn: &str) -> bool {
        match self {
            Self::All => true,
            Self::Msns(set) => set.contains(msn),
        }
    }

    /// 403 unless granted.
    pub fn check(&self, msn: &str) -> Result<(), ApiError> {
        if self.allows(msn) {
            Ok(())
        } else {
            Err(ApiError::new(
                Kind::Forbidden,
                "The caller is not granted this merchant.",
            ))
        }
    }
}

impl FromRequest for Grant {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(_req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(Ok(Grant::All))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_limit_merchants() {
        let g = Grant::Msns(["123456".to_owned()].into());
        assert!(g.allows("123456"));
        assert!(g.check("654321").is_err_and(|e| e.kind == Kind::Forbidden));
        assert!(Grant::All.allows("999999"));
    }
}
