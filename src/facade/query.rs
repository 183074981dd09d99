//! The façade's query strings. A parameter given twice, or one the route
//! does not take, is a `400` naming that parameter, not the query as a
//! whole: a caller sees at once which one to fix.

use actix_web::web;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, Kind};

/// What a route does with a parameter it does not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Others {
    /// A `400` naming it (the route's parameters are all it reads).
    Refused,
    /// Left alone, as HTTP caches and tracing tools add their own.
    Ignored,
}

/// Reads `query` into `T`, whose fields are the parameters `known`, each
/// at most once; `others` says what becomes of any other parameter.
pub fn parse<T: DeserializeOwned>(
    query: &str,
    known: &[&str],
    others: Others,
) -> Result<T, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|e| ApiError::field(Kind::InvalidRequest, "query", e.to_string()))?;
    for (i, (name, _)) in pairs.iter().enumerate() {
        let name = name.as_str();
        if known.contains(&name) {
            if pairs[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(ApiError::field(
                    Kind::InvalidRequest,
                    name,
                    "is given more than once; give it once",
                ));
            }
        } else if others == Others::Refused {
            return Err(ApiError::field(
                Kind::InvalidRequest,
                name,
                format!(
                    "is not a parameter of this resource, which takes {}",
                    known.join(", ")
                ),
            ));
        }
    }
    web::Query::<T>::from_query(query)
        .map(web::Query::into_inner)
        .map_err(|e| ApiError::field(Kind::InvalidRequest, "query", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Q {
        a: Option<String>,
        b: Option<String>,
    }

    fn named(r: Result<Q, ApiError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.kind, Kind::InvalidRequest);
        e.invalid_params[0].name.clone()
    }

    #[test]
    fn known_parameters_are_read() {
        let q: Q = parse("b=2&a=1", &["a", "b"], Others::Refused).unwrap();
        assert_eq!(
            q,
            Q {
                a: Some("1".into()),
                b: Some("2".into())
            }
        );
    }

    #[test]
    fn a_repeated_or_unknown_parameter_is_named() {
        assert_eq!(
            named(parse("a=1&b=2&a=3", &["a", "b"], Others::Ignored)),
            "a"
        );
        assert_eq!(named(parse("a=1&zz=2", &["a", "b"], Others::Refused)), "zz");
        assert_eq!(
            named(parse("zz=1&a=1&a=2", &["a", "b"], Others::Refused)),
            "zz"
        );
    }

    #[test]
    fn other_parameters_may_be_ignored_even_repeated() {
        let q: Q = parse("x=1&x=2&a=1", &["a", "b"], Others::Ignored).unwrap();
        assert_eq!(q.a.as_deref(), Some("1"));
    }
}
