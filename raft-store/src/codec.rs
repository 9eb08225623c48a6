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
