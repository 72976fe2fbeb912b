//! Integer fields of request bodies and frames that also take a JSON number written with a
//! zero fraction (`830.0`). JSON Schema's `integer` is any number without a fractional part,
//! and clients that keep numbers as doubles send it so; the API's schema says `integer`, so
//! every integer a client sends is read this one way. Anything else (`830.5`, out of range,
//! a string) is refused as serde refuses a wrong type, and the body's 422 names the field.
//!
//! Use with `#[serde(deserialize_with = "whole::one")]` (and `default` for the `Option`,
//! `Vec` and map forms, so a missing field stays allowed where it was).

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};

/// An `i64` read from any whole JSON number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole(pub i64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error as _, Unexpected};
        match serde_json::Number::deserialize(d)? {
            n if n.is_i64() => Ok(Whole(n.as_i64().unwrap_or_default())),
            n => match n.as_f64() {
                // `i64::MAX as f64` rounds up to 2^63, which is out of range: strictly below.
                Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
                    Ok(Whole(f as i64))
                }
                Some(f) => Err(D::Error::invalid_value(Unexpected::Float(f), &"an integer")),
                None => Err(D::Error::custom("expected an integer")),
            },
        }
    }
}

pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Whole::deserialize(d).map(|w| w.0)
}

pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<Whole>::deserialize(d).map(|o| o.map(|w| w.0))
}

pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    Vec::<Whole>::deserialize(d).map(|v| v.into_iter().map(|w| w.0).collect())
}

pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HashMap<String, i64>>, D::Error> {
    Option::<HashMap<String, Whole>>::deserialize(d)
        .map(|o| o.map(|m| m.into_iter().map(|(k, w)| (k, w.0)).collect()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(deserialize_with = "one")]
        id: i64,
        #[serde(default, deserialize_with = "option")]
        to: Option<i64>,
        #[serde(default, deserialize_with = "list")]
        ids: Vec<i64>,
        #[serde(default, deserialize_with = "map")]
        revs: Option<HashMap<String, i64>>,
    }

    fn read(json: &str) -> Result<Body, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn a_whole_number_with_a_zero_fraction_is_an_integer_and_nothing_else_is() {
        let body =
            read(r#"{"id": 830.0, "to": 2.0, "ids": [1, 2.0, -3e0], "revs": {"7": 4.0}}"#).unwrap();
        assert_eq!(
            (body.id, body.to, body.ids, body.revs),
            (
                830,
                Some(2),
                vec![1, 2, -3],
                Some(HashMap::from([("7".into(), 4)]))
            )
        );
        let body = read(r#"{"id": 9223372036854775807, "to": null}"#).unwrap();
        assert_eq!(
            (body.id, body.to, body.ids, body.revs),
            (i64::MAX, None, vec![], None)
        );

        for (json, wrong) in [
            (r#"{"id": 830.5}"#, "830.5"),
            (r#"{"id": 9.3e18}"#, "9.3e+18"),
            (r#"{"id": 9223372036854775808}"#, "9.223372036854776e+18"),
            (r#"{"id": 1, "to": 0.5}"#, "0.5"),
            (r#"{"id": 1, "ids": [1, 1.5]}"#, "1.5"),
            (r#"{"id": 1, "revs": {"7": 1.5}}"#, "1.5"),
        ] {
            let err = read(json).expect_err(json);
            assert!(
                err.contains(wrong) && err.contains("integer"),
                "{json}: {err}"
            );
        }
        let err = read(r#"{"id": "7"}"#).expect_err("a string");
        assert!(
            err.contains("invalid type"),
            "a string is not a number: {err}"
        );
    }
}
