//! Byte strings that serialize as UTF-8 text when they are text, and as base64 otherwise.

use base64::Engine as _;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Raw bytes (a body, a Redis bulk string, a MySQL cell). In JSON: a plain string when the
/// bytes are valid UTF-8, otherwise `{"base64": "…"}`.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Payload(pub Vec<u8>);

impl Payload {
    /// The bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes as text, when they are valid UTF-8.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.as_str() {
            Some(s) => write!(f, "{s:?}"),
            None => write!(f, "b{:?}", String::from_utf8_lossy(&self.0)),
        }
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl From<&[u8]> for Payload {
    fn from(v: &[u8]) -> Self {
        Self(v.to_vec())
    }
}

impl From<&str> for Payload {
    fn from(v: &str) -> Self {
        Self(v.as_bytes().to_vec())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.as_str() {
            Some(text) => s.serialize_str(text),
            None => {
                use serde::ser::SerializeMap as _;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(&self.0),
                )?;
                m.end()
            }
        }
    }
}

/// Text (a JSON string) or `{"base64": "…"}`, read directly by a visitor: no buffering of
/// the value as an untagged enum would do.
impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PayloadVisitor)
    }
}

/// Also used for MySQL values (a payload in one of its forms).
pub(crate) struct PayloadVisitor;

impl<'de> Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string or a map {\"base64\": \"…\"}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Payload, E> {
        Ok(Payload(v.as_bytes().to_vec()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Payload, E> {
        Ok(Payload(v.into_bytes()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Payload, A::Error> {
        let mut bytes = None;
        while let Some(key) = map.next_key::<PayloadKey>()? {
            match key {
                PayloadKey::Base64 => {
                    if bytes.is_some() {
                        return Err(de::Error::duplicate_field("base64"));
                    }
                    bytes = Some(map.next_value_seed(Base64Seed)?);
                }
                PayloadKey::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        bytes
            .map(Payload)
            .ok_or_else(|| de::Error::missing_field("base64"))
    }
}

/// A key of the binary form: `base64`, or anything else (ignored).
enum PayloadKey {
    Base64,
    Other,
}

impl<'de> Deserialize<'de> for PayloadKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = PayloadKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PayloadKey, E> {
                Ok(if v == "base64" {
                    PayloadKey::Base64
                } else {
                    PayloadKey::Other
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// Decodes a base64 string value straight from the input.
struct Base64Seed;

impl<'de> de::DeserializeSeed<'de> for Base64Seed {
    type Value = Vec<u8>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Base64Seed {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a base64 string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_round_trip() {
        for bytes in [b"hello".to_vec(), vec![0xff, 0x00, 0x10], Vec::new()] {
            let p = Payload(bytes);
            let json = serde_json::to_string(&p).unwrap();
            let back: Payload = serde_json::from_str(&json).unwrap();
            assert_eq!(back, p, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&Payload::from("hi")).unwrap(),
            "\"hi\""
        );
        assert_eq!(
            serde_json::to_string(&Payload(vec![0xff])).unwrap(),
            r#"{"base64":"/w=="}"#
        );
    }
}
