//! Trace and span ids: fixed-size byte strings, shown as lower-case hex.

use std::fmt;
use std::str::FromStr;

use crate::SchemaError;

/// A 16-byte W3C trace id. All-zero is invalid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id. All-zero is invalid.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

macro_rules! id_type {
    ($ty:ident, $len:expr, $what:expr) => {
        impl $ty {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            /// The id from raw bytes; errors on a wrong length or an all-zero id.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, SchemaError> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| SchemaError::InvalidId {
                    what: $what,
                    reason: format!("expected {} bytes, got {}", $len, bytes.len()),
                })?;
                if arr == [0u8; $len] {
                    return Err(SchemaError::InvalidId { what: $what, reason: "all zero".into() });
                }
                Ok(Self(arr))
            }

            /// The id as lower-case hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl FromStr for $ty {
            type Err = SchemaError;

            /// Parses hex in any case.
            fn from_str(s: &str) -> Result<Self, SchemaError> {
                if s.len() != 2 * $len {
                    return Err(SchemaError::InvalidId {
                        what: $what,
                        reason: format!("expected {} hex digits, got {}", 2 * $len, s.len()),
                    });
                }
                let bytes = hex::decode(s)
                    .map_err(|e| SchemaError::InvalidId { what: $what, reason: format!("not hex: {e}") })?;
                Self::from_bytes(&bytes)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), self.to_hex())
            }
        }
    };
}

id_type!(TraceId, 16, "trace id");
id_type!(SpanId, 8, "span id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_in_any_case() {
        let lower: TraceId = "5b8efff798038103d269b633813fc60c".parse().unwrap();
        let upper: TraceId = "5B8EFFF798038103D269B633813FC60C".parse().unwrap();
        assert_eq!(lower, upper);
        assert_eq!(upper.to_string(), "5b8efff798038103d269b633813fc60c");
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in ["", "00000000000000000000000000000000", "5b8e", "zz8efff798038103d269b633813fc60c"] {
            assert!(bad.parse::<TraceId>().is_err(), "{bad:?} should be rejected");
        }
        assert!(SpanId::from_bytes(&[0; 8]).is_err());
        assert!(SpanId::from_bytes(&[1; 7]).is_err());
        assert!(SpanId::from_bytes(&[1; 8]).is_ok());
    }
}
