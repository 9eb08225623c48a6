//! The postcard codec every stored value goes through: RocksDB values, the Raft log's record
//! payloads, snapshot and backup frames. One place, so a decode failure always names what
//! it was decoding ([`StoreError::Codec`]).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;

/// Encodes a value with postcard.
pub(crate) fn encode<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|source| StoreError::Codec { what, source })
}

/// Encodes a value with postcard into `buf` (cleared first), reusing its allocation.
pub(crate) fn encode_reusing<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    buf.clear();
    encode_onto(what, value, buf)
}

/// Encodes a value with postcard after what `buf` already holds.
pub(crate) fn encode_onto<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
    buf: Vec<u8>,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, buf).map_err(|source| StoreError::Codec { what, source })
}

/// Decodes a postcard value.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Codec { what, source })
}

/// Decodes a postcard value that borrows from `bytes` (strings read in place); bytes after the
/// value are ignored, so a type made of a record's leading fields reads just those.
pub(crate) fn decode_borrowed<'a, T: serde::Deserialize<'a>>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<T, StoreError> {
    postcard::take_from_bytes(bytes)
        .map(|(value, _rest)| value)
        .map_err(|source| StoreError::Codec { what, source })
}
